"""CIFAR-style ResNet, a stronger teacher option.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", 2016.
"""

from __future__ import annotations

import keras
from keras import layers

from kdkeras.models.layers import KERNEL_INIT, batch_norm, conv_bn_relu, image_input, logits, scaled


def _basic_block(x, filters: int, strides: int, name: str, synchronized_bn: bool, output_name: str):
    """Two 3×3 convs with a shortcut; a 1×1 projection where the shape changes (option B of the paper)."""
    shortcut = x
    y = conv_bn_relu(x, filters, 3, f"{name}_a", strides=strides, synchronized_bn=synchronized_bn)
    y = layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer=KERNEL_INIT, name=f"{name}_b_conv"
    )(y)
    y = batch_norm(f"{name}_b_bn", synchronized_bn)(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, kernel_initializer=KERNEL_INIT, name=f"{name}_proj_conv"
        )(x)
        shortcut = batch_norm(f"{name}_proj_bn", synchronized_bn)(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=output_name)(y)


def resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    depth: int = 20,
    width: float = 1.0,
    synchronized_bn: bool = False,
    name: str | None = None,
) -> keras.Model:
    """CIFAR-style ResNet of depth 6n + 2 (20, 32, 44, 56, 110 …).

    A 3×3 stem, three stages of n basic blocks with 16, 32, 64 filters (× `width`), the second and third starting
    with stride 2, then global average pooling and a linear layer.

    Args:
        input_shape: `(height, width, channels)` of the raw images (pixel values in [0, 255]).
        num_classes: number of output logits.
        depth: total depth, 6n + 2.
        width: multiplier on every stage's filter count.
        synchronized_bn: synchronize batch statistics across replicas (see `kdkeras.distribute`).
        name: model name; default `resnet{depth}`.

    Returns:
        A functional `keras.Model` mapping images to logits; stage outputs are the layers `stage1` … `stage3`.

    Example:
        >>> model = resnet((28, 28, 1), 10, depth=20)
        >>> model.get_layer("stage3").output.shape
        (None, 7, 7, 64)
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, …), got {depth}")
    blocks = (depth - 2) // 6
    inputs, x = image_input(input_shape)
    x = conv_bn_relu(x, scaled(16, width), 3, "stem", synchronized_bn=synchronized_bn)
    for stage, channels in enumerate((16, 32, 64), start=1):
        for block in range(blocks):
            last = block == blocks - 1
            x = _basic_block(
                x,
                scaled(channels, width),
                strides=2 if stage > 1 and block == 0 else 1,
                name=f"stage{stage}_block{block + 1}",
                synchronized_bn=synchronized_bn,
                output_name=f"stage{stage}" if last else f"stage{stage}_block{block + 1}_out",
            )
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = logits(x, num_classes)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")
