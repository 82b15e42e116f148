"""Adapters between teacher and student: `FeatureAdapter` maps a student feature map to the teacher's channels (for
the hint loss); `ImageConversion` gives a teacher with its own input size and channel count the student's images."""

from __future__ import annotations

import keras
from keras import layers, ops

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


# ITU-R BT.601 luma, the weights of tf.image.rgb_to_grayscale.
_LUMA = (0.2989, 0.5870, 0.1140)


@keras.saving.register_keras_serializable(package="kdkeras")
class ImageConversion(layers.Layer):
    """Resizes `(batch, H, W, C)` images to `target_shape`'s height and width (bilinear) and converts channels:
    gray to RGB by repeating the channel, RGB to gray by BT.601 luma (`tf.image.rgb_to_grayscale`'s weights).

    It lets a teacher trained at another size (an ImageNet model at 224×224 RGB, a CIFAR model at 32×32) teach a
    student of 28×28 gray images: the distiller and the teacher cache put it in front of such a teacher. Pixel
    values pass through unchanged (kdkeras feeds [0, 255]; a teacher expecting another range says so itself).

    Args:
        target_shape: `(height, width, channels)` of the images produced.

    Example:
        >>> ImageConversion((32, 32, 3))(keras.ops.ones((2, 28, 28, 1))).shape
        (2, 32, 32, 3)
    """

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        if len(target_shape) != 3 or not all(int(d) >= 1 for d in target_shape):
            raise ValueError(f"target_shape must be (height, width, channels), got {tuple(target_shape)}")
        self.target_shape = tuple(int(d) for d in target_shape)

    def build(self, input_shape):
        source, target = int(input_shape[-1]), self.target_shape[-1]
        if source != target and (source, target) not in ((1, 3), (3, 1)):
            raise ValueError(f"cannot convert images of {source} channels to {target}: only gray <-> RGB is defined")
        self.built = True

    def call(self, images):
        height, width, channels = self.target_shape
        images = ops.cast(images, self.compute_dtype)
        if tuple(images.shape[1:3]) != (height, width):
            images = ops.image.resize(images, (height, width), interpolation="bilinear")
        source = images.shape[-1]
        if source == 1 and channels == 3:
            images = ops.repeat(images, 3, axis=-1)
        elif source == 3 and channels == 1:
            images = ops.sum(images * ops.convert_to_tensor(_LUMA, images.dtype), axis=-1, keepdims=True)
        return images

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.target_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


def on_images_of(model: keras.Model, input_shape, name: str | None = None) -> keras.Model:
    """`model` itself when it takes `input_shape` images, else a model that takes them and runs `model` on their
    `ImageConversion` to its own input shape (sharing its layers and weights)."""
    own = tuple(model.inputs[0].shape[1:])
    if own == tuple(input_shape):
        return model
    images = keras.Input(tuple(input_shape), name="images")
    return keras.Model(images, model(ImageConversion(own, name="to_teacher_input")(images)), name=name or model.name)
