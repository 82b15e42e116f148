"""The experiment config: YAML in, a validated plain-data dict out (every key known, every value checked).

The format is described in `kdkeras.experiments`; `load_config` reads a file, `check_config` a mapping.
"""

from __future__ import annotations

import copy
import os

from kdkeras.validation import check_number

BUDGETS = ("quick", "full")
# Bumped when kdkeras' code changes what a row computes (initialization, data pipeline, losses): rows from older
# code are then run again instead of being mixed with new ones. 2: He init, batch-norm warm start, pure
# (seed, epoch, index) data order and augmentation, distillation terms.
RESULTS_VERSION = 2

# Every key a config may hold, with its default; a key not listed here is an error, so a typo never goes unnoticed.
_TOP_DEFAULTS = {
    "name": None,
    "description": "",
    "dataset": "fashion_mnist",
    "data_dir": None,
    "seeds": [0],
    "results_dir": os.path.join("experiments", "results"),
    "models_dir": os.path.join("saved_models", "experiments"),
    "teacher": None,
    # More teachers, by name, for rows that learn from another one than `teacher` (row key `teacher: NAME`).
    "teachers": {},
    "student": None,
    "training": {},
    "budgets": None,
    "rows": None,
    # The gain over scratch the experiment sets out to show, as a fraction of accuracy (0.008: +0.8 points): the
    # Δ plot marks it and the report names the rows that reach it in the mean and on every seed.
    "target_delta": None,
}
_MODEL_DEFAULTS = {"model": None, "options": {}}
# A teacher is trained by the experiment (`model`, `options`, …), or is a trained model file (`file`: a .keras path,
# relative to the working directory), used as it is.
_TEACHER_DEFAULTS = {**_MODEL_DEFAULTS, "seed": 0, "lr": None, "training": {}, "file": None}
_TRAINING_DEFAULTS = {
    "batch_size": 128,
    "lr": 2e-3,
    "optimizer": "adam",
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "weight_decay": 0.0,
    "augment": True,
    "augment_views": None,
    "flip": None,
    "validation_fraction": 0.1,
    "max_validation_examples": None,
    "max_test_examples": None,
}
_BUDGET_DEFAULTS = {"epochs": None, "teacher_epochs": None, "max_train_examples": None, "seeds": None}
ROW_DEFAULTS = {
    "name": None,
    "label": None,
    "method": None,
    # reference
    "model": None,
    "options": {},
    # distillation: a preset method, or method "distill" with an explicit term list
    "terms": None,
    "temperature": None,
    "pairs": None,
    "collaborative": False,
    "teacher_lr": None,
    "teacher_mimicry": None,
    # distillation: false runs the teacher live each step instead of filling the teacher-output cache first; the
    # same images and, but for float16 rounding, the same logits. The cache (~86 MB per seed at 80 epochs) stays
    # on the machine that filled it, so a row resumed from its checkpoint elsewhere would first refill every epoch;
    # live, the teacher's cost is spread over the steps and a resume repeats none of it.
    "teacher_cache": True,
    # distillation: the teacher is one of the config's `teachers` (by name) instead of the experiment's `teacher`…
    "teacher": None,
    # …or the model an earlier row trained with the same seed (a teacher assistant)
    "teacher_row": None,
    # distillation: also train on the next N training images without their labels (only the teacher teaches there)
    "unlabeled_examples": 0,
    # distillation: show this share of the training images as mixes of two, without labels (function matching)
    "mixed_fraction": 0.0,
    # any row: train longer than the budget's epochs (e.g. 2 to check that scratch has converged)
    "epochs_multiplier": 1,
    # any row: run only these of the experiment's seeds (e.g. a costly check on one seed)
    "seeds": None,
}
# Row keys that add training images without labels (only a teacher teaches on them): TrainConfig fields too.
UNLABELED_IMAGES = ("unlabeled_examples", "mixed_fraction")
_DISTILL_KEYS = (
    "terms", "temperature", "pairs", "collaborative", "teacher_lr", "teacher_mimicry", "teacher", "teacher_row",
    "teacher_cache", *UNLABELED_IMAGES,
)  # fmt: skip


def _fill(values, defaults: dict, where: str) -> dict:
    """`values` with the defaults filled in; an unknown key or a non-mapping is an error naming `where`."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    return {**copy.deepcopy(defaults), **values}


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{where}: {message}")


def _number(value, where: str, minimum: float = 0.0, strict: bool = False, integer: bool = False):
    # The training settings' rule (finite, not a bool), so YAML's `.inf` cannot pass here and fail only when the
    # Distiller is built, after the teacher has loaded.
    return check_number(value, f"{where}:", minimum, strict, integer)


def _model_spec(values, where: str, defaults: dict) -> dict:
    from kdkeras.models import MODELS

    spec = _fill(values, defaults, where)
    _require(
        spec["model"] in MODELS,
        f"{where}.model",
        f"unknown model {spec['model']!r}; choose one of: {', '.join(MODELS)}",
    )
    _require(isinstance(spec["options"], dict), f"{where}.options", "must be a mapping of builder options")
    return spec


def _feature_pairs(value, where: str):
    if value in ("auto",):
        return value
    _require(
        isinstance(value, list), where, f"must be 'auto' or a list of [teacher_layer, student_layer], got {value!r}"
    )
    for pair in value:
        _require(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(n, str) for n in pair),
            where,
            f"each pair must be [teacher_layer, student_layer], got {pair!r}",
        )
    return [list(pair) for pair in value]


def _check_name(name, where: str) -> None:
    """Row and teacher names become file names: letters, digits, '-' and '_' only."""
    _require(
        isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum(),
        where,
        f"must be a name of letters, digits, '-' or '_', got {name!r}",
    )


def _row_spec(values, index: int, path: str) -> dict:
    where = f"{path}: rows[{index}]"
    row = _fill(values, ROW_DEFAULTS, where)
    name = row["name"]
    _check_name(name, f"{where}.name")
    where = f"{path}: row '{name}'"
    from kdkeras.presets import PRESETS

    methods = ("reference", "distill", *PRESETS)
    _require(row["method"] in methods, f"{where}.method", f"must be one of {', '.join(methods)}, got {row['method']!r}")
    row["label"] = row["label"] or name
    if row["method"] == "reference":
        row.update(_model_spec({"model": row["model"], "options": row["options"]}, where, _MODEL_DEFAULTS))
    else:
        _require(row["model"] is None, f"{where}.model", "only a 'reference' row names its own model")
        _require(isinstance(row["options"], dict), f"{where}.options", "must be a mapping of student builder options")
    _number(row["epochs_multiplier"], f"{where}.epochs_multiplier", 1, integer=True)
    _require(row["seeds"] is None or _valid_seeds(row["seeds"]), f"{where}.seeds", "must be a list of integers")
    if row["method"] in ("scratch", "reference"):
        given = [k for k in _DISTILL_KEYS if values.get(k, ROW_DEFAULTS[k]) != ROW_DEFAULTS[k]]
        _require(not given, where, f"{', '.join(given)} only apply to distillation rows")
        return {k: row[k] for k in ("name", "label", "method", "model", "options", "epochs_multiplier", "seeds")}
    from kdkeras import terms as terms_lib

    if row["method"] == "distill":
        _require(row["terms"] is not None, where, "method 'distill' needs a 'terms' list (or name a preset method)")
    else:
        _require(row["terms"] is None, f"{where}.terms", f"a preset method ({row['method']}) takes no term list")
    _number(row["unlabeled_examples"], f"{where}.unlabeled_examples", 0, integer=True)
    _number(row["mixed_fraction"], f"{where}.mixed_fraction", 0)
    _require(row["mixed_fraction"] <= 1, f"{where}.mixed_fraction", f"must be at most 1, got {row['mixed_fraction']}")
    if row["temperature"] is not None:
        _number(row["temperature"], f"{where}.temperature", strict=True)
    if row["teacher_lr"] is not None:
        _number(row["teacher_lr"], f"{where}.teacher_lr", strict=True)
    if row["teacher_mimicry"] is not None:
        _number(row["teacher_mimicry"], f"{where}.teacher_mimicry")
    if row["pairs"] is not None:
        row["pairs"] = _feature_pairs(row["pairs"], f"{where}.pairs")
    _require(isinstance(row["collaborative"], bool), f"{where}.collaborative", "must be true or false")
    _require(isinstance(row["teacher_cache"], bool), f"{where}.teacher_cache", "must be true or false")
    _require(
        row["teacher_row"] is None or isinstance(row["teacher_row"], str),
        f"{where}.teacher_row",
        f"must be the name of an earlier row, got {row['teacher_row']!r}",
    )
    _require(
        row["teacher"] is None or row["teacher_row"] is None,
        where,
        "give either teacher (one of the config's teachers) or teacher_row (an earlier row's model), not both",
    )
    try:
        row["terms"] = terms_lib.from_options(
            None if row["method"] == "distill" else row["method"], row["terms"],
            temperature=row["temperature"], feature_pairs=row["pairs"],
        )  # fmt: skip
        terms_lib.get_list(row["terms"])
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return row


def load_config(path: str) -> dict:
    """Reads and validates an experiment config.

    Args:
        path: a `.yaml`/`.yml` (or `.json`) file.

    Returns:
        The config with every default filled in.

    Raises:
        ValueError: naming the file and the key, for an unknown key or a bad value.
    """
    from kdkeras.config_files import read_mapping

    return check_config(read_mapping(path), path)


def check_config(mapping: dict, path: str) -> dict:
    """Validates an experiment config given as a mapping (what `load_config` reads from a file; the demo builds
    one in code); `path` names it in error messages.

    Returns:
        The config with every default filled in.
    """
    config = _fill(mapping, _TOP_DEFAULTS, path)
    config["name"] = config["name"] or os.path.splitext(os.path.basename(path))[0]
    for key in ("teacher", "student", "budgets", "rows"):
        _require(config[key] is not None, path, f"missing required key '{key}'")
    config["student"] = _model_spec(config["student"], f"{path}: student", _MODEL_DEFAULTS)
    config["training"] = _training_spec(config["training"], _TRAINING_DEFAULTS, f"{path}: training")
    config["teacher"] = _teacher_spec(config["teacher"], config["training"], f"{path}: teacher")
    _require(isinstance(config["teachers"], dict), f"{path}: teachers", "must be a mapping of name: teacher")
    for name, teacher in config["teachers"].items():
        _check_name(name, f"{path}: teachers")
        config["teachers"][name] = _teacher_spec(teacher, config["training"], f"{path}: teachers.{name}")
    _require(
        _valid_seeds(config["seeds"]),
        f"{path}: seeds",
        f"must be a non-empty list of integers, got {config['seeds']!r}",
    )
    if config["target_delta"] is not None:
        _number(config["target_delta"], f"{path}: target_delta", 0, strict=True)
        _require(
            config["target_delta"] < 1,
            f"{path}: target_delta",
            "must be a fraction of accuracy below 1 (0.008 is +0.8 points)",
        )
    budgets = _fill(config["budgets"], dict.fromkeys(BUDGETS), f"{path}: budgets")
    _require(any(budgets.values()), f"{path}: budgets", f"define at least one of {', '.join(BUDGETS)}")
    for name in BUDGETS:
        if budgets[name] is None:  # Only the budget a run asks for must be there (`Experiment` says so).
            continue
        budget = budgets[name] = _fill(budgets[name], _BUDGET_DEFAULTS, f"{path}: budgets.{name}")
        trains_a_teacher = any(t.get("file") is None for t in [config["teacher"], *config["teachers"].values()])
        for key in ("epochs", "teacher_epochs") if trains_a_teacher else ("epochs",):
            _require(budget[key] is not None, f"{path}: budgets.{name}", f"missing '{key}'")
            _number(budget[key], f"{path}: budgets.{name}.{key}", 1, integer=True)
        if budget["max_train_examples"] is not None:
            _number(budget["max_train_examples"], f"{path}: budgets.{name}.max_train_examples", 1, integer=True)
        if budget["seeds"] is not None:
            _require(
                _valid_seeds(budget["seeds"]), f"{path}: budgets.{name}.seeds", "must be a non-empty list of integers"
            )
    config["budgets"] = budgets
    _require(isinstance(config["rows"], list) and config["rows"], f"{path}: rows", "must be a non-empty list")
    config["rows"] = [_row_spec(row, i, path) for i, row in enumerate(config["rows"])]
    names = [row["name"] for row in config["rows"]]
    reserved = {"teacher", *(f"teacher-{name}" for name in config["teachers"])}
    duplicates = sorted({n for n in names if names.count(n) > 1} | (reserved & set(names)))
    _require(not duplicates, f"{path}: rows", f"duplicate or reserved row name(s) {', '.join(duplicates)}")
    for index, row in enumerate(config["rows"]):
        if row.get("teacher_row") is not None:
            _check_teacher_row(row, config["rows"][:index], path)
        if row.get("teacher") is not None:
            _require(
                isinstance(row["teacher"], str) and row["teacher"] in config["teachers"],
                f"{path}: row '{row['name']}'.teacher",
                f"{row['teacher']!r} is not one of the config's teachers ({', '.join(config['teachers']) or 'none'})",
            )
    return config


def _teacher_spec(values, training: dict, where: str) -> dict:
    """A teacher's architecture, seed and training; its own settings override the shared `training` (a teacher
    often wants another optimizer and lr)."""
    if isinstance(values, dict) and values.get("file") is not None:
        teacher = _fill(values, _TEACHER_DEFAULTS, where)
        _require(isinstance(teacher["file"], str), f"{where}.file", "must be the path of a trained .keras file")
        given = [k for k in ("model", "lr") if teacher[k] is not None] + [
            k for k in ("options", "training") if teacher[k]
        ]
        _require(not given, where, f"a teacher read from a file is not trained: {', '.join(given)} do not apply")
        teacher["training"] = _training_spec({}, training, f"{where}.training")
        return teacher
    teacher = _model_spec(values, where, _TEACHER_DEFAULTS)
    _number(teacher["seed"], f"{where}.seed", integer=True)
    teacher["training"] = _training_spec(teacher["training"], training, f"{where}.training")
    return teacher


def _check_teacher_row(row: dict, earlier: list[dict], path: str) -> None:
    """A row taught by another row's model: that row comes earlier and trains every seed this one does."""
    where = f"{path}: row '{row['name']}'.teacher_row"
    teacher = next((r for r in earlier if r["name"] == row["teacher_row"]), None)
    _require(teacher is not None, where, f"{row['teacher_row']!r} is not the name of an earlier row")
    _require(teacher["method"] != "reference", where, "a reference row trains another architecture, not a teacher")
    if teacher["seeds"] is not None:
        missing = sorted(set(row["seeds"] or []) - set(teacher["seeds"])) if row["seeds"] else ["(all)"]
        _require(not missing, where, f"row '{teacher['name']}' does not train seed(s) {missing} that this row needs")


def _training_spec(values, defaults: dict, where: str) -> dict:
    """The training settings with defaults filled in, checked by the rules `TrainConfig` itself uses."""
    from kdkeras.training import check_settings

    training = _fill(values, defaults, where)
    check_settings(training, f"{where}.")
    return training


def _valid_seeds(seeds) -> bool:
    return (
        isinstance(seeds, list) and bool(seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    )


def distills(row: dict) -> bool:
    """Whether a row learns from a teacher: every method but `scratch`, `reference` and those whose terms read no
    teacher (a multi-exit student teaching itself, `byot`)."""
    if row["method"] in ("scratch", "reference"):
        return False
    from kdkeras import terms as terms_lib
    from kdkeras.presets import PRESETS

    # A validated row carries its resolved terms; a row as written names a preset or lists its terms.
    specs = row.get("terms") or PRESETS.get(row["method"], {}).get("terms", [])
    return any(term.needs_teacher for term in terms_lib.get_list(specs))
