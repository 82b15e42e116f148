"""Model cost: parameters and FLOPs, counted analytically from layer shapes.

FLOPs here are 2 × multiply-accumulates (one multiply and one add per MAC) of the convolution and dense layers
for one image; batch normalization, activations and pooling are not counted (they are a few percent at most and
fold into the convolutions at inference time).
"""

from __future__ import annotations

import math

import keras


def count_params(model: keras.Model) -> int:
    """Number of weights, trainable and not (batch-norm statistics included), as `model.count_params()`."""
    return int(model.count_params())


def _layer_macs(layer) -> int:
    """Multiply-accumulates of one layer for one example (0 for layers without weights)."""
    if isinstance(layer, keras.Model):
        return sum(_layer_macs(sub) for sub in layer.layers)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        out_positions = math.prod(layer.output.shape[1:3])
        kh, kw, in_ch, multiplier = layer.kernel.shape
        return out_positions * kh * kw * in_ch * multiplier
    if isinstance(layer, keras.layers.SeparableConv2D):
        out_positions = math.prod(layer.output.shape[1:3])
        kh, kw, in_ch, multiplier = layer.depthwise_kernel.shape
        return out_positions * (kh * kw * in_ch * multiplier + in_ch * multiplier * layer.filters)
    if isinstance(layer, keras.layers.Conv2D):
        out_positions = math.prod(layer.output.shape[1:3])
        # The kernel is (kh, kw, in_channels / groups, filters): one MAC per kernel entry and output position.
        return out_positions * math.prod(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(layer.output.shape[1:-1])
        return positions * math.prod(layer.kernel.shape)
    return 0


def count_flops(model: keras.Model) -> int:
    """FLOPs (2 × MACs) of one forward pass of one image through the conv and dense layers.

    Example:
        >>> inputs = keras.Input((8, 8, 3))
        >>> model = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
        >>> count_flops(model)  # 8·8 positions × 3·3·3·4 kernel entries × 2
        13824
    """
    return 2 * sum(_layer_macs(layer) for layer in model.layers)
