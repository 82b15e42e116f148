"""Declarative, resumable experiments: a YAML config in, the paper-style comparison table and plots out.

    python -m kdkeras.experiments experiments/fashion_mnist.yaml --budget quick
    python -m kdkeras.experiments experiments/fashion_mnist.yaml --budget full --rows scratch,tskd

The config holds plain data only (read with `yaml.safe_load`): the dataset, the teacher and the student
architectures, the shared training settings, two budgets (`quick`, `full`) and the rows, each a method with its
loss weights. The runner trains the teacher once (or loads it when the saved one was trained from the same
settings), then every row for every seed. Each finished row writes its own JSON; a row whose JSON exists and holds
the same settings is skipped, and a row interrupted mid-training resumes from its checkpoint folder (the run's
callbacks come from `kdkeras.training.make_callbacks`), so re-running the same command continues where it stopped.
The report step gathers the row JSONs into `RESULTS_DIR/NAME.md` / `.json` and draws two plots.

Row methods:
    scratch: the student trained on the labels alone.
    reference: another architecture (`model`, `options`) trained on the labels under the students' budget.
    a preset (`kd`, `kd_std`, `dkd`, `dist`, `fitnets`, `attention`, `tskd`; see `kdkeras.presets`): the student
        distilled with that term list; `temperature` and `pairs` override the preset's.
    distill: the student distilled with an explicit `terms` list (`kdkeras.terms` specs).
    Distillation rows also take `collaborative` and `teacher_lr`.
The teacher itself is always the table's first row.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time

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
    "student": None,
    "training": {},
    "budgets": None,
    "rows": None,
}
_MODEL_DEFAULTS = {"model": None, "options": {}}
_TEACHER_DEFAULTS = {**_MODEL_DEFAULTS, "seed": 0, "lr": None, "training": {}}
_TRAINING_DEFAULTS = {
    "batch_size": 128,
    "lr": 2e-3,
    "optimizer": "adam",
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "weight_decay": 0.0,
    "augment": True,
    "flip": None,
    "validation_fraction": 0.1,
}
_BUDGET_DEFAULTS = {"epochs": None, "teacher_epochs": None, "max_train_examples": None, "seeds": None}
_ROW_DEFAULTS = {
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
    # any row: train longer than the budget's epochs (e.g. 2 to check that scratch has converged)
    "epochs_multiplier": 1,
    # any row: run only these of the experiment's seeds (e.g. a costly check on one seed)
    "seeds": None,
}
_DISTILL_KEYS = ("terms", "temperature", "pairs", "collaborative", "teacher_lr")


# --------------------------------------------------------------------------------------------------- the config


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
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and (value > minimum if strict else value >= minimum)
    kind = "an integer" if integer else "a number"
    _require(ok, where, f"must be {kind} {'>' if strict else '>='} {minimum}, got {value!r}")
    return value


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


def _row_spec(values, index: int, path: str) -> dict:
    where = f"{path}: rows[{index}]"
    row = _fill(values, _ROW_DEFAULTS, where)
    name = row["name"]
    _require(
        isinstance(name, str) and name.replace("_", "").replace("-", "").isalnum(),
        f"{where}.name",
        f"must be a name of letters, digits, '-' or '_', got {name!r}",
    )
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
        given = [k for k in _DISTILL_KEYS if values.get(k, _ROW_DEFAULTS[k]) != _ROW_DEFAULTS[k]]
        _require(not given, where, f"{', '.join(given)} only apply to distillation rows")
        return {k: row[k] for k in ("name", "label", "method", "model", "options", "epochs_multiplier", "seeds")}
    from kdkeras import terms as terms_lib

    if row["method"] == "distill":
        _require(row["terms"] is not None, where, "method 'distill' needs a 'terms' list (or name a preset method)")
    else:
        _require(row["terms"] is None, f"{where}.terms", f"a preset method ({row['method']}) takes no term list")
    if row["temperature"] is not None:
        _number(row["temperature"], f"{where}.temperature", strict=True)
    if row["teacher_lr"] is not None:
        _number(row["teacher_lr"], f"{where}.teacher_lr", strict=True)
    if row["pairs"] is not None:
        row["pairs"] = _feature_pairs(row["pairs"], f"{where}.pairs")
    _require(isinstance(row["collaborative"], bool), f"{where}.collaborative", "must be true or false")
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

    config = _fill(read_mapping(path), _TOP_DEFAULTS, path)
    config["name"] = config["name"] or os.path.splitext(os.path.basename(path))[0]
    for key in ("teacher", "student", "budgets", "rows"):
        _require(config[key] is not None, path, f"missing required key '{key}'")
    config["teacher"] = _model_spec(config["teacher"], f"{path}: teacher", _TEACHER_DEFAULTS)
    _number(config["teacher"]["seed"], f"{path}: teacher.seed", integer=True)
    config["student"] = _model_spec(config["student"], f"{path}: student", _MODEL_DEFAULTS)
    config["training"] = _training_spec(config["training"], _TRAINING_DEFAULTS, f"{path}: training")
    # The teacher's own settings override the shared ones (a teacher often wants another optimizer and lr).
    config["teacher"]["training"] = _training_spec(
        config["teacher"]["training"], config["training"], f"{path}: teacher.training"
    )
    _require(
        _valid_seeds(config["seeds"]),
        f"{path}: seeds",
        f"must be a non-empty list of integers, got {config['seeds']!r}",
    )
    budgets = _fill(config["budgets"], dict.fromkeys(BUDGETS), f"{path}: budgets")
    for name in BUDGETS:
        _require(budgets[name] is not None, f"{path}: budgets", f"missing budget '{name}'")
        budget = budgets[name] = _fill(budgets[name], _BUDGET_DEFAULTS, f"{path}: budgets.{name}")
        for key in ("epochs", "teacher_epochs"):
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
    duplicates = sorted({n for n in names if names.count(n) > 1} | ({"teacher"} & set(names)))
    _require(not duplicates, f"{path}: rows", f"duplicate or reserved row name(s) {', '.join(duplicates)}")
    return config


def _training_spec(values, defaults: dict, where: str) -> dict:
    from kdkeras.training import OPTIMIZERS, SCHEDULES

    training = _fill(values, defaults, where)
    _number(training["batch_size"], f"{where}.batch_size", 1, integer=True)
    _number(training["lr"], f"{where}.lr", strict=True)
    _number(training["weight_decay"], f"{where}.weight_decay")
    _number(training["warmup_epochs"], f"{where}.warmup_epochs")
    _require(
        training["optimizer"] in OPTIMIZERS,
        f"{where}.optimizer",
        f"must be one of {', '.join(OPTIMIZERS)}, got {training['optimizer']!r}",
    )
    _require(
        training["schedule"] in SCHEDULES,
        f"{where}.schedule",
        f"must be one of {', '.join(SCHEDULES)}, got {training['schedule']!r}",
    )
    _require(isinstance(training["augment"], bool), f"{where}.augment", "must be true or false")
    _require(0 < training["validation_fraction"] <= 0.5, f"{where}.validation_fraction", "must be in (0, 0.5]")
    return training


def _valid_seeds(seeds) -> bool:
    return (
        isinstance(seeds, list) and bool(seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    )


# --------------------------------------------------------------------------------------------------- the runs


def _fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def machine() -> dict:
    """What the numbers were measured on."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpu_cores": os.cpu_count(),
        "processor": platform.machine(),
        "gpus": len(gpus),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def machine_text(info: dict) -> str:
    gpus = f"{info['gpus']} GPU(s)" if info["gpus"] else "no GPU"
    versions = f"TensorFlow {info['tensorflow']}, Keras {info['keras']}"
    return f"{info['cpu_cores']} CPU cores ({info['processor']}), {gpus}, {versions}"


class Experiment:
    """One experiment config under one budget: where its files go, and how each row runs.

    Args:
        config: a validated config (`load_config`).
        budget: `"quick"` or `"full"`.
        verbose: Keras progress output of the training runs (0, 1 or 2).
    """

    def __init__(self, config: dict, budget: str = "quick", verbose: int = 2):
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of: {', '.join(BUDGETS)}")
        self.config, self.budget, self.verbose = config, budget, verbose
        self.plan = config["budgets"][budget]
        self.seeds = self.plan["seeds"] or config["seeds"]
        self.rows_dir = os.path.join(config["results_dir"], config["name"], budget)
        self.models_dir = os.path.join(config["models_dir"], config["name"], budget)
        suffix = "" if budget == "full" else f"-{budget}"
        self.report_base = os.path.join(config["results_dir"], f"{config['name']}{suffix}")

    # -- paths and settings

    @property
    def teacher_path(self) -> str:
        return os.path.join(self.models_dir, "teacher.keras")

    def row_path(self, name: str, seed: int | None) -> str:
        """The result JSON of a row and seed; of the teacher with `seed=None`."""
        return os.path.join(self.rows_dir, f"{name}.json" if seed is None else f"{name}-seed{seed}.json")

    def _train_config(self, epochs: int, seed: int, run: str, training: dict, lr: float | None = None):
        from kdkeras.training import TrainConfig

        return TrainConfig(
            dataset=self.config["dataset"],
            data_dir=self.config["data_dir"],
            epochs=epochs,
            seed=seed,
            max_train_examples=self.plan["max_train_examples"],
            **{**training, "lr": lr or training["lr"]},
            # Beside the experiment's models (`models_dir`), not in the working directory's runs/.
            logdir=os.path.join(self.models_dir, "logs", run),
            backup_dir=os.path.join(self.models_dir, f"{run}.backup"),
            verbose=self.verbose,
        )

    def _teacher_config(self):
        teacher = self.config["teacher"]
        return self._train_config(
            self.plan["teacher_epochs"], teacher["seed"], "teacher", teacher["training"], teacher["lr"]
        )

    def _row_config(self, row: dict, seed: int):
        epochs = self.plan["epochs"] * row["epochs_multiplier"]
        return self._train_config(epochs, seed, f"{row['name']}-seed{seed}", self.config["training"])

    def _row_model(self, row: dict) -> dict:
        """The architecture a row trains: its own for a reference row, else the student with the row's options."""
        if row["method"] == "reference":
            return {"model": row["model"], "options": row["options"]}
        student = self.config["student"]
        return {"model": student["model"], "options": {**student["options"], **row["options"]}}

    def _cache_dir(self, row: dict) -> str | None:
        """Rows whose terms read only the teacher's logits share one teacher-output cache per seed."""
        from kdkeras import terms as terms_lib

        if terms_lib.needs_live_teacher(row["terms"], row["collaborative"]):
            return None
        return os.path.join(self.models_dir, "teacher_cache")

    def teacher_spec(self) -> dict:
        """Everything the teacher's weights depend on; a saved teacher is reused only when this matches."""
        teacher = self.config["teacher"]
        config = self._teacher_config()
        return {
            "model": teacher["model"],
            "options": teacher["options"],
            "train_config": _settings(config),
        }

    def row_spec(self, row: dict, seed: int) -> dict:
        """Everything a row's result depends on; a finished row is skipped only when this matches its JSON."""
        config = self._row_config(row, seed)
        # The label only names the row in the report: changing it does not make the result stale.
        spec = {
            "row": {k: v for k, v in row.items() if k != "label"},
            "model": self._row_model(row),
            "train_config": _settings(config),
            "results_version": RESULTS_VERSION,
        }
        if _distills(row):
            spec["teacher"] = _fingerprint(self.teacher_spec())
            # Cached logits are float16: results may differ from live ones in the last digits.
            spec["teacher_logits"] = "cache" if self._cache_dir(row) else "live"
        return spec

    # -- running

    def _log(self, text: str) -> None:
        print(f"[{self.config['name']}/{self.budget}] {text}", flush=True)

    def ensure_teacher(self) -> dict:
        """Trains and saves the teacher, unless a saved one was trained from the same settings.

        Returns:
            The teacher's record (spec, history, test accuracy, params, FLOPs, times).
        """
        from kdkeras import artifacts
        from kdkeras.models import build_model
        from kdkeras.training import remove_backup, set_seed, train_classifier

        spec = self.teacher_spec()
        record_path = self.row_path("teacher", None)
        record = _read_json(record_path)
        if record is not None and record.get("spec") == spec and os.path.exists(self.teacher_path):
            self._log(f"teacher: reusing {self.teacher_path} (test accuracy {record['test_accuracy']:.4f})")
            return record
        if record is not None:
            self._log("teacher: the saved one was trained from other settings; training it again")
        config = self._teacher_config()
        set_seed(config.seed)
        info = _dataset_info(config)
        model = build_model(spec["model"], info.input_shape, info.num_classes, **spec["options"])
        self._log(f"teacher: training {spec['model']} for {config.epochs} epoch(s)")
        record = self._train_and_record(model, config, spec, lambda: train_classifier(model, config)[:2])
        artifacts.save_model(model, self.teacher_path)
        artifacts.write_json(record_path, record)
        remove_backup(config)
        return record

    def run_row(self, row: dict, seed: int) -> tuple[dict, bool]:
        """Runs one row for one seed, unless its JSON already holds a result for the same settings.

        Returns:
            `(record, ran)`: the row's record, and whether it was run now (False: skipped).
        """
        from kdkeras import artifacts

        spec = self.row_spec(row, seed)
        path = self.row_path(row["name"], seed)
        record = _read_json(path)
        if record is not None and record.get("spec") == spec:
            self._log(f"{row['name']} seed {seed}: done already ({record['test_accuracy']:.4f}), skipped")
            return record, False
        model_path = os.path.join(self.models_dir, f"{row['name']}-seed{seed}.keras")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(artifacts.output_lock(model_path))
            except OSError as error:  # Another process runs this row: leave it to that one.
                self._log(f"{row['name']} seed {seed}: skipped, {error}")
                return None, False
            return self._run_row_locked(row, seed, spec, path, model_path), True

    def _run_row_locked(self, row: dict, seed: int, spec: dict, path: str, model_path: str) -> dict:
        from kdkeras import artifacts
        from kdkeras.models import build_model
        from kdkeras.training import distill, remove_backup, set_seed, train_classifier

        config = self._row_config(row, seed)
        set_seed(seed)
        info = _dataset_info(config)
        model = build_model(spec["model"]["model"], info.input_shape, info.num_classes, **spec["model"]["options"])
        self._log(f"{row['name']} seed {seed}: {row['method']} {model.name}, {config.epochs} epoch(s)")
        if not _distills(row):
            run = lambda: train_classifier(model, config)[:2]  # noqa: E731
        else:
            teacher = artifacts.load_model(self.teacher_path)  # A fresh copy: collaborative rows change it.

            def run():
                _, history, seconds, _ = distill(
                    teacher, model, config, teacher_lr=row["teacher_lr"], terms=row["terms"],
                    collaborative=row["collaborative"], teacher_cache=self._cache_dir(row),
                )  # fmt: skip
                return history, seconds

        record = self._train_and_record(model, config, spec, run)
        artifacts.save_model(model, model_path)
        artifacts.write_json(path, record)
        remove_backup(config)  # Only now: a kill during the saves above resumes from the finished training.
        self._log(
            f"{row['name']} seed {seed}: test accuracy {record['test_accuracy']:.4f}, {record['train_seconds']:.0f} s"
        )
        return record

    def _train_and_record(self, model, config, spec: dict, run) -> dict:
        from kdkeras.data import load_dataset
        from kdkeras.profiling import count_flops, count_params
        from kdkeras.training import evaluate_classifier

        cpu_start = time.process_time()
        history, seconds = run()
        cpu_seconds = time.process_time() - cpu_start
        test, info = load_dataset(config.dataset, "test", 256, data_dir=config.data_dir, seed=config.seed)
        result = evaluate_classifier(model, test, info)
        return {
            "spec": spec,
            "model": model.name,
            "params": count_params(model),
            "flops": count_flops(model),
            "test_accuracy": result["accuracy"],
            "test_loss": result["loss"],
            "test_examples": result["num_examples"],
            "history": {key: [float(v) for v in values] for key, values in history.items()},
            "train_seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "machine": machine(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def run(self, rows: list[str] | None = None) -> None:
        """The teacher, then every selected row for every seed; finished rows are skipped.

        Args:
            rows: names of the rows to run (default all); `"teacher"` alone trains only the teacher.
        """
        selected = self.select(rows)
        if not rows or "teacher" in rows or any(_distills(row) for row in selected):
            self.ensure_teacher()
        for seed in self.seeds:
            for row in selected:
                if seed in self.row_seeds(row):
                    self.run_row(row, seed)

    def row_seeds(self, row: dict) -> list[int]:
        """The seeds a row runs: the experiment's, or the subset the row names."""
        return [s for s in self.seeds if row.get("seeds") is None or s in row["seeds"]]

    def select(self, names: list[str] | None) -> list[dict]:
        if not names:
            return self.config["rows"]
        known = {row["name"]: row for row in self.config["rows"]}
        unknown = [n for n in names if n not in known and n != "teacher"]
        if unknown:
            raise ValueError(f"unknown row(s) {', '.join(unknown)}; the config has: teacher, {', '.join(known)}")
        return [known[n] for n in names if n in known]

    # -- the report

    def collect(self) -> tuple[dict | None, dict[str, list[dict]]]:
        """The teacher's record and, per row, the records of the seeds finished with the current settings."""
        teacher = _read_json(self.row_path("teacher", None))
        if teacher is not None and teacher.get("spec") != self.teacher_spec():
            teacher = None
        results = {}
        for row in self.config["rows"]:
            records = []
            for seed in self.row_seeds(row):
                record = _read_json(self.row_path(row["name"], seed))
                if record is not None and record.get("spec") == self.row_spec(row, seed):
                    records.append(record)
            results[row["name"]] = records
        return teacher, results

    def report(self, command: str) -> dict:
        """Writes `NAME.md`, `NAME.json` and the two PNG plots from the finished rows.

        Args:
            command: the command line to print above the table.

        Returns:
            The report as written to JSON.
        """
        from kdkeras import artifacts

        teacher, results = self.collect()
        rows = []
        if teacher is not None:
            rows.append(_summary("teacher", f"teacher ({teacher['model']})", "teacher", [teacher]))
        for row in self.config["rows"]:
            if results[row["name"]]:
                rows.append(_summary(row["name"], row["label"], row["method"], results[row["name"]]))
        # Each row is compared with the scratch row of the same architecture, seed by seed (a paired design: the
        # rows of one seed share the initial weights' seed, the data order and the augmentation draws).
        scratch_rows = [r for r in self.config["rows"] if r["method"] == "scratch"]
        for row, config_row in zip(rows[1 if teacher else 0 :], [r for r in self.config["rows"] if results[r["name"]]],
                                   strict=True):  # fmt: skip
            baseline = next((b for b in scratch_rows if self._row_model(b) == self._row_model(config_row)), None)
            if baseline is config_row:  # A baseline is not compared with itself.
                baseline = None
            row.update(paired_delta(results[config_row["name"]], results[baseline["name"]] if baseline else []))
            row["baseline"] = baseline["name"] if baseline else None
        if teacher is not None:
            rows[0].update(paired_delta([], []), baseline=None)
        machines = {machine_text(r["machine"]) for r in [teacher, *sum(results.values(), [])] if r}
        report = {
            "name": self.config["name"],
            "budget": self.budget,
            "command": command,
            "machine": sorted(machines),
            "dataset": self.config["dataset"],
            "budget_settings": self.plan,
            "training": self.config["training"],
            "rows": rows,
            "missing": [r["name"] for r in self.config["rows"] if len(results[r["name"]]) < len(self.row_seeds(r))],
        }
        artifacts.write_json(f"{self.report_base}.json", report)
        artifacts.write_text(
            f"{self.report_base}.md", _markdown(report, self.config, os.path.basename(self.report_base))
        )
        report["table"] = _table(rows)
        _plot(rows, teacher, results, self.config, self.report_base)
        return report


def paired_delta(records: list[dict], baseline: list[dict], confidence: float = 0.95) -> dict:
    """Accuracy differences `records − baseline`, paired by seed, with a t-interval for their mean.

    Returns:
        `{"delta_per_seed": {seed: Δ}, "delta_mean": mean Δ or None, "delta_ci95": [low, high] or None}`; the
        interval needs at least 2 paired seeds (Student's t with n − 1 degrees of freedom).
    """
    import numpy as np
    from scipy import stats

    base = {r["spec"]["train_config"]["seed"]: r["test_accuracy"] for r in baseline}
    per_seed = {
        r["spec"]["train_config"]["seed"]: r["test_accuracy"] - base[r["spec"]["train_config"]["seed"]]
        for r in records
        if r["spec"]["train_config"]["seed"] in base
    }
    deltas = np.array(list(per_seed.values()))
    interval = None
    if len(deltas) >= 2:
        low, high = stats.t.interval(confidence, len(deltas) - 1, loc=deltas.mean(), scale=stats.sem(deltas))
        interval = [float(low), float(high)] if np.isfinite(low) else [float(deltas.mean())] * 2
    return {
        "delta_per_seed": {str(k): float(v) for k, v in sorted(per_seed.items())},
        "delta_mean": float(deltas.mean()) if len(deltas) else None,
        "delta_ci95": interval,
    }


def _distills(row: dict) -> bool:
    return row["method"] not in ("scratch", "reference")


def _settings(config) -> dict:
    """The parts of a `TrainConfig` that change the result (not where logs and checkpoints go), leaving out those
    at their default: a field added to `TrainConfig` later does not make every finished row stale."""
    from kdkeras.training import result_settings

    defaults = {field.name: field.default for field in dataclasses.fields(config)}
    return {k: v for k, v in result_settings(config).items() if k == "seed" or v != defaults[k]}


def _dataset_info(config):
    from kdkeras.data import load_dataset

    return load_dataset(config.dataset, "test", config.batch_size, data_dir=config.data_dir)[1]


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable result file ({error}); delete it to run that row again") from None


def _summary(name: str, label: str, method: str, records: list[dict]) -> dict:
    import numpy as np

    accuracies = np.array([r["test_accuracy"] for r in records])
    return {
        "name": name,
        "label": label,
        "method": method,
        "model": records[0]["model"],
        "params": records[0]["params"],
        "flops": records[0]["flops"],
        "seeds": [r["spec"]["train_config"]["seed"] for r in records],
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std(ddof=1)) if len(records) > 1 else None,
        "accuracies": accuracies.tolist(),
        "train_seconds_mean": float(np.mean([r["train_seconds"] for r in records])),
        "cpu_seconds_mean": float(np.mean([r["cpu_seconds"] for r in records])),
        "epochs": len(records[0]["history"].get("loss", [])),
        "machine": records[0]["machine"],
    }


def _markdown(report: dict, config: dict, title: str) -> str:
    lines = [
        f"# {title}: {config['description'] or config['name']}".rstrip(),
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {'; '.join(report['machine']) or 'n/a'}  ",
        f"Dataset: {report['dataset']}; budget `{report['budget']}`: {json.dumps(report['budget_settings'])}; "
        f"training: {json.dumps(report['training'])}",
        "",
        _table(report["rows"]),
        "",
        "Test accuracy on the full test split; mean ± sample standard deviation over the seeds (± omitted for one "
        "seed). Train time is the wall time of `fit` (training and validation, no test), mean over seeds; CPU time "
        "is the process' CPU seconds over the same span (all threads), which other jobs on the machine inflate less. "
        "Δ vs scratch: the row's accuracy minus that of the scratch row with the same student, seed by seed (same "
        "initial-weight seed, data order and augmentation draws); its mean, a 95 % Student-t interval over the "
        "paired seeds (2 or more), and each seed's Δ.",
    ]
    if report["missing"]:
        lines.append(f"Not finished for every seed yet: {', '.join(report['missing'])}.")
    lines += [
        "",
        f"![accuracy vs parameters and FLOPs]({title}-accuracy_vs_params.png)",
        "",
        f"![difference to scratch]({title}-delta.png)",
        "",
        f"![validation accuracy]({title}-val_curves.png)",
        "",
    ]
    return "\n".join(lines)


def _table(rows: list[dict]) -> str:
    """The comparison table in Markdown."""
    lines = [
        "| method | model | params | MFLOPs | epochs | test accuracy | seeds | Δ vs scratch (points) | 95 % CI "
        "| Δ per seed | train time (s) | CPU time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for row in rows:
        spread = f" ± {row['accuracy_std']:.4f}" if row["accuracy_std"] is not None else ""
        delta = "" if row.get("delta_mean") is None else f"{100 * row['delta_mean']:+.2f}"
        interval = (
            "" if not row.get("delta_ci95") else "[{:+.2f}, {:+.2f}]".format(*(100 * v for v in row["delta_ci95"]))
        )
        per_seed = " ".join(f"{100 * v:+.2f}" for v in row.get("delta_per_seed", {}).values())
        lines.append(
            f"| {row['label']} | {row['model']} | {row['params']:,} | {row['flops'] / 1e6:.1f} | {row['epochs']} | "
            f"{row['accuracy_mean']:.4f}{spread} | {len(row['seeds'])} | {delta} | {interval} | {per_seed} | "
            f"{row['train_seconds_mean']:.0f} | {row['cpu_seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict], teacher: dict | None, results: dict, config: dict, base: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display needed.
    import matplotlib.pyplot as plt

    from kdkeras import artifacts

    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axes, key, label in ((panels[0], "params", "parameters"), (panels[1], "flops", "FLOPs per image")):
        for row in rows:
            # Students share one size: a legend names the points instead of labels that would overlap.
            marker = "s" if row["method"] in ("teacher", "reference") else "o"
            axes.errorbar(
                row[key], row["accuracy_mean"], yerr=row["accuracy_std"] or 0, fmt=marker, capsize=3,
                label=f"{row['label']} ({row['accuracy_mean']:.4f})",
            )  # fmt: skip
        axes.margins(x=0.25, y=0.15)
        axes.set_xscale("log")
        axes.set_xlabel(f"{label} (log scale)")
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("test accuracy (mean ± std over seeds)")
    panels[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(f"{config['name']}: accuracy vs. size")
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}-accuracy_vs_params.png")
    plt.close(figure)

    compared = [r for r in rows if r.get("delta_mean") is not None and r["method"] != "scratch"]
    figure, axes = plt.subplots(figsize=(7, 0.5 * len(compared) + 1.5))
    for i, row in enumerate(compared):
        mean = row["delta_mean"]
        low, high = row["delta_ci95"] or (mean, mean)
        axes.errorbar(100 * mean, i, xerr=[[100 * (mean - low)], [100 * (high - mean)]], fmt="o", capsize=4)
        seeds = [100 * v for v in row["delta_per_seed"].values()]
        axes.scatter(seeds, [i] * len(seeds), marker="x", color="gray", zorder=3)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(
        range(len(compared)), [f"{r['label']} (n={len(r['delta_per_seed'])})" for r in compared], fontsize=8
    )
    axes.set_xlabel("Δ test accuracy vs. the same student from scratch (points): paired mean, 95 % CI, seeds (x)")
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}-delta.png")
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    curves = [("teacher", [teacher] if teacher else [])] + [(r["label"], results[r["name"]]) for r in config["rows"]]
    for label, records in curves:
        if records and "val_accuracy" in records[0]["history"]:
            values = records[0]["history"]["val_accuracy"]  # The first seed's curve.
            axes.plot(range(1, len(values) + 1), values, marker=".", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (student; teacher for 'teacher')")
    axes.set_title(f"{config['name']}: validation accuracy per epoch (first seed)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}-val_curves.png")
    plt.close(figure)


# --------------------------------------------------------------------------------------------------- entry point


def run_experiment(args) -> int:
    """`kdkeras experiment` / `python -m kdkeras.experiments`: run (or only report) an experiment config."""
    config = load_config(args.path)
    experiment = Experiment(config, args.budget, verbose=args.verbose)
    rows = [n.strip() for n in args.rows.split(",") if n.strip()] if args.rows else None
    if args.seeds:
        experiment.seeds = args.seeds
    experiment.select(rows)  # Fails on an unknown row name before anything trains.
    if not args.report_only:
        experiment.run(rows)
    command = f"python -m kdkeras.experiments {args.path} --budget {args.budget}"
    report = experiment.report(command)
    print(f"\n{report['table']}\n\nreport: {experiment.report_base}.md")
    return 0


if __name__ == "__main__":
    from kdkeras import cli

    sys.exit(cli.main(["experiment", *sys.argv[1:]], as_program=True))
