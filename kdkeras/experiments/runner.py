"""Runs an experiment's teacher and rows: each row × seed trains once, writes its JSON, and is skipped (or resumed
from its checkpoint) when the same command runs again."""

from __future__ import annotations

import contextlib
import os
import time

from kdkeras.experiments.config import BUDGETS, RESULTS_VERSION, ROW_DEFAULTS, UNLABELED_IMAGES, distills
from kdkeras.experiments.records import fingerprint, read_json, recorded_spec, row_settings, train_settings
from kdkeras.reporting import machine


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
        if config["budgets"][budget] is None:
            defined = [name for name, plan in config["budgets"].items() if plan is not None]
            raise ValueError(f"{config['name']}: the config has no '{budget}' budget (it has: {', '.join(defined)})")
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
        """The experiment's teacher model."""
        return self.teacher_file()

    @staticmethod
    def teacher_run(name: str | None = None) -> str:
        """The file stem of a teacher's model, record and checkpoints: `teacher` for the experiment's teacher,
        `teacher-NAME` for one of its named `teachers`."""
        return "teacher" if name is None else f"teacher-{name}"

    def teacher_names(self) -> list:
        """Every teacher of the config: `None` for the experiment's, then the named ones in config order."""
        return [None, *self.config["teachers"]]

    def teacher_file(self, name: str | None = None) -> str:
        """The saved model of the experiment's teacher (`name=None`) or of a named one (its `file`, if it has one)."""
        return self._teacher(name)["file"] or os.path.join(self.models_dir, f"{self.teacher_run(name)}.keras")

    def row_path(self, name: str, seed: int | None) -> str:
        """The result JSON of a row and seed; of the teacher with `seed=None`."""
        return os.path.join(self.rows_dir, f"{name}.json" if seed is None else f"{name}-seed{seed}.json")

    def model_path(self, name: str, seed: int) -> str:
        """The trained model of a row and seed."""
        return os.path.join(self.models_dir, f"{name}-seed{seed}.keras")

    def _train_config(self, epochs: int, seed: int, run: str, training: dict, lr: float | None = None, **images):
        from kdkeras.training import TrainConfig

        return TrainConfig(
            dataset=self.config["dataset"],
            data_dir=self.config["data_dir"],
            epochs=epochs,
            seed=seed,
            max_train_examples=self.plan["max_train_examples"],
            **images,  # A row's images without labels: `unlabeled_examples`, `mixed_fraction`.
            **{**training, "lr": lr or training["lr"]},
            # Beside the experiment's models (`models_dir`), not in the working directory's runs/.
            logdir=os.path.join(self.models_dir, "logs", run),
            backup_dir=os.path.join(self.models_dir, f"{run}.backup"),
            verbose=self.verbose,
        )

    def _teacher(self, name: str | None) -> dict:
        return self.config["teacher"] if name is None else self.config["teachers"][name]

    def _teacher_config(self, name: str | None = None):
        teacher = self._teacher(name)
        return self._train_config(
            self.plan["teacher_epochs"] or 1,
            teacher["seed"],
            self.teacher_run(name),
            teacher["training"],
            teacher["lr"],
        )

    def _row_config(self, row: dict, seed: int):
        epochs = self.plan["epochs"] * row["epochs_multiplier"]
        return self._train_config(epochs, seed, f"{row['name']}-seed{seed}", self.config["training"],
                                  **{key: row.get(key, ROW_DEFAULTS[key]) for key in UNLABELED_IMAGES})  # fmt: skip

    def row_model(self, row: dict) -> dict:
        """The architecture a row trains: its own for a reference row, else the student with the row's options."""
        if row["method"] == "reference":
            return {"model": row["model"], "options": row["options"]}
        student = self.config["student"]
        return {"model": student["model"], "options": {**student["options"], **row["options"]}}

    def _cache_dir(self, row: dict) -> str | None:
        """Rows whose terms read only the teacher's logits share one teacher-output cache per teacher and seed (its
        fingerprint covers the teacher's weights, so one folder holds them all), unless the row sets
        `teacher_cache: false`."""
        from kdkeras import terms as terms_lib

        if not row["teacher_cache"] or terms_lib.needs_live_teacher(row["terms"], row["collaborative"]):
            return None
        return os.path.join(self.models_dir, "teacher_cache")

    def teacher_spec(self, name: str | None = None) -> dict:
        """Everything a teacher's weights depend on; a saved teacher is reused only when this matches."""
        teacher = self._teacher(name)
        config = self._teacher_config(name)
        if teacher["file"]:  # A trained model of your own: its weights are what it is.
            return {"file": teacher["file"], "weights": _file_digest(teacher["file"]), "train_config": {"seed": 0}}
        return {
            "model": teacher["model"],
            "options": teacher["options"],
            "train_config": train_settings(config),
        }

    def row_spec(self, row: dict, seed: int) -> dict:
        """Everything a row's result depends on; a finished row is skipped only when this matches its JSON."""
        config = self._row_config(row, seed)
        spec = {
            "row": row_settings(row),
            "model": self.row_model(row),
            "train_config": train_settings(config),
            "results_version": RESULTS_VERSION,
        }
        if distills(row):
            teacher_row = self._teacher_row(row)
            # A teacher assistant's spec includes its teacher row's: retraining that row makes this one stale.
            teacher = self.teacher_spec(row.get("teacher")) if teacher_row is None else self.row_spec(teacher_row, seed)
            spec["teacher"] = fingerprint(teacher)
            # Cached logits are float16: results may differ from live ones in the last digits.
            spec["teacher_logits"] = "cache" if self._cache_dir(row) else "live"
        return spec

    def _teachers_needed(self, row: dict) -> set:
        """The teachers (`None`: the experiment's; else a name in `teachers`) that `row`, or the teacher row it learns
        from, distills from."""
        if not distills(row):
            return set()
        teacher_row = self._teacher_row(row)
        return {row.get("teacher")} if teacher_row is None else self._teachers_needed(teacher_row)

    def _teacher_row(self, row: dict) -> dict | None:
        """The earlier row whose model (same seed) teaches `row`, or None when a teacher (the experiment's or a named
        one) does."""
        name = row.get("teacher_row")
        return None if name is None else next(r for r in self.config["rows"] if r["name"] == name)

    # -- running

    def _log(self, text: str) -> None:
        print(f"[{self.config['name']}/{self.budget}] {text}", flush=True)

    def ensure_teacher(self, name: str | None = None) -> dict:
        """Trains and saves a teacher, unless a saved one was trained from the same settings.

        Args:
            name: one of the config's `teachers`; `None` (default) for the experiment's `teacher`.

        Returns:
            The teacher's record (spec, history, test accuracy, params, FLOPs, times).
        """
        from kdkeras import artifacts
        from kdkeras.models import build_model
        from kdkeras.training import remove_backup, run_training, set_seed

        run, path = self.teacher_run(name), self.teacher_file(name)
        spec = self.teacher_spec(name)
        record_path = self.row_path(run, None)
        record = read_json(record_path)
        if self._teacher(name)["file"]:
            return self._file_teacher(run, path, spec, record_path, record)
        if record is not None and record.get("spec") == spec and os.path.exists(path):
            self._log(f"{run}: reusing {path} (test accuracy {record['test_accuracy']:.4f})")
            if "weights" not in record:  # Recorded before teachers were identified: add the saved one's digest.
                record["weights"] = artifacts.weights_digest(artifacts.load_model(path))
                artifacts.write_json(record_path, record)
            return record
        if record is not None and record.get("spec") == spec:
            self._log(f"{run}: {path} is missing; training it again (same settings)")
        elif record is not None:
            self._log(f"{run}: the saved one was trained from other settings; training it again")
        config = self._teacher_config(name)
        set_seed(config.seed)
        info = _dataset_info(config)
        model = build_model(spec["model"], info.input_shape, info.num_classes, **spec["options"])
        self._log(f"{run}: training {spec['model']} for {config.epochs} epoch(s)")
        record = self._record(spec, run_training(model, config))
        record["weights"] = artifacts.weights_digest(model)
        artifacts.save_model(model, path)
        artifacts.write_json(record_path, record)
        remove_backup(config)
        return record

    def _file_teacher(self, run: str, path: str, spec: dict, record_path: str, record: dict | None) -> dict:
        """The record of a teacher given as a file: evaluated on the test split once, then reused."""
        from kdkeras import artifacts
        from kdkeras.evaluation import test_record

        if record is not None and record.get("spec") == spec:
            self._log(f"{run}: {path} (test accuracy {record['test_accuracy']:.4f})")
            return record
        self._log(f"{run}: evaluating {path}")
        result = {**test_record(artifacts.load_model(path), self._teacher_config()), "history": {},
                  "train_seconds": None, "cpu_seconds": None}  # fmt: skip
        record = {"spec": spec, **result, "weights": spec["weights"], "machine": machine(),
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        artifacts.write_json(record_path, record)
        return record

    def run_row(self, row: dict, seed: int) -> tuple[dict, bool]:
        """Runs one row for one seed, unless its JSON already holds a result for the same settings.

        Returns:
            `(record, ran)`: the row's record, and whether it was run now (False: skipped).
        """
        from kdkeras import artifacts

        spec = self.row_spec(row, seed)
        path = self.row_path(row["name"], seed)
        record = read_json(path)
        model_path = self.model_path(row["name"], seed)
        if record is not None and recorded_spec(record) == spec:
            self._log(f"{row['name']} seed {seed}: done already ({record['test_accuracy']:.4f}), skipped")
            if "test_predictions" not in record and os.path.exists(model_path):
                record = self._add_predictions(row, seed, record, path, model_path)
            return record, False
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
        from kdkeras.training import remove_backup, run_training, set_seed

        # Before seeding: a teacher row that is not finished yet trains first, with its own seed.
        teacher_path = self._teacher_path(row, seed) if distills(row) else None
        config = self._row_config(row, seed)
        set_seed(seed)
        info = _dataset_info(config)
        model = build_model(spec["model"]["model"], info.input_shape, info.num_classes, **spec["model"]["options"])
        self._log(f"{row['name']} seed {seed}: {row['method']} {model.name}, {config.epochs} epoch(s)")
        teacher_weights = None
        if teacher_path is None:
            result = run_training(model, config)
        else:
            teacher = artifacts.load_model(teacher_path)  # A fresh copy: collaborative rows change it.
            # Which training of the teacher this row learned from (before a collaborative row changes it): a
            # teacher retrained with the same settings is not bit-identical, and the report says so.
            teacher_weights = artifacts.weights_digest(teacher)
            result = run_training(
                model, config, teacher, terms=row["terms"], collaborative=row["collaborative"],
                teacher_lr=row["teacher_lr"], teacher_mimicry=row["teacher_mimicry"],
                teacher_cache=self._cache_dir(row),
            )  # fmt: skip
        record = self._record(spec, result)
        if teacher_weights is not None:
            record["teacher_weights"] = teacher_weights
        artifacts.save_model(model, model_path)
        artifacts.write_json(path, record)
        remove_backup(config)  # Only now: a kill during the saves above resumes from the finished training.
        self._log(
            f"{row['name']} seed {seed}: test accuracy {record['test_accuracy']:.4f}, {record['train_seconds']:.0f} s"
        )
        return record

    def _add_predictions(self, row: dict, seed: int, record: dict, path: str, model_path: str) -> dict:
        """Adds the test predictions to a row recorded before they were kept, from its saved model, so that the
        report can compare it example by example. Only when the saved model scores exactly the recorded accuracy:
        otherwise it is not the model the record describes."""
        from kdkeras import artifacts
        from kdkeras.evaluation import predict_test_split

        result = predict_test_split(artifacts.load_model(model_path), self._row_config(row, seed))
        if round(result["test_accuracy"] * result["test_examples"]) != round(
            record["test_accuracy"] * record["test_examples"]
        ):
            self._log(
                f"{row['name']} seed {seed}: {model_path} scores {result['test_accuracy']:.4f}, not the recorded "
                f"{record['test_accuracy']:.4f}; its test predictions are not added"
            )
            return record
        record = {**record, "test_predictions": result["test_predictions"], "test_labels": result["test_labels"]}
        artifacts.write_json(path, record)
        self._log(f"{row['name']} seed {seed}: added its test predictions from {model_path}")
        return record

    def _teacher_path(self, row: dict, seed: int) -> str:
        """The teacher of a distillation row: the experiment's, a named one, or its teacher row's model of the same
        seed, which is trained first when it is not finished yet (skipped when it is)."""
        teacher_row = self._teacher_row(row)
        if teacher_row is None:
            return self.teacher_file(row.get("teacher"))
        record, _ = self.run_row(teacher_row, seed)
        if record is None:  # Another process is training it right now.
            raise RuntimeError(f"row '{teacher_row['name']}' seed {seed} is running elsewhere; run this row after it")
        return self.model_path(teacher_row["name"], seed)

    @staticmethod
    def _record(spec: dict, result) -> dict:
        """A row's JSON: its spec (what a re-run compares), the run record, and where and when it ran."""
        return {"spec": spec, **result.record, "machine": machine(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def run(self, rows: list[str] | None = None, seeds: list[int] | None = None) -> None:
        """The teacher, then every selected row for every selected seed; finished rows are skipped.

        Args:
            rows: names of the rows to run (default all); `"teacher"` alone trains only the teacher, `"teacher-NAME"`
                only the named teacher NAME. The teachers the selected rows learn from are trained first.
            seeds: the seeds to run (default `self.seeds`, the budget's). The report covers `self.seeds` whichever
                ran, so runs split over several commands (`--seeds 1`, `--seeds 2`) each leave the whole table.
        """
        selected = self.select(rows)
        # Without a selection, the experiment's teacher is trained whatever the rows need (the table's first row).
        requested = {name for name in self.teacher_names() if self.teacher_run(name) in (rows or ["teacher"])}
        teachers = requested.union(*(self._teachers_needed(row) for row in selected))
        for name in self.teacher_names():
            if name in teachers:
                self.ensure_teacher(name)
        for seed in seeds or self.seeds:
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
        teachers = [self.teacher_run(name) for name in self.teacher_names()]
        unknown = [n for n in names if n not in known and n not in teachers]
        if unknown:
            raise ValueError(f"unknown row(s) {', '.join(unknown)}; the config has: {', '.join([*teachers, *known])}")
        return [known[n] for n in names if n in known]

    # -- the report

    def collect(self) -> tuple[dict, dict[str, list[dict]]]:
        """The records of the teachers trained with the current settings (`{None: the experiment's, name: a named
        one's}`, the untrained left out) and, per row, those of the seeds finished with the current settings."""
        teachers = {name: self.teacher_record(name) for name in self.teacher_names()}
        teachers = {name: record for name, record in teachers.items() if record is not None}
        results = {}
        for row in self.config["rows"]:
            records = []
            for seed in self.row_seeds(row):
                record = read_json(self.row_path(row["name"], seed))
                if record is not None and recorded_spec(record) == self.row_spec(row, seed):
                    records.append(record)
            results[row["name"]] = records
        return teachers, results

    def teacher_record(self, name: str | None = None) -> dict | None:
        """A teacher's record if it was trained with the current settings, else None."""
        record = read_json(self.row_path(self.teacher_run(name), None))
        return record if record is not None and record.get("spec") == self.teacher_spec(name) else None

    def report(self, command: str) -> dict:
        """Writes `NAME.md`, `NAME.json` and the plots from the finished rows (`kdkeras.experiments.report`)."""
        from kdkeras.experiments.report import write_report

        return write_report(self, command)


def _file_digest(path: str) -> str:
    from kdkeras import artifacts

    if not os.path.exists(path):
        raise ValueError(f"teacher file {path} not found")
    return artifacts.weights_digest(artifacts.load_model(path))


def _dataset_info(config):
    from kdkeras.data import load_dataset

    return load_dataset(config.dataset, "test", config.batch_size, data_dir=config.data_dir)[1]
