"""Feature adapters: map a student feature map to the teacher's channel count for the hint loss."""

from __future__ import annotations

import keras
from keras import layers

from kdkeras.models.layers import batch_norm


@keras.saving.register_keras_serializable(package="kdkeras")
class FeatureAdapter(layers.Layer):
    """1×1 convolution + batch normalization from the student's channels to the teacher's.

    FitNets' "regressor" (Romero et al., 2015): a small trainable layer owned by the distiller, so that a thin
    student is not forced to reproduce the teacher's features channel for channel. Spatial sizes are matched by the
    loss (`kdkeras.losses.match_spatial`), not here.

    Args:
        channels: output channels (the teacher's).
        synchronized_bn: synchronize the batch statistics across replicas.

    Example:
        >>> adapter = FeatureAdapter(128)
        >>> adapter(keras.ops.ones((2, 4, 4, 32))).shape
        (2, 4, 4, 128)
    """

    def __init__(self, channels: int, synchronized_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = int(channels)
        self.synchronized_bn = bool(synchronized_bn)
        self.conv = layers.Conv2D(self.channels, 1, use_bias=False, name="conv")
        self.bn = batch_norm("bn", self.synchronized_bn)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build((*input_shape[:-1], self.channels))
        self.built = True

    def call(self, inputs, training=None):
        return self.bn(self.conv(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "synchronized_bn": self.synchronized_bn}
