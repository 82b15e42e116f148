"""Distillation terms: every method is one registered class, and a distiller's loss is Σ weight · term.

A term maps `(labels, teacher, student)` to one loss value per example; `teacher` and `student` are read-only
`Outputs` views holding the logits and the feature maps the term asked for by layer name. Terms are registered by
name, built from names or plain dicts (`get("kd", temperature=4)`, `get({"name": "kd", "temperature": 4})`), and
serialized back to those dicts, so CLI options, config files, experiment rows and the tuner all describe a method
the same way. A new method is a subclass with `@register("name")`; nothing else changes.

    @register("my_term")
    class MyTerm(Term):
        def __call__(self, labels, teacher, student, training=False):
            return ops.mean(ops.square(teacher.logits - student.logits), axis=-1)

Presets (`preset("tskd")`) expand to the term lists of the published methods; see `kdkeras.presets`.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from kdkeras import losses
from kdkeras.adapters import FeatureAdapter
from kdkeras.models import default_feature_pairs
from kdkeras.presets import DEFAULT_PRESET, PRESETS

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
    import inspect

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
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ValueError(f"term '{term}': {key} must be a finite number {'>' if strict else '>='} {minimum}, "
                         f"got {value!r}")  # fmt: skip
    return float(value)


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

    Args:
        weight: the term's weight in the total loss, ≥ 0.
        name: its metric and TensorBoard key; default the registered name.
    """

    registered_name: str | None = None
    mirrored = False
    reads_teacher_features = False
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


# --------------------------------------------------------------------------------------------------- logit terms


@register("ce")
class CrossEntropy(Term):
    """Cross-entropy with the labels: the student's own task loss."""

    def __call__(self, labels, teacher, student, training=False):
        return keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(student.logits, "float32"), from_logits=True
        )


@register("kd")
class KD(Term):
    """Soft targets: T² · KL(softmax(t/T) ‖ softmax(s/T)), optionally on standardized logits.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015; with `standardize=True` both
    networks' logits are Z-scored first (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).
    The same number as `keras.distillation.LogitsDistillation(temperature, loss=keras.losses.KLDivergence())`.

    Args:
        temperature: T > 0.
        standardize: Z-score the logits per example before the softmax (`losses.standardize_logits`).
    """

    mirrored = True
    search_space = {"weight": (0.1, 1.0, "linear"), "temperature": (1.0, 8.0, "log")}

    def __init__(self, weight: float = 1.0, temperature: float = 4.0, standardize: bool = False, name=None):
        super().__init__(weight, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)
        if not isinstance(standardize, bool):
            raise ValueError(f"term '{self.name}': standardize must be true or false, got {standardize!r}")
        self.standardize = standardize

    def __call__(self, labels, teacher, student, training=False):
        t, s = teacher.logits, student.logits
        if self.standardize:
            t, s = losses.standardize_logits(t), losses.standardize_logits(s)
        return losses.soft_target_kl(t, s, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "standardize": self.standardize}


@register("dkd")
class DKD(Term):
    """Decoupled KD: T² · (α · TCKD + β · NCKD), with an optional linear warm-up of the term.

    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022 (see `losses.dkd`). As in the
    authors' code, the term is scaled by min(epoch / warmup_epochs, 1), epochs counted from 1.

    Args:
        temperature: T > 0.
        alpha: weight of the target-class part (TCKD).
        beta: weight of the non-target part (NCKD); the paper uses 8 on CIFAR-100.
        warmup_epochs: epochs over which the term ramps up linearly; 0 for none.
        standardize: Z-score the logits first (Sun et al., 2024).
    """

    mirrored = True
    search_space = {"temperature": (1.0, 8.0, "log"), "beta": (1.0, 8.0, "log")}

    def __init__(self, weight=1.0, temperature=4.0, alpha=1.0, beta=8.0, warmup_epochs=0, standardize=False,
                 name=None):  # fmt: skip
        super().__init__(weight, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)
        self.alpha = _check_number(self.name, "alpha", alpha)
        self.beta = _check_number(self.name, "beta", beta)
        self.warmup_epochs = _check_number(self.name, "warmup_epochs", warmup_epochs)
        self.standardize = bool(standardize)

    def __call__(self, labels, teacher, student, training=False):
        t, s = teacher.logits, student.logits
        if self.standardize:
            t, s = losses.standardize_logits(t), losses.standardize_logits(s)
        loss = losses.dkd(labels, t, s, self.temperature, self.alpha, self.beta)
        if self.warmup_epochs and self.epoch is not None:
            loss = loss * ops.minimum((ops.cast(self.epoch, "float32") + 1.0) / self.warmup_epochs, 1.0)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
            "warmup_epochs": self.warmup_epochs,
            "standardize": self.standardize,
        }


@register("dist")
class DIST(Term):
    """DIST: β · inter-class relation (per example) + γ · intra-class relation (a batch statistic).

    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (see
    `losses.dist_inter`, `losses.dist_intra`).

    Reduction under `tf.distribute`: the intra-class relation is computed on each replica's own batch and given
    to each of its examples, so the global-batch mean of the per-example values is the mean of the replicas'
    statistics, weighted by their batch sizes. On one device that is exactly the paper's loss; with N replicas it
    is the mean over N sub-batches rather than the statistic of the whole global batch (correlations are not
    additive; gathering the batch across replicas would cost a collective per step).

    Args:
        temperature: τ of the softmax (the paper: 1 on ImageNet, 4 on CIFAR).
        beta: weight of the inter-class relation.
        gamma: weight of the intra-class relation.
    """

    mirrored = True
    search_space = {"temperature": (1.0, 8.0, "log"), "gamma": (0.5, 4.0, "log")}

    def __init__(self, weight=1.0, temperature=1.0, beta=1.0, gamma=1.0, name=None):
        super().__init__(weight, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)
        self.beta = _check_number(self.name, "beta", beta)
        self.gamma = _check_number(self.name, "gamma", gamma)

    def __call__(self, labels, teacher, student, training=False):
        inter = losses.dist_inter(teacher.logits, student.logits, self.temperature)
        intra = losses.dist_intra(teacher.logits, student.logits, self.temperature)
        return self.beta * inter + self.gamma * intra

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "beta": self.beta, "gamma": self.gamma}


# ------------------------------------------------------------------------------------------------- feature terms


class _FeatureTerm(Term):
    """A term over `(teacher layer, student layer)` feature pairs; `pairs="auto"` pairs the deepest stages."""

    reads_teacher_features = True
    search_space = {"weight": (0.1, 4.0, "log")}

    def __init__(self, weight=1.0, pairs: str | Sequence = "auto", name=None):
        super().__init__(weight, name)
        if pairs != "auto":
            if not (_is_list(pairs) and pairs and all(_is_list(p) and len(p) == 2 for p in pairs)) or not all(
                isinstance(n, str) for p in pairs for n in p
            ):
                raise ValueError(
                    f"term '{self.name}': pairs must be 'auto' or a non-empty list of [teacher_layer, student_layer], "
                    f"got {pairs!r}"
                )
            pairs = [tuple(p) for p in pairs]
        self.pairs = pairs

    def build(self, teacher, student):
        if self.pairs == "auto":
            self.pairs = default_feature_pairs(teacher, student)
            if not self.pairs:
                raise ValueError(f"term '{self.name}': no stage layers to pair; pass pairs=[[teacher, student]]")
        for t_name, s_name in self.pairs:
            for role, model, layer in (("teacher", teacher, t_name), ("student", student, s_name)):
                names = [lay.name for lay in model.layers]
                if layer not in names:
                    stages = [n for n in names if n.startswith("stage")] or names
                    raise ValueError(
                        f"{role} '{model.name}' has no layer '{layer}'; its stage layers are: {', '.join(stages)}"
                    )
                if len(model.get_layer(layer).output.shape) != 4:
                    raise ValueError(
                        f"term '{self.name}': {role} layer '{layer}' outputs shape "
                        f"{tuple(model.get_layer(layer).output.shape)}, not a (batch, H, W, C) feature map"
                    )

    @property
    def teacher_layers(self):
        return tuple(t for t, _ in self._resolved())

    @property
    def student_layers(self):
        return tuple(s for _, s in self._resolved())

    def _resolved(self):
        if self.pairs == "auto":
            raise RuntimeError(f"term '{self.name}' is not built yet: its 'auto' pairs are unknown")
        return self.pairs

    def get_config(self):
        pairs = self.pairs if self.pairs == "auto" else [list(p) for p in self.pairs]
        return {**super().get_config(), "pairs": pairs}


@register("hint")
class Hint(_FeatureTerm):
    """FitNets hints: Σ over pairs of the mean squared difference between the teacher's feature map and the
    student's, passed through a trainable `FeatureAdapter` (1×1 conv + BN) to the teacher's channels.

    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (see `losses.hint_loss`).

    Args:
        pairs: `[[teacher_layer, student_layer], ...]`, or `"auto"` (the deepest stage of each network).
        synchronized_bn: the adapters synchronize their batch statistics across replicas.
    """

    def __init__(self, weight=1.0, pairs="auto", synchronized_bn: bool = False, name=None):
        super().__init__(weight, pairs, name)
        self.synchronized_bn = bool(synchronized_bn)
        self.adapters = []

    def build(self, teacher, student):
        super().build(teacher, student)
        self.adapters = []
        for t_name, s_name in self.pairs:
            adapter = FeatureAdapter(
                teacher.get_layer(t_name).output.shape[-1],
                synchronized_bn=self.synchronized_bn,
                name=f"adapter_{t_name}_{s_name}",
            )
            adapter.build(student.get_layer(s_name).output.shape)
            self.adapters.append(adapter)

    @property
    def layers(self):
        return list(self.adapters)

    def __call__(self, labels, teacher, student, training=False):
        per_pair = [
            losses.hint_loss(ops.stop_gradient(teacher[t]), adapter(student[s], training=training))
            for (t, s), adapter in zip(self.pairs, self.adapters, strict=True)
        ]
        return ops.sum(ops.stack(per_pair), axis=0)

    def get_config(self):
        return {**super().get_config(), "synchronized_bn": self.synchronized_bn}


@register("attention")
class Attention(_FeatureTerm):
    """Attention transfer: Σ over pairs of the squared distance between normalized spatial attention maps.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (see `losses.attention_transfer_loss`,
    which sums over positions: the authors' β = 1000 on 8×8 maps is a weight of about 8 here).

    Args:
        pairs: `[[teacher_layer, student_layer], ...]`, or `"auto"`.
        p: exponent of the attention map.
    """

    def __init__(self, weight=1.0, pairs="auto", p: float = 2.0, name=None):
        super().__init__(weight, pairs, name)
        self.p = _check_number(self.name, "p", p, strict=True)

    def __call__(self, labels, teacher, student, training=False):
        per_pair = [
            losses.attention_transfer_loss(ops.stop_gradient(teacher[t]), student[s], self.p) for t, s in self.pairs
        ]
        return ops.sum(ops.stack(per_pair), axis=0)

    def get_config(self):
        return {**super().get_config(), "p": self.p}


# --------------------------------------------------------------------------------------------------- presets


def preset(name: str, **overrides) -> list[dict]:
    """The term specs of a preset, with `overrides` applied to every term that takes the argument.

    Example:
        >>> preset("tskd", temperature=2.0, pairs=[["stage3", "stage4"]])
    """
    if name not in PRESETS:
        choices = ", ".join(f"{k} ({v['doc']})" for k, v in PRESETS.items())
        raise ValueError(f"unknown method {name!r}; choose one of: {choices}")
    specs = []
    for spec in PRESETS[name]["terms"]:
        taken = _arguments(_REGISTRY[spec["name"]])
        specs.append({**spec, **{k: v for k, v in overrides.items() if k in taken and v is not None}})
    return specs


def parse_term(text: str) -> dict:
    """`"kd:weight=0.9,temperature=4"` → `{"name": "kd", "weight": 0.9, "temperature": 4}` (values read as YAML
    scalars or flow lists: `hint:pairs=[[stage3,stage4]]`)."""
    import yaml

    name, _, rest = text.strip().partition(":")
    spec = {"name": name.strip()}
    depth, start, items = 0, 0, []
    for i, char in enumerate(rest + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(rest[start:i])
            start = i + 1
    for item in filter(str.strip, items):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"term '{text}': '{item}' is not KEY=VALUE (e.g. kd:weight=0.9,temperature=4)")
        try:
            spec[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"term '{text}': cannot read the value of {key.strip()!r}: {value!r}") from None
    return spec


def from_options(
    method: str | None = None,
    terms: Sequence | None = None,
    extra: Sequence = (),
    *,
    temperature: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
    feature_pairs: str | Sequence | None = None,
    feature_loss: str | None = None,
) -> list[dict]:
    """The term specs a command line or config describes.

    Precedence: `terms` (an explicit list) or `method` (a preset, default `DEFAULT_PRESET`); or, when any of the
    classic weights `alpha`/`beta`/`gamma` is given, the classic TSKD sum α·ce + β·kd + γ·feature (missing ones
    default to 0.5, 0.5 and 1). `temperature` and `feature_pairs` then override those arguments in every term that
    takes them (`feature_pairs` given to a method without a feature term adds a `hint` term on them; `"none"`
    drops the feature terms), and each spec in `extra` updates the term of the same metric name (only the
    arguments it names) or is appended.
    """
    classic = any(v is not None for v in (alpha, beta, gamma))
    if classic and (method or terms):
        raise ValueError("give either --alpha/--beta/--gamma (the classic TSKD sum) or --method/--term lists, not both")
    if feature_loss is not None and not classic:
        raise ValueError("--feature-loss goes with --gamma; with a method, write --term hint:… or --term attention:…")
    pairs = None if feature_pairs in (None, "auto") else feature_pairs
    if classic:
        alpha, beta = 0.5 if alpha is None else alpha, 0.5 if beta is None else beta
        with_features = feature_pairs != "none" and (feature_pairs is not None or gamma is None or gamma > 0)
        gamma = (1.0 if with_features else 0.0) if gamma is None else gamma
        specs = [{"name": "ce", "weight": alpha}, {"name": "kd", "weight": beta, "temperature": temperature or 4.0}]
        if gamma > 0 and feature_pairs != "none":
            specs.append({"name": feature_loss or "hint", "weight": gamma, "pairs": pairs or "auto"})
        specs = [s for s in specs if s["weight"] > 0]
        if not specs:
            raise ValueError("alpha, beta and gamma are all 0: nothing to learn from")
    elif terms is not None:
        specs = [dict(s) if isinstance(s, Mapping) else {"name": s} for s in terms]
    else:
        specs = preset(method or DEFAULT_PRESET)
    has_features = any(issubclass(_registered(s["name"]), _FeatureTerm) for s in specs)
    if feature_pairs == "none":
        specs = [s for s in specs if not issubclass(_registered(s["name"]), _FeatureTerm)]
    elif feature_pairs is not None and not has_features:
        # Feature pairs asked for, and the method has no feature term: distil those features with FitNets hints.
        specs.append({"name": "hint", "pairs": "auto"})
    for spec in specs:
        taken = _arguments(_registered(spec["name"]))
        if temperature is not None and "temperature" in taken:
            spec["temperature"] = temperature
        if pairs is not None and "pairs" in taken:
            spec["pairs"] = [list(p) for p in pairs]
    for spec in extra:
        metric = spec.get("metric", spec.get("name"))
        same = [s for s in specs if s.get("metric", s["name"]) == metric and s["name"] == spec.get("name")]
        if same:
            same[0].update(spec)
        else:
            specs.append(dict(spec))
    return specs


def needs_live_teacher(specs: Sequence, collaborative: bool = False) -> bool:
    """Whether these terms (or collaborative mode) need the teacher's forward pass, not just cached logits."""
    return collaborative or any(_registered(get_spec_name(s)).reads_teacher_features for s in specs)


def get_spec_name(spec) -> str:
    return spec.registered_name if isinstance(spec, Term) else spec["name"] if isinstance(spec, Mapping) else spec


def _registered(name: str) -> type[Term]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown term {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name]
