"""The student: AlexNet with depthwise-separable convolutions and a global-average-pooling head."""

from __future__ import annotations

import keras
from keras import layers

from kdkeras.models.alexnet import ALEXNET_WIDTHS
from kdkeras.models.layers import (
    conv_bn_relu,
    image_input,
    logits,
    overlapping_max_pool,
    scaled,
    separable_bn_relu,
)


def ds_alexnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: float = 1.0,
    dropout: float = 0.2,
    synchronized_bn: bool = False,
    name: str = "ds_alexnet",
) -> keras.Model:
    """AlexNet modified with depthwise-separable convolutions: the lightweight student of TSKD.

    The same five-stage topology and pooling as `alexnet`; the first stage keeps a standard 5×5 conv (on 1–3 input
    channels a separable conv saves nothing), every later conv becomes depthwise 3×3 → BN → ReLU → pointwise 1×1 →
    BN → ReLU (Howard et al., "MobileNets", 2017), and AlexNet's large fully connected layers are replaced by global
    average pooling, dropout and one linear layer. At `width=1.0` it has about 20× fewer parameters and 10× fewer
    FLOPs than `alexnet` on 28×28 inputs.

    Args:
        input_shape: `(height, width, channels)` of the raw images (pixel values in [0, 255]).
        num_classes: number of output logits.
        width: width multiplier on every stage's filter count (MobileNet's α).
        dropout: dropout rate before the output layer.
        synchronized_bn: synchronize batch statistics across replicas (see `kdkeras.distribute`).
        name: model name.

    Returns:
        A functional `keras.Model` mapping images to logits; stage outputs are the layers `stage1` … `stage5`,
        with the same spatial sizes as `alexnet`'s.

    Example:
        >>> model = ds_alexnet((28, 28, 1), 10, width=0.5)
        >>> model.get_layer("stage5").output.shape
        (None, 4, 4, 64)
    """
    filters = [scaled(c, width) for c in ALEXNET_WIDTHS]
    first_stride = 2 if min(input_shape[:2]) >= 48 else 1
    bn = {"synchronized_bn": synchronized_bn}
    inputs, x = image_input(input_shape)
    x = conv_bn_relu(x, filters[0], 5, "conv1", strides=first_stride, **bn)
    x = overlapping_max_pool(x, "stage1")
    x = separable_bn_relu(x, filters[1], "conv2", **bn)
    x = overlapping_max_pool(x, "stage2")
    x = separable_bn_relu(x, filters[2], "conv3", output_name="stage3", **bn)
    x = separable_bn_relu(x, filters[3], "conv4", output_name="stage4", **bn)
    x = separable_bn_relu(x, filters[4], "conv5", **bn)
    x = overlapping_max_pool(x, "stage5")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = logits(x, num_classes)
    return keras.Model(inputs, outputs, name=name)
