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
    distill: the student trained by a `Distiller` from the teacher (`temperature`, `alpha`, `beta`, `gamma`,
        `feature_pairs`, `feature_loss`, `collaborative`, `teacher_lr`).
The teacher itself is always the table's first row.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time

BUDGETS = ("quick", "full")
METHODS = ("scratch", "reference", "distill")

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
_TEACHER_DEFAULTS = {**_MODEL_DEFAULTS, "seed": 0, "lr": None}
_TRAINING_DEFAULTS = {
    "batch_size": 128,
    "lr": 1e-3,
    "optimizer": "adam",
    "schedule": "cosine",
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
    # distill
    "temperature": 4.0,
    "alpha": 0.5,
    "beta": 0.5,
    "gamma": None,
    "feature_pairs": [],
    "feature_loss": "hint",
    "collaborative": False,
    "teacher_lr": None,
}
_DISTILL_KEYS = (
    "temperature",
    "alpha",
    "beta",
    "gamma",
    "feature_pairs",
    "feature_loss",
    "collaborative",
    "teacher_lr",
)


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
    _require(row["method"] in METHODS, f"{where}.method", f"must be one of {', '.join(METHODS)}, got {row['method']!r}")
    row["label"] = row["label"] or name
    if row["method"] == "reference":
        row.update(_model_spec({"model": row["model"], "options": row["options"]}, where, _MODEL_DEFAULTS))
    else:
        _require(row["model"] is None, f"{where}.model", "only a 'reference' row names its own model")
    if row["method"] != "distill":
        given = [k for k in _DISTILL_KEYS if values.get(k, _ROW_DEFAULTS[k]) != _ROW_DEFAULTS[k]]
        _require(not given, where, f"{', '.join(given)} only apply to method 'distill'")
        return {k: row[k] for k in ("name", "label", "method", "model", "options")}
    _number(row["temperature"], f"{where}.temperature", strict=True)
    for key in ("alpha", "beta"):
        _number(row[key], f"{where}.{key}")
    if row["gamma"] is not None:
        _number(row["gamma"], f"{where}.gamma")
    if row["teacher_lr"] is not None:
        _number(row["teacher_lr"], f"{where}.teacher_lr", strict=True)
    row["feature_pairs"] = _feature_pairs(row["feature_pairs"], f"{where}.feature_pairs")
    _require(
        row["feature_loss"] in ("hint", "attention"),
        f"{where}.feature_loss",
        f"must be 'hint' or 'attention', got {row['feature_loss']!r}",
    )
    _require(isinstance(row["collaborative"], bool), f"{where}.collaborative", "must be true or false")
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
    from kdkeras.commands import read_mapping
    from kdkeras.training import OPTIMIZERS, SCHEDULES

    config = _fill(read_mapping(path), _TOP_DEFAULTS, path)
    config["name"] = config["name"] or os.path.splitext(os.path.basename(path))[0]
    for key in ("teacher", "student", "budgets", "rows"):
        _require(config[key] is not None, path, f"missing required key '{key}'")
    config["teacher"] = _model_spec(config["teacher"], f"{path}: teacher", _TEACHER_DEFAULTS)
    _number(config["teacher"]["seed"], f"{path}: teacher.seed", integer=True)
    config["student"] = _model_spec(config["student"], f"{path}: student", _MODEL_DEFAULTS)
    training = config["training"] = _fill(config["training"], _TRAINING_DEFAULTS, f"{path}: training")
    _number(training["batch_size"], f"{path}: training.batch_size", 1, integer=True)
    _number(training["lr"], f"{path}: training.lr", strict=True)
    _number(training["weight_decay"], f"{path}: training.weight_decay")
    _require(
        training["optimizer"] in OPTIMIZERS,
        f"{path}: training.optimizer",
        f"must be one of {', '.join(OPTIMIZERS)}, got {training['optimizer']!r}",
    )
    _require(
        training["schedule"] in SCHEDULES,
        f"{path}: training.schedule",
        f"must be one of {', '.join(SCHEDULES)}, got {training['schedule']!r}",
    )
    _require(isinstance(training["augment"], bool), f"{path}: training.augment", "must be true or false")
    _require(0 < training["validation_fraction"] <= 0.5, f"{path}: training.validation_fraction", "must be in (0, 0.5]")
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

    def _train_config(self, epochs: int, seed: int, run: str, lr: float | None = None):
        from kdkeras.training import TrainConfig

        training = self.config["training"]
        return TrainConfig(
            dataset=self.config["dataset"],
            data_dir=self.config["data_dir"],
            epochs=epochs,
            seed=seed,
            max_train_examples=self.plan["max_train_examples"],
            batch_size=training["batch_size"],
            lr=lr or training["lr"],
            optimizer=training["optimizer"],
            schedule=training["schedule"],
            weight_decay=training["weight_decay"],
            augment=training["augment"],
            flip=training["flip"],
            validation_fraction=training["validation_fraction"],
            logdir=os.path.join("runs", "experiments", self.config["name"], self.budget, run),
            backup_dir=os.path.join(self.models_dir, f"{run}.backup"),
            verbose=self.verbose,
        )

    def _teacher_config(self):
        teacher = self.config["teacher"]
        return self._train_config(self.plan["teacher_epochs"], teacher["seed"], "teacher", teacher["lr"])

    def _row_config(self, row: dict, seed: int):
        return self._train_config(self.plan["epochs"], seed, f"{row['name']}-seed{seed}")

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
        model = (
            {"model": row["model"], "options": row["options"]}
            if row["method"] == "reference"
            else self.config["student"]
        )
        # The label only names the row in the report: changing it does not make the result stale.
        spec = {
            "row": {k: v for k, v in row.items() if k != "label"},
            "model": model,
            "train_config": _settings(config),
        }
        if row["method"] == "distill":
            spec["teacher"] = _fingerprint(self.teacher_spec())
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
        from kdkeras.training import set_seed, train_classifier

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
        return record

    def run_row(self, row: dict, seed: int) -> tuple[dict, bool]:
        """Runs one row for one seed, unless its JSON already holds a result for the same settings.

        Returns:
            `(record, ran)`: the row's record, and whether it was run now (False: skipped).
        """
        from kdkeras import artifacts
        from kdkeras.commands import default_feature_pairs
        from kdkeras.models import build_model
        from kdkeras.training import distill, set_seed, train_classifier

        spec = self.row_spec(row, seed)
        path = self.row_path(row["name"], seed)
        record = _read_json(path)
        if record is not None and record.get("spec") == spec:
            self._log(f"{row['name']} seed {seed}: done already ({record['test_accuracy']:.4f}), skipped")
            return record, False
        config = self._row_config(row, seed)
        set_seed(seed)
        info = _dataset_info(config)
        model = build_model(spec["model"]["model"], info.input_shape, info.num_classes, **spec["model"]["options"])
        self._log(f"{row['name']} seed {seed}: {row['method']} {model.name}, {config.epochs} epoch(s)")
        if row["method"] != "distill":
            run = lambda: train_classifier(model, config)[:2]  # noqa: E731
        else:
            teacher = artifacts.load_model(self.teacher_path)  # A fresh copy: collaborative rows change it.
            options = {k: row[k] for k in _DISTILL_KEYS if k != "teacher_lr"}
            pairs = options["feature_pairs"]
            options["feature_pairs"] = default_feature_pairs(teacher, model) if pairs == "auto" else pairs

            def run():
                _, history, seconds, _ = distill(teacher, model, config, teacher_lr=row["teacher_lr"], **options)
                return history, seconds

        record = self._train_and_record(model, config, spec, run)
        artifacts.save_model(model, os.path.join(self.models_dir, f"{row['name']}-seed{seed}.keras"))
        artifacts.write_json(path, record)
        self._log(
            f"{row['name']} seed {seed}: test accuracy {record['test_accuracy']:.4f}, {record['train_seconds']:.0f} s"
        )
        return record, True

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
        self.ensure_teacher()
        for seed in self.seeds:
            for row in selected:
                self.run_row(row, seed)

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
            for seed in self.seeds:
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
        scratch = next((r for r in rows if r["method"] == "scratch"), None)
        for row in rows:
            row["delta_vs_scratch"] = None if scratch is None else row["accuracy_mean"] - scratch["accuracy_mean"]
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
            "missing": [r["name"] for r in self.config["rows"] if len(results[r["name"]]) < len(self.seeds)],
        }
        artifacts.write_json(f"{self.report_base}.json", report)
        artifacts.write_text(
            f"{self.report_base}.md", _markdown(report, self.config, os.path.basename(self.report_base))
        )
        report["table"] = _table(rows)
        _plot(rows, teacher, results, self.config, self.report_base)
        return report


def _settings(config) -> dict:
    """The parts of a `TrainConfig` that change the result (not where logs and checkpoints go)."""
    values = dataclasses.asdict(config)
    for key in ("logdir", "backup_dir", "verbose", "checkpoint_steps"):
        values.pop(key)
    return values


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
        "is the process' CPU seconds over the same span (all threads), which other jobs on the machine inflate less.",
    ]
    if report["missing"]:
        lines.append(f"Not finished for every seed yet: {', '.join(report['missing'])}.")
    lines += [
        "",
        f"![accuracy vs parameters]({title}-accuracy_vs_params.png)",
        "",
        f"![validation accuracy]({title}-val_curves.png)",
        "",
    ]
    return "\n".join(lines)


def _table(rows: list[dict]) -> str:
    """The comparison table in Markdown."""
    lines = [
        "| method | model | params | MFLOPs | epochs | test accuracy | seeds | Δ vs scratch (points) "
        "| train time (s) | CPU time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        spread = f" ± {row['accuracy_std']:.4f}" if row["accuracy_std"] is not None else ""
        delta = "" if row["delta_vs_scratch"] is None else f"{100 * row['delta_vs_scratch']:+.2f}"
        lines.append(
            f"| {row['label']} | {row['model']} | {row['params']:,} | {row['flops'] / 1e6:.1f} | {row['epochs']} | "
            f"{row['accuracy_mean']:.4f}{spread} | {len(row['seeds'])} | {delta} | {row['train_seconds_mean']:.0f} | "
            f"{row['cpu_seconds_mean']:.0f} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict], teacher: dict | None, results: dict, config: dict, base: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display needed.
    import matplotlib.pyplot as plt

    from kdkeras import artifacts

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for row in rows:
        # Students share one size: a legend names the points instead of labels that would overlap.
        marker = "s" if row["method"] in ("teacher", "reference") else "o"
        axes.errorbar(
            row["params"], row["accuracy_mean"], yerr=row["accuracy_std"] or 0, fmt=marker, capsize=3,
            label=f"{row['label']} ({row['accuracy_mean']:.4f})",
        )  # fmt: skip
    axes.margins(x=0.25, y=0.15)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    axes.set_xscale("log")
    axes.set_xlabel("parameters (log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{config['name']}: accuracy vs. size")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}-accuracy_vs_params.png")
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

    sys.exit(cli.main(["experiment", *sys.argv[1:]]))
