"""Keras Tuner search of the temperature, the loss weights, the feature loss and the learning rate.

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
from kdkeras.training import TrainConfig, make_optimizer

OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
TUNERS = ("random", "bayesian", "hyperband")
# The searched values, under the names `kdkeras distill` takes, so best_hparams.json is a valid --config.
HP_NAMES = ("temperature", "alpha", "beta", "gamma", "feature_loss", "lr")


@dataclasses.dataclass
class SearchSpace:
    """Ranges of the searched hyperparameters (`temperature` and `lr` sampled on a log scale).

    Attributes:
        temperature: (low, high) of T.
        alpha: (low, high) weight of the label loss.
        beta: (low, high) weight of the soft-target loss.
        gamma: (low, high) weight of the feature loss.
        feature_losses: the feature loss kinds to choose from.
        lr: (low, high) peak learning rate.
    """

    temperature: tuple[float, float] = (1.0, 20.0)
    alpha: tuple[float, float] = (0.1, 1.0)
    beta: tuple[float, float] = (0.1, 1.0)
    gamma: tuple[float, float] = (0.0, 2.0)
    feature_losses: tuple[str, ...] = ("hint", "attention")
    lr: tuple[float, float] = (3e-4, 3e-3)

    def __post_init__(self):
        for name in ("temperature", "alpha", "beta", "gamma", "lr"):
            low, high = (float(v) for v in getattr(self, name))
            if not low < high:
                raise ValueError(f"search range of {name} is empty or inverted: [{low}, {high}]")
            positive = name in ("temperature", "lr")
            if low < 0 or (positive and low == 0):
                bound = "positive" if positive else ">= 0"
                raise ValueError(f"search range of {name} must be {bound}: [{low}, {high}]")
            setattr(self, name, (low, high))
        if not self.feature_losses or set(self.feature_losses) - {"hint", "attention"}:
            raise ValueError(f"feature_losses must be a non-empty subset of hint, attention, got {self.feature_losses}")
        self.feature_losses = tuple(self.feature_losses)

    @classmethod
    def from_dict(cls, values: dict) -> SearchSpace:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown search-space key(s): {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) for k, v in values.items()})


class DistillerHyperModel(keras_tuner.HyperModel):
    """Builds a compiled `Distiller` per trial from the trial's hyperparameters.

    Args:
        teacher: the trained teacher, shared (frozen) by every trial.
        student: `(name, kwargs)` of the student architecture, built afresh in each trial.
        feature_pairs: `[(teacher_layer, student_layer), ...]`.
        space: the `SearchSpace`.
        config: the training configuration (epochs per trial, batch size) for the learning-rate schedule.
        steps_per_epoch: training steps per epoch.
    """

    def __init__(self, teacher, student, feature_pairs, space: SearchSpace, config: TrainConfig, steps_per_epoch):
        super().__init__(name="tskd")
        self.teacher = teacher
        self.student_name, self.student_kwargs = student
        self.feature_pairs = list(feature_pairs)
        self.space = space
        self.config = config
        self.steps_per_epoch = steps_per_epoch

    def build(self, hp):
        s = self.space
        temperature = hp.Float("temperature", *s.temperature, sampling="log")
        alpha = hp.Float("alpha", *s.alpha)
        beta = hp.Float("beta", *s.beta)
        gamma = hp.Float("gamma", *s.gamma) if self.feature_pairs else 0.0
        feature_loss = hp.Choice("feature_loss", list(s.feature_losses))
        lr = hp.Float("lr", *s.lr, sampling="log")
        input_shape = tuple(self.teacher.inputs[0].shape[1:])
        student = build_model(self.student_name, input_shape, self.teacher.output.shape[-1], **self.student_kwargs)
        distiller = Distiller(
            self.teacher,
            student,
            feature_pairs=self.feature_pairs,
            temperature=temperature,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            feature_loss=feature_loss,
        )
        trial_config = dataclasses.replace(self.config, lr=lr)
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


def write_reports(rows: list[dict], out_dir: str, note: str) -> dict:
    """Writes best_hparams.json, trials.{json,md} and objective.png; returns the best hyperparameters."""
    if not rows:
        raise ValueError("no trial finished: nothing to report")
    best = {name: rows[0][name] for name in HP_NAMES if name in rows[0]}
    artifacts.write_json(os.path.join(out_dir, "best_hparams.json"), best)
    artifacts.write_json(os.path.join(out_dir, "trials.json"), {"note": note, "trials": rows})
    header = ["trial", "val_accuracy", *[n for n in HP_NAMES if n in rows[0]]]

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [f"{note}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r.get(h, "")) for h in header) + " |" for r in rows]
    artifacts.write_text(os.path.join(out_dir, "trials.md"), "\n".join(lines) + "\n")

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, name, log in ((axes[0], "temperature", True), (axes[1], "beta", False)):
        ax.scatter([r[name] for r in rows], [100 * r["val_accuracy"] for r in rows])
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 2, 5, 10 rather than 2×10⁰.
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks([t for t in (1, 2, 5, 10, 20, 50) if min(r[name] for r in rows) / 2 <= t])
        ax.set_xlabel(name + (" (log scale)" if log else ""))
    axes[0].set_ylabel("student validation accuracy (%)")
    fig.suptitle(note, fontsize=7)
    fig.tight_layout()
    artifacts.save_figure(fig, os.path.join(out_dir, "objective.png"))
    return best


def load_teacher(path: str) -> keras.Model:
    """Loads the shared teacher without its optimizer (`compile=False`), so trial checkpoints stay small."""
    return artifacts.load_model(path, compile=False)
