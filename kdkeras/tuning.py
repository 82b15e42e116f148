"""Keras Tuner search of the distillation terms' arguments (temperatures, weights, …) and the learning rate.

The teacher is trained (or loaded) once and shared by every trial; each trial builds a fresh student and a
compiled `Distiller`. The objective is the student's validation accuracy (`val_accuracy`, the name the distiller's
`test_step` reports). A search is resumable: re-running it in the same directory continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import keras_tuner

from kdkeras import artifacts
from kdkeras.distiller import Distiller
from kdkeras.models import build_model
from kdkeras.reporting import markdown_table
from kdkeras.training import TrainConfig, make_optimizer

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
TUNERS = ("random", "bayesian", "hyperband")
LR_RANGE = (3e-4, 3e-3)


@dataclasses.dataclass
class SearchSpace:
    """What a search varies: each term's declared `search_space`, and the learning rate.

    A hyperparameter is named `TERM.ARGUMENT` (`kd.temperature`, `hint.weight`) after the term's metric name;
    `lr` is the peak learning rate (log scale).

    Attributes:
        ranges: `{name: (low, high, sampling)}`, sampling `"linear"` or `"log"`.
    """

    ranges: dict[str, tuple[float, float, str]]

    def __post_init__(self):
        for name, (low, high, sampling) in self.ranges.items():
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"search range of {name} is empty, inverted or not finite: [{low}, {high}]")
            if low < 0 or (sampling == "log" and low == 0):
                raise ValueError(f"search range of {name} must be {'positive' if sampling == 'log' else '>= 0'}")

    @classmethod
    def for_terms(cls, term_list, overrides: dict | None = None) -> SearchSpace:
        """The union of the terms' search spaces plus `lr`; `overrides` (`{name: [low, high]}`) narrows ranges.

        Raises:
            ValueError: for an override naming no searched hyperparameter (the message lists them).
        """
        ranges = {"lr": (*LR_RANGE, "log")}
        for term in term_list:
            for argument, spec in term.search_space.items():
                ranges[f"{term.name}.{argument}"] = tuple(spec)
        for name, bounds in (overrides or {}).items():
            if name not in ranges:
                raise ValueError(f"search-space key {name!r} names nothing searched; searched: {', '.join(ranges)}")
            numbers = isinstance(bounds, (list, tuple)) and len(bounds) == 2
            if not (numbers and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
                raise ValueError(f"search range of {name} must be two numbers [low, high], got {bounds!r}")
            ranges[name] = (float(bounds[0]), float(bounds[1]), ranges[name][2])
        return cls(ranges)


def trial_terms(term_specs: list[dict], values: dict) -> list[dict]:
    """The term specs with a trial's `TERM.ARGUMENT` values filled in (what `distill --config` takes as `terms`)."""
    specs = [dict(spec) for spec in term_specs]
    for spec in specs:
        metric = spec.get("metric", spec["name"])
        for name, value in values.items():
            term, _, argument = name.partition(".")
            if term == metric and argument:
                spec[argument] = value
    return specs


class DistillerHyperModel(keras_tuner.HyperModel):
    """Builds a compiled `Distiller` per trial from the trial's hyperparameters.

    Args:
        teacher: the trained teacher, shared (frozen) by every trial.
        student: `(name, kwargs)` of the student architecture, built afresh in each trial.
        term_specs: the distillation terms (`kdkeras.terms` specs) whose arguments are searched.
        space: the `SearchSpace` (`SearchSpace.for_terms`).
        config: the training configuration (epochs per trial, batch size) for the learning-rate schedule.
        steps_per_epoch: training steps per epoch.
    """

    def __init__(self, teacher, student, term_specs, space: SearchSpace, config: TrainConfig, steps_per_epoch):
        super().__init__(name="distiller")
        self.teacher = teacher
        self.student_name, self.student_kwargs = student
        self.term_specs = [dict(spec) for spec in term_specs]
        self.space = space
        self.config = config
        self.steps_per_epoch = steps_per_epoch

    def build(self, hp):
        values = {
            name: hp.Float(name, low, high, sampling=sampling)
            for name, (low, high, sampling) in self.space.ranges.items()
        }
        input_shape = tuple(self.teacher.inputs[0].shape[1:])
        student = build_model(self.student_name, input_shape, self.teacher.output.shape[-1], **self.student_kwargs)
        distiller = Distiller(self.teacher, student, trial_terms(self.term_specs, values))
        trial_config = dataclasses.replace(self.config, lr=values["lr"])
        distiller.compile(optimizer=make_optimizer(trial_config, self.steps_per_epoch))
        return distiller


def make_tuner(kind: str, hypermodel, max_trials: int, epochs: int, directory: str, project_name: str,
               overwrite: bool, seed: int, distribution_strategy=None):  # fmt: skip
    """A Keras Tuner of the given kind, maximizing `val_accuracy`.

    Args:
        kind: `random`, `bayesian` or `hyperband`.
        max_trials: trials to run (for Hyperband: the epoch budget is derived from `epochs` instead).
        epochs: epochs per trial (Hyperband's `max_epochs`).
        distribution_strategy: a `tf.distribute` strategy; Keras Tuner takes it here, not in `search`.
    """
    if kind not in TUNERS:
        raise ValueError(f"unknown tuner '{kind}'; choose one of: {', '.join(TUNERS)}")
    if max_trials < 1:
        raise ValueError(f"max_trials must be >= 1, got {max_trials}")
    common = dict(
        objective=OBJECTIVE,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        seed=seed,
        distribution_strategy=distribution_strategy,
    )
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    return keras_tuner.Hyperband(hypermodel, max_epochs=epochs, factor=3, **common)


def trial_rows(tuner) -> list[dict]:
    """Every finished trial, best first: its id, hyperparameters and objective."""
    rows = []
    for trial in tuner.oracle.trials.values():
        score = trial.score
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        rows.append({"trial": trial.trial_id, "val_accuracy": float(score), **trial.hyperparameters.values})
    return sorted(rows, key=lambda r: -r["val_accuracy"])


def write_reports(rows: list[dict], out_dir: str, note: str, term_specs: list[dict]) -> dict:
    """Writes best_hparams.json, trials.{json,md} and objective.png; returns the best hyperparameters as
    `{"terms": [...], "lr": ...}`."""
    if not rows:
        raise ValueError("no trial finished: nothing to report")
    searched = [name for name in rows[0] if name not in ("trial", "val_accuracy")]
    best_values = {name: rows[0][name] for name in searched}
    # Valid as `kdkeras distill --config best_hparams.json`: the full term list and the learning rate.
    best = {"terms": trial_terms(term_specs, best_values), "lr": best_values["lr"]}
    artifacts.write_json(os.path.join(out_dir, "best_hparams.json"), best)
    artifacts.write_json(os.path.join(out_dir, "trials.json"), {"note": note, "trials": rows})
    header = ["trial", "val_accuracy", *searched]

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    table = markdown_table(header, [[cell(r.get(h, "")) for h in header] for r in rows], [True] * len(header))
    artifacts.write_text(os.path.join(out_dir, "trials.md"), f"{note}\n\n{table}\n")

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One panel per searched hyperparameter; a log axis where the values span more than a factor of 10.
    fig, axes = plt.subplots(1, len(searched), figsize=(3.2 * len(searched), 3.6), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], searched, strict=True):
        values = [r[name] for r in rows]
        ax.scatter(values, [100 * r["val_accuracy"] for r in rows])
        log = min(values) > 0 and max(values) / min(values) > 10
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(name + (" (log scale)" if log else ""))
    axes = axes[0]
    axes[0].set_ylabel("student validation accuracy (%)")
    fig.suptitle(note, fontsize=7)
    fig.tight_layout()
    artifacts.save_figure(fig, os.path.join(out_dir, "objective.png"))
    return best


def load_teacher(path: str) -> keras.Model:
    """Loads the shared teacher without its optimizer (`compile=False`), so trial checkpoints stay small."""
    return artifacts.load_model(path, compile=False)


def search(
    teacher: keras.Model,
    student: tuple[str, dict],
    term_specs: list,
    config: TrainConfig,
    *,
    tuner: str = "random",
    max_trials: int = 10,
    directory: str = "tuning",
    project_name: str = "kd",
    overwrite: bool = False,
    space_overrides: dict | None = None,
    teacher_cache: str | None = None,
    strategy=None,
) -> dict:
    """A whole search, as `kdkeras tune` runs it: the data once, a trial per point of the space, the reports.

    Args:
        teacher: the trained teacher (loaded under `strategy`'s scope).
        student: `(architecture name, builder options)`, built afresh in each trial.
        term_specs: the terms whose arguments are searched (`kdkeras.terms` specs).
        config: the trials' training settings (`epochs` per trial, batch size, seed, dataset).
        space_overrides: `{"TERM.ARGUMENT": [low, high]}` narrowing the searched ranges.
        teacher_cache: a teacher-output cache folder shared by every trial (they see the same images).

    Returns:
        `{"rows": trials best first, "best": best_hparams.json's content, "out_dir", "logdir"}`.
    """
    from kdkeras import terms as terms_lib
    from kdkeras.callbacks import SetEpoch
    from kdkeras.data import EpochClock
    from kdkeras.evaluation import check_classes
    from kdkeras.training import load_cached_train, load_splits

    clock = EpochClock()
    train, validation, info = load_splits(config, clock)
    check_classes(teacher, info, "teacher", any_input_size=True)
    if teacher_cache:  # Every trial trains on the same images (same seed, epochs counted from 0): one cache serves all.
        train = load_cached_train(teacher, config, clock, teacher_cache, term_specs)
    name, options = student
    probe = Distiller(teacher, build_model(name, info.input_shape, info.num_classes, **options), term_specs)
    # "auto" feature pairs resolved once, so every trial (and best_hparams.json) names the same layers.
    term_specs = [terms_lib.serialize(term) for term in probe.terms]
    space = SearchSpace.for_terms(probe.terms, space_overrides)
    hypermodel = DistillerHyperModel(teacher, student, term_specs, space, config, steps_per_epoch=len(train))
    keras_tuner_ = make_tuner(tuner, hypermodel, max_trials, config.epochs, directory, project_name, overwrite,
                              config.seed, distribution_strategy=strategy)  # fmt: skip
    out_dir = os.path.join(directory, project_name)
    logdir = os.path.join(out_dir, "tensorboard")
    keras_tuner_.search(train, validation_data=validation, epochs=config.epochs, shuffle=False, verbose=config.verbose,
                        callbacks=[SetEpoch(clock), keras.callbacks.TensorBoard(logdir)])  # fmt: skip
    rows = trial_rows(keras_tuner_)
    note = (
        f"{tuner} search, {len(rows)} trials × {config.epochs} epoch(s), {info.name}, "
        f"{config.max_train_examples or 'all'} training images; objective: student val_accuracy"
    )
    return {"rows": rows, "best": write_reports(rows, out_dir, note, term_specs), "out_dir": out_dir, "logdir": logdir}
