"""Multi-exit students: small classifier heads ("exits") after chosen stages, for self-distillation and early exit.

`add_exits(model, ["stage3", "stage4"])` returns a model with the same single output (the final logits) whose graph
also holds one exit head per stage: a depthwise 3×3 conv, BN, ReLU, global average pooling and a dense layer named
`exit_STAGE`. Zhang et al. ("Be Your Own Teacher", ICCV 2019) give each exit a bottleneck block; on a network this
small a pointwise conv to the final stage's width costs as much as the stages it would skip (a depthwise-separable
head after ds_alexnet's stage4 is a copy of conv5: the exit would save nothing), so the head keeps only the cheap
depthwise half (about 0.2 MFLOPs on a width-0.5 student).

The heads hang on the output through `ExitCollector`, which returns the final logits: the model is still a plain
one-output classifier for `fit`, `evaluate`, export and every kdkeras command, while its `.keras` file keeps the
heads and the distiller taps their logits by layer name (the `exit_*` terms, `kdkeras.terms.exits`). In a compiled
forward pass nothing reads the heads, so graph pruning leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from kdkeras.models.layers import batch_norm, depthwise_he_init

EXIT_PREFIX = "exit_"


@keras.saving.register_keras_serializable(package="kdkeras")
class ExitCollector(layers.Layer):
    """`[final logits, *exit logits] -> final logits`: keeps the exit heads in the model's graph."""

    def call(self, inputs):
        return inputs[0]

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def add_exits(model: keras.Model, stages: Sequence[str], name: str | None = None) -> keras.Model:
    """`model` with an exit head after each of `stages` (layer names, shallow to deep).

    Args:
        model: a functional classifier returning logits (e.g. `ds_alexnet`).
        stages: the layers whose outputs (feature maps) get an exit, e.g. `["stage3", "stage4"]`.
        name: the new model's name (default the model's).

    Returns:
        A functional model sharing `model`'s layers, returning the same final logits; its exits are the layers
        `exit_STAGE` (see `exit_layers`).

    Example:
        >>> from kdkeras.models import build_model
        >>> student = add_exits(build_model("ds_alexnet", (28, 28, 1), 10, width=0.5), ["stage3", "stage4"])
        >>> exit_layers(student)
        ['exit_stage3', 'exit_stage4']
    """
    from kdkeras.models.anatomy import logits_tensor, require_layers

    final = logits_tensor(model, "model")
    if not stages:
        raise ValueError("add_exits needs at least one stage layer name")
    if exit_layers(model):
        raise ValueError(f"model '{model.name}' has exits already: {', '.join(exit_layers(model))}")
    found = require_layers(model, list(stages), "model")
    feature_maps = [layer.output for layer in found]
    for stage, tensor in zip(stages, feature_maps, strict=True):
        if len(tensor.shape) != 4:
            raise ValueError(f"exit after '{stage}': its output {tuple(tensor.shape)} is not a (batch, H, W, C) map")
    heads = []
    for stage, tensor in zip(stages, feature_maps, strict=True):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, depthwise_initializer=depthwise_he_init(3),
                                   name=f"{EXIT_PREFIX}{stage}_dw")(tensor)  # fmt: skip
        x = layers.ReLU(name=f"{EXIT_PREFIX}{stage}_relu")(batch_norm(f"{EXIT_PREFIX}{stage}_bn")(x))
        x = layers.GlobalAveragePooling2D(name=f"{EXIT_PREFIX}{stage}_gap")(x)
        heads.append(layers.Dense(final.shape[-1], dtype="float32", name=f"{EXIT_PREFIX}{stage}")(x))
    output = ExitCollector(name="with_exits")([final, *heads])
    return keras.Model(model.inputs[0], output, name=name or model.name)


def exit_layers(model: keras.Model) -> list[str]:
    """The exit heads' layer names of a multi-exit model, shallow to deep (empty for a plain model)."""
    collector = next((layer for layer in model.layers if isinstance(layer, ExitCollector)), None)
    if collector is None:
        return []
    return [tensor._keras_history.operation.name for tensor in collector.input[1:]]


def without_exits(model: keras.Model) -> keras.Model:
    """The single-exit network inside a multi-exit model (its final logits, no heads); `model` itself if it has
    no exits."""
    collector = next((layer for layer in model.layers if isinstance(layer, ExitCollector)), None)
    if collector is None:
        return model
    return keras.Model(model.inputs[0], collector.input[0], name=model.name)


def exits_model(model: keras.Model) -> keras.Model:
    """A model returning `[exit logits …, final logits]` in one pass (shallow to deep), for evaluation."""
    collector = next((layer for layer in model.layers if isinstance(layer, ExitCollector)), None)
    if collector is None:
        raise ValueError(f"model '{model.name}' has no exits (build it with exits=[...], see add_exits)")
    return keras.Model(model.inputs[0], [*collector.input[1:], collector.input[0]], name=f"{model.name}_exits")
