"""The term registry, the `Term` base class and the read-only `Outputs` views terms receive."""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from kdkeras.validation import check_number

_REGISTRY: dict[str, type[Term]] = {}


def register(name: str):
    """Class decorator: registers a `Term` subclass under `name` (its default metric name, and its key in configs).

    The class is also registered with Keras serialization (package `kdkeras.terms`).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a term name must be an identifier, got {name!r}")

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, Term)):
            raise TypeError(f"@register('{name}') needs a subclass of kdkeras.terms.Term, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"a term named '{name}' is registered already ({_REGISTRY[name].__qualname__})")
        cls.registered_name = name
        _REGISTRY[name] = cls
        return keras.saving.register_keras_serializable(package="kdkeras.terms", name=name)(cls)

    return decorate


def available() -> list[str]:
    """The registered term names, sorted."""
    return sorted(_REGISTRY)


def get(spec: str | Mapping | Term, **kwargs) -> Term:
    """A term from its registered name and arguments, a dict `{"name": ..., **arguments}`, or a `Term` (as is).

    In the dict form `"metric"` renames the term's metric (e.g. two `hint` terms as `hint` and `hint_deep`).

    Raises:
        ValueError: one line naming the unknown term and the registered ones, or the bad argument and the
            arguments the term takes.
    """
    if isinstance(spec, Term):
        return spec
    if isinstance(spec, Mapping):
        arguments = dict(spec)
        if "name" not in arguments:
            raise ValueError(f"a term needs a 'name' (one of: {', '.join(available())}), got {dict(spec)}")
        spec = arguments.pop("name")
        if "metric" in arguments:
            arguments["name"] = arguments.pop("metric")
        kwargs = {**arguments, **kwargs}
    if spec not in _REGISTRY:
        raise ValueError(f"unknown term {spec!r}; choose one of: {', '.join(available())}")
    cls = _REGISTRY[spec]
    try:
        return cls(**kwargs)
    except TypeError as error:
        taken = ", ".join(_arguments(cls))
        raise ValueError(f"term '{spec}': {_first_line(error)}; it takes: {taken}") from None


def serialize(term: Term) -> dict:
    """The plain dict that `get` turns back into an equal term: `{"name": registered name, **arguments}`."""
    config = term.get_config()
    metric = config.pop("name")
    spec = {"name": term.registered_name, **config}
    if metric != term.registered_name:
        spec["metric"] = metric
    return spec


def get_list(specs: Sequence) -> list[Term]:
    """Terms from a list of specs (see `get`); metric names must be unique."""
    if isinstance(specs, (str, Mapping, Term)) or not isinstance(specs, Sequence):
        raise ValueError(f"terms must be a list of term names or dicts, got {specs!r}")
    built = [get(spec) for spec in specs]
    names = [term.name for term in built]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"two terms report as {', '.join(repeated)}: give one of them another 'metric' name")
    if not built:
        raise ValueError("no terms: a distiller needs at least one")
    return built


def _arguments(cls) -> list[str]:
    names = []
    for klass in cls.__mro__:
        if klass is object:
            break
        for parameter in list(inspect.signature(klass.__init__).parameters.values())[1:]:
            if parameter.kind is parameter.KEYWORD_ONLY or parameter.kind is parameter.POSITIONAL_OR_KEYWORD:
                if parameter.name not in names:
                    names.append(parameter.name)
    return names


def _is_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _check_number(term: str, key: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    return float(check_number(value, f"term '{term}': {key}", minimum, strict))


@dataclasses.dataclass(frozen=True)
class Outputs:
    """A read-only view of one network's outputs for a step: `logits` and `features[layer name]`.

    `view["stage3"]` is `view.features["stage3"]`; asking for a layer that was not tapped is a clear error.
    """

    logits: Any
    features: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "features", types.MappingProxyType(dict(self.features)))

    def __getitem__(self, layer: str):
        if layer not in self.features:
            tapped = ", ".join(self.features) or "none"
            raise KeyError(f"layer '{layer}' was not tapped (tapped: {tapped}); list it in the term's layers")
        return self.features[layer]


class Term:
    """One distillation loss term: `weight · term(labels, teacher, student)` is added to the student's loss.

    Subclasses implement `__call__`, returning one float32 value per example (shape `(batch,)`), so the distiller
    can average over the global batch under `tf.distribute`. A term that needs feature maps lists their layer
    names in `teacher_layers`/`student_layers` (known after `build`); one that owns trainable layers (adapters)
    creates them in `build` and lists them in `layers`. `get_config` returns the constructor's arguments.

    Class attributes:
        registered_name: set by `@register`.
        reads_teacher_features: the term taps teacher layers (then cached teacher logits cannot serve it).
        mirrored: in collaborative mode the teacher also learns from this term, with the roles swapped
            (the student's outputs as the target). Logit terms are mirrored; feature terms are not (their adapters
            map student features to the teacher's).
        search_space: `{argument: (low, high, sampling)}` that the Keras Tuner may search for this term.
        needs_teacher: the term reads the teacher's outputs (a distiller without a teacher refuses it).
        uses_labels: the term reads the labels; on unlabeled transfer images (`kdkeras.data`,
            `unlabeled_examples`) its value is zeroed. A term of your own that reads them must set it.

    Args:
        weight: the term's weight in the total loss, ≥ 0.
        name: its metric and TensorBoard key; default the registered name.
    """

    registered_name: str | None = None
    mirrored = False
    reads_teacher_features = False
    uses_labels = False
    needs_teacher = True
    search_space: dict[str, tuple[float, float, str]] = {"weight": (0.1, 1.0, "linear")}

    def __init__(self, weight: float = 1.0, name: str | None = None):
        self.name = name or self.registered_name or type(self).__name__.lower()
        self.weight = _check_number(self.name, "weight", weight)
        # Set by the distiller: a scalar variable holding the current epoch (0-based), for schedules such as DKD's
        # warm-up; None outside a distiller.
        self.epoch = None

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        return ()

    @property
    def student_layers(self) -> tuple[str, ...]:
        return ()

    @property
    def layers(self) -> list[keras.layers.Layer]:
        """Trainable layers the term owns (trained with the student)."""
        return []

    def build(self, teacher: keras.Model, student: keras.Model) -> None:
        """Resolves layer names and creates owned layers, once the networks are known."""

    def __call__(self, labels, teacher: Outputs, student: Outputs, training: bool = False):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def get_config(self) -> dict:
        return {"weight": self.weight, "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> Term:
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"
