"""From what a user writes to term specs: presets, `--term NAME:KEY=VALUE,...`, and the classic α/β/γ options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kdkeras.presets import DEFAULT_PRESET, PRESETS
from kdkeras.terms.base import _REGISTRY, Term, _arguments, available
from kdkeras.terms.features import _FeatureTerm


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
    if depth != 0:
        raise ValueError(f"term '{text}': unbalanced brackets [ ] (e.g. hint:pairs=[[stage3,stage3]])")
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
        if isinstance(terms, (str, Mapping)) or not isinstance(terms, Sequence):  # "kd" is not ["k", "d"].
            raise ValueError(f"terms must be a list of term names or specs, e.g. [ce, kd], got {terms!r}")
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


def default_terms(teacher, student) -> list[dict]:
    """The default method of a distiller: `DEFAULT_PRESET`; for a multi-exit student, TSKD with self-teaching
    (`tskd_exits`), or self-distillation alone (`byot`) without a teacher; labels alone with neither."""
    from kdkeras.models.exits import exit_layers
    from kdkeras.presets import DEFAULT_EXITS_PRESET, DEFAULT_PRESET, DEFAULT_SELF_PRESET

    if exit_layers(student):
        return preset(DEFAULT_EXITS_PRESET if teacher is not None else DEFAULT_SELF_PRESET)
    return preset(DEFAULT_PRESET if teacher is not None else "scratch")
