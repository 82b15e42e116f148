"""What kdkeras reads from a classifier, built here or of your own (functional or Sequential): its one logits
output and input signature, its stage layers (named `stage1`, `stage2`, … by the builders) and taps on them."""

from __future__ import annotations

import re

import keras

_STAGE_NAME = re.compile(r"^stage\d+$")


def logits_tensor(model: keras.Model, role: str = "model"):
    """The symbolic logits of a built functional or Sequential model with one `(batch, classes)` output.

    Raises:
        ValueError: for a model that is not built (a Sequential without an `Input`), or has several outputs, or
            one that is not `(batch, classes)`; the message says how to fix it.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"the {role} must be a keras.Model, got {type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            f"the {role} '{model.name}' is not built: start a Sequential model with keras.Input(shape) "
            "(or call model.build((None, height, width, channels)))"
        )
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"the {role} '{model.name}' has {len(inputs)} input(s) and {len(outputs)} output(s): kdkeras needs one "
            "image input and one (batch, classes) logits output"
        )
    if len(outputs[0].shape) != 2 or len(inputs[0].shape) != 4:
        raise ValueError(
            f"the {role} '{model.name}' maps {tuple(inputs[0].shape)} to {tuple(outputs[0].shape)}: kdkeras needs "
            "(batch, height, width, channels) images in and (batch, classes) logits out"
        )
    return outputs[0]


def signature(model: keras.Model, role: str = "model") -> tuple[tuple[int, int, int], int]:
    """`(input shape (height, width, channels), number of classes)` of a classifier (see `logits_tensor`)."""
    classes = logits_tensor(model, role).shape[-1]
    return tuple(model.inputs[0].shape[1:]), int(classes)


def stage_layers(model: keras.Model) -> dict[str, tuple]:
    """The stage outputs of a model, `{layer name: output shape}` in network order.

    Example:
        >>> stage_layers(kdkeras.models.build_model("resnet", (28, 28, 1), 10))
        {'stage1': (None, 28, 28, 16), 'stage2': (None, 14, 14, 32), 'stage3': (None, 7, 7, 64)}
    """
    return {layer.name: tuple(layer.output.shape) for layer in model.layers if _STAGE_NAME.match(layer.name)}


def default_feature_pairs(teacher: keras.Model, student: keras.Model) -> list[tuple[str, str]]:
    """The deepest stage of each network: the representation closest to the logits that is still spatial."""
    teacher_stages, student_stages = list(stage_layers(teacher)), list(stage_layers(student))
    if not teacher_stages or not student_stages:
        return []
    return [(teacher_stages[-1], student_stages[-1])]


def require_layers(model: keras.Model, layer_names, role: str = "model") -> list:
    """The named layers of `model`; a missing name is a one-line error listing the model's stage layers."""
    names = [layer.name for layer in model.layers]
    missing = [n for n in layer_names if n not in names]
    if missing:
        stages = [n for n in names if n.startswith("stage")] or names
        raise ValueError(
            f"{role} '{model.name}' has no layer {', '.join(map(repr, missing))}; "
            f"its stage layers are: {', '.join(stages)}"
        )
    return [model.get_layer(n) for n in layer_names]


def tap(model: keras.Model, layer_names, role: str = "model") -> keras.Model:
    """A model sharing `model`'s layers that returns `[logits, *outputs of layer_names]` in one forward pass."""
    outputs = [logits_tensor(model, role)] + [layer.output for layer in require_layers(model, layer_names, role)]
    return keras.Model(model.inputs[0], outputs, name=f"{model.name}_taps")


def as_list(outputs) -> list:
    """A functional model built with a one-element output list returns a bare tensor: make it a list again."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
