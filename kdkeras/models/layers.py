"""Building blocks shared by the model builders.

Every block is a small function over Keras functional tensors that names its layers with a common prefix, so that
`model.summary()` reads like a table of stages and intermediate outputs can be tapped by name.
"""

from __future__ import annotations

import math

import keras
from keras import layers

# Keras' default momentum of 0.99 needs thousands of steps before the moving variance forgets its initial value
# of 1; activations of images in [0, 1] have variances near 1e-3, so short CPU runs (hundreds of steps) evaluate
# with badly wrong statistics (seen: 83 % training vs 10 % validation accuracy after 470 steps). 0.9 (PyTorch's
# default) converges within ~100 steps.
BN_MOMENTUM = 0.9

# He initialization (He et al., "Delving Deep into Rectifiers", 2015) for every layer followed by ReLU: pre-BN
# activations then start with variance near 1, the moving variance's initial value, so the inference-mode network
# is right from the first steps. With Keras' default Glorot-uniform init they start 3-10x smaller per layer and
# compound: on 1,300 images (11 steps per epoch) validation stayed at chance for 4 epochs while training accuracy
# rose (experiments/results/small_data.md).
KERNEL_INIT = "he_normal"


def depthwise_he_init(kernel_size: int) -> keras.initializers.Initializer:
    """He initialization for a depthwise kernel, whose fan-in is the kernel area alone.

    Keras derives the fan-in of a `(k, k, channels, 1)` depthwise kernel as k·k·channels, although each output
    sees only k·k inputs: its Glorot and He initializers start depthwise outputs `channels` times too small
    (measured: variance 0.004 instead of ~1 on a 128-channel layer), which BN's moving variance, starting at 1,
    takes hundreds of steps to follow. Truncated normal with the variance 2 / (k·k), as `he_normal` would give.
    """
    return keras.initializers.TruncatedNormal(stddev=math.sqrt(2.0 / kernel_size**2) / 0.87962566103423978)


def batch_norm(name: str, synchronized: bool = False) -> layers.BatchNormalization:
    """A `BatchNormalization` layer with momentum `BN_MOMENTUM`, optionally synchronized across replicas.

    Under a multi-replica `tf.distribute` strategy, plain batch normalization uses each replica's own batch
    statistics; `synchronized=True` all-reduces them so that N replicas normalize like one device would.
    """
    return layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=synchronized, name=name)


def conv_bn_relu(
    x,
    filters: int,
    kernel_size: int,
    name: str,
    strides: int = 1,
    synchronized_bn: bool = False,
    output_name: str | None = None,
):
    """Conv2D → BN → ReLU. `output_name` names the ReLU (e.g. a stage output); default `{name}_relu`."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, kernel_initializer=KERNEL_INIT,
        name=f"{name}_conv",
    )(x)  # fmt: skip
    x = batch_norm(f"{name}_bn", synchronized_bn)(x)
    return layers.ReLU(name=output_name or f"{name}_relu")(x)


def separable_bn_relu(
    x,
    filters: int,
    name: str,
    strides: int = 1,
    synchronized_bn: bool = False,
    output_name: str | None = None,
):
    """Depthwise-separable convolution with BN and ReLU after both halves (MobileNet, Howard et al. 2017).

    Depthwise 3×3 → BN → ReLU → pointwise 1×1 → BN → ReLU. Written out rather than as `SeparableConv2D` because
    the batch normalization sits between the two convolutions.
    """
    x = layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=depthwise_he_init(3),
        name=f"{name}_dw",
    )(x)
    x = batch_norm(f"{name}_dw_bn", synchronized_bn)(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=KERNEL_INIT, name=f"{name}_pw")(x)
    x = batch_norm(f"{name}_pw_bn", synchronized_bn)(x)
    return layers.ReLU(name=output_name or f"{name}_pw_relu")(x)


def overlapping_max_pool(x, name: str):
    """AlexNet's overlapping pooling: 3×3 windows with stride 2."""
    return layers.MaxPooling2D(3, strides=2, padding="same", name=name)(x)


def logits(x, num_classes: int, zero_init: bool = False):
    """The classification head's Dense layer. It always computes in float32, also under a mixed-precision policy,
    so the logits that the losses and softmax see keep float32 range and precision (the Keras mixed-precision
    guide's advice for the last layer).

    `zero_init` starts the kernel at zero (every class equally likely, an initial loss of exactly ln(classes)): right
    after fully connected ReLU layers, whose He-initialized outputs would otherwise give initial logits large
    enough to diverge (alexnet on 1,300 images: first-epoch loss 8–15, 0.74–0.86 test accuracy; zero head 0.96).
    Wrong after global average pooling, where it starves the body of gradient for the first steps (ds_alexnet
    0.80 vs 0.91), so Glorot-uniform there.
    """
    initializer = "zeros" if zero_init else "glorot_uniform"
    return layers.Dense(num_classes, dtype="float32", kernel_initializer=initializer, name="logits")(x)


def image_input(input_shape: tuple[int, int, int], name: str = "image"):
    """Input taking raw pixels in [0, 255]; the model rescales them itself, so exported models take raw images."""
    inputs = keras.Input(shape=tuple(input_shape), name=name)
    return inputs, layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)


def scaled(channels: int, width: float) -> int:
    """`channels × width`, rounded to a multiple of 8 (at least 8), as MobileNet's width multiplier does."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(8, int(channels * width + 4) // 8 * 8)
