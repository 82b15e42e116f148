"""Training settings: what a valid value of each is, and `TrainConfig`, what every training run shares.

One table of rules (`SETTING_RULES`) serves `TrainConfig` and the experiment configs (`kdkeras.experiments.config`),
so that both accept and refuse the same values with the same words.
"""

from __future__ import annotations

import dataclasses

from kdkeras.validation import is_finite_number, is_integer

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")


# What a valid value of each training setting is: one table for `TrainConfig` and the experiment configs
# (`kdkeras.experiments.config`), so that both accept and refuse the same values with the same words.
SETTING_RULES = {
    "epochs": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: is_finite_number(v) and v > 0, "a number > 0"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "warmup_epochs": (lambda v: is_finite_number(v) and v >= 0, "a number >= 0"),
    "weight_decay": (lambda v: is_finite_number(v) and v >= 0, "a number >= 0"),
    "seed": (is_integer, "an integer"),
    "max_train_examples": (lambda v: v is None or (is_integer(v) and v >= 1), "an integer >= 1"),
    "max_validation_examples": (lambda v: v is None or (is_integer(v) and v >= 1), "an integer >= 1"),
    "max_test_examples": (lambda v: v is None or (is_integer(v) and v >= 1), "an integer >= 1"),
    "unlabeled_examples": (lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    "mixed_fraction": (lambda v: is_finite_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "augment_views": (lambda v: v is None or (is_integer(v) and v >= 1), "an integer >= 1 or unset"),
    "validation_fraction": (lambda v: is_finite_number(v) and 0 < v <= 0.5, "a number in (0, 0.5]"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "flip": (lambda v: v is None or isinstance(v, bool), "true, false or unset"),
    "checkpoint_steps": (lambda v: v is None or (is_integer(v) and v >= 1), "an integer >= 1"),
}


def check_settings(settings, where: str = "") -> None:
    """Raises `ValueError("{where}{key}: must be …, got …")` for the first invalid training setting."""
    for key, value in settings.items():
        valid, expected = SETTING_RULES.get(key, (None, None))
        if valid is not None and not valid(value):
            raise ValueError(f"{where}{key}: must be {expected}, got {value!r}")


@dataclasses.dataclass
class TrainConfig:
    """What every training run shares.

    Attributes:
        dataset: dataset spec (see `kdkeras.data`).
        epochs: passes over the training data.
        batch_size: global batch size.
        lr: peak learning rate. 2e-3: Adam with batch norm tolerates it, and short runs on small data need it
            (1,300 images × 10 epochs: ds_alexnet 0.91 at 1e-3, 0.97 at 2e-3; experiments/results/small_data.md).
        optimizer: `"adam"`, `"adamw"` (decoupled weight decay `weight_decay`) or `"sgd"` (Nesterov momentum 0.9).
        schedule: `"cosine"` (from `lr` down to 0 over the run) or `"constant"`.
        warmup_epochs: linear warm-up of the learning rate from 0 to `lr` over the first epochs (then the schedule).
            Large learning rates (SGD at 0.1) and freshly initialized batch-norm statistics need it.
        weight_decay: decoupled weight decay of `"adamw"` and `"sgd"`.
        seed: seeds weights, the validation carve-out, shuffling and augmentation.
        max_train_examples: train on the first N examples only (quick runs).
        max_validation_examples: validate on the first N held-out examples only (quick runs; the held-out set
            stays the same, so training never sees them).
        max_test_examples: evaluate on a seeded sample of N test images only (quick runs and tests; a record says
            how many it was scored on).
        unlabeled_examples: distillation only: also train on the next N training images without their labels
            (transfer images): only the teacher's terms see them (`kdkeras.data.load_dataset`).
        mixed_fraction: distillation only: the share of training examples shown as a mix of two images, without a
            label, on which the student matches the teacher (function matching; `kdkeras.data.load_dataset`).
        validation_fraction: share of the training data held out for validation.
        augment: random crop (and flip where it keeps the class) during training.
        augment_views: epoch e shows the augmentation of epoch e mod N (`kdkeras.data.load_dataset`): a teacher
            cache then holds N epochs of logits instead of all; default a new augmentation every epoch.
        flip: force horizontal flips on or off; default per dataset.
        data_dir: TFDS data directory.
        logdir: TensorBoard log folder; None for no logs.
        verbose: Keras progress output (0, 1 or 2).
        backup_dir: checkpoint folder for resuming an interrupted run; None for no checkpoints.
        checkpoint_steps: also checkpoint every N steps (default: at the end of every epoch only).
    """

    dataset: str = "fashion_mnist"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    max_train_examples: int | None = None
    max_validation_examples: int | None = None
    max_test_examples: int | None = None
    unlabeled_examples: int = 0
    mixed_fraction: float = 0.0
    validation_fraction: float = 0.1
    augment: bool = True
    augment_views: int | None = None
    flip: bool | None = None
    data_dir: str | None = None
    logdir: str | None = None
    verbose: int = 1
    backup_dir: str | None = None
    checkpoint_steps: int | None = None

    def __post_init__(self):
        check_settings(dataclasses.asdict(self))
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs: must be fewer than the {self.epochs} epochs, got {self.warmup_epochs!r}")


# Where a run writes and how it reports: not part of what it computes.
_OUTPUT_FIELDS = ("logdir", "verbose", "backup_dir", "checkpoint_steps")


def result_settings(config: TrainConfig) -> dict:
    """The `TrainConfig` fields that change a run's result (not where its logs and checkpoints go)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _OUTPUT_FIELDS}
