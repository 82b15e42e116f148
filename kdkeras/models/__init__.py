"""Model registry: `build_model(name, input_shape, num_classes, **kwargs)`, and (from `anatomy`) what kdkeras
reads from a model.

Every builder is a functional-API function returning logits, whose stage outputs are layers named `stage1`,
`stage2`, … so that feature distillation can tap them by name. Models of your own (functional or Sequential) serve
as teacher or student too; `signature` says what kdkeras reads from them.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from kdkeras.models.alexnet import alexnet
from kdkeras.models.anatomy import (  # noqa: F401 (part of this package's interface)
    as_list,
    default_feature_pairs,
    logits_tensor,
    require_layers,
    signature,
    stage_layers,
    tap,
)
from kdkeras.models.ds_alexnet import ds_alexnet
from kdkeras.models.resnet import resnet

MODELS: dict[str, Callable[..., keras.Model]] = {
    "alexnet": alexnet,
    "ds_alexnet": ds_alexnet,
    "resnet": resnet,
}


def build_model(name: str, input_shape, num_classes: int, exits=None, **kwargs) -> keras.Model:
    """Builds a registered model.

    Args:
        name: one of `MODELS` (`alexnet`, `ds_alexnet`, `resnet`), or `applications:NAME`, a Keras Application
            with a new head (`kdkeras.models.applications`; option `weights`: None, `"imagenet"` or a file).
        input_shape: `(height, width, channels)`.
        num_classes: number of output logits.
        exits: stage layers to put an exit head after (a multi-exit student, `kdkeras.models.exits`), e.g.
            `["stage3", "stage4"]`; default none.
        **kwargs: builder options (`width`, `depth`, `synchronized_bn`, …).

    Returns:
        A functional `keras.Model` with freshly initialized weights.

    Raises:
        ValueError: for an unknown name or an option the builder does not take.
    """
    if name.startswith("applications:"):  # A Keras Application (`kdkeras.models.applications`).
        from kdkeras.models.applications import application

        model = application(name.removeprefix("applications:"), input_shape, num_classes, **kwargs)
        return model if not exits else _with_exits(model, exits)
    if name not in MODELS:
        raise ValueError(
            f"unknown model '{name}'; choose one of: {', '.join(sorted(MODELS))}, or applications:NAME (a Keras "
            "Application, e.g. applications:MobileNetV3Small)"
        )
    builder = MODELS[name]
    _check_size(name, builder, input_shape, num_classes, kwargs)
    try:
        model = builder(tuple(int(d) for d in input_shape), int(num_classes), **kwargs)
    except TypeError as error:
        raise ValueError(f"model '{name}' does not take these options {sorted(kwargs)}: {error}") from None
    return _with_exits(model, exits) if exits else model


def _with_exits(model: keras.Model, exits) -> keras.Model:
    from kdkeras.models.exits import add_exits

    return add_exits(model, list(exits))


# Above this, a model's weights and Adam's two moments alone take more than 1.2 GB (float32): refused up front rather
# than after minutes of graph building ending in ResourceExhaustedError.
MAX_PARAMS = 100_000_000


def _check_size(name: str, builder, input_shape, num_classes: int, kwargs: dict) -> None:
    """Refuses a width multiplier whose model cannot fit, estimated from the width-1 model (parameters grow with
    the square of the width) before anything large is built."""
    width = kwargs.get("width", 1.0)
    if not isinstance(width, (int, float)) or width <= 1.0:
        return
    try:
        base = builder(tuple(int(d) for d in input_shape), int(num_classes), **{**kwargs, "width": 1.0})
    except TypeError:
        return  # The builder's own error follows.
    estimate = base.count_params() * width**2
    if estimate > MAX_PARAMS:
        raise ValueError(
            f"model '{name}' at width {width:g} would have about {estimate:,.0f} parameters, more than "
            f"{MAX_PARAMS:,} (width {(MAX_PARAMS / base.count_params()) ** 0.5:.1f} at most)"
        )
