"""Training loops shared by the CLI, the demo and the experiments: data, optimizer, callbacks, fit, evaluate."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Sequence

import keras
import tensorflow as tf

from kdkeras import terms as terms_lib
from kdkeras.adapters import on_images_of
from kdkeras.callbacks import (
    ResumableBackup,
    SetEpoch,
    StopOnNonFinite,
    StopOnSignal,
    WarmStartBatchNorm,
    recorded_cpu_seconds,
)
from kdkeras.data import DatasetInfo, EpochClock, load_dataset
from kdkeras.distiller import Distiller
from kdkeras.distribute import auto_shard_data
from kdkeras.evaluation import carve_out, check_classes, load_validation, test_record
from kdkeras.models.exits import exit_layers
from kdkeras.settings import (  # noqa: F401 (TrainConfig and check_settings are part of this module's interface too)
    OPTIMIZERS,
    SCHEDULES,
    SETTING_RULES,
    TrainConfig,
    check_settings,
    result_settings,
)
from kdkeras.teacher_cache import with_teacher_logits


def load_splits(config: TrainConfig, clock: EpochClock | None = None, teacher_logits=None):
    """Training (augmented, shuffled) and validation datasets, with the dataset info.

    Args:
        config: the run's configuration.
        clock: the `EpochClock` the training pipeline reads its epoch from (pass `SetEpoch(clock)` to `fit`).
        teacher_logits: cached teacher logits per epoch (`kdkeras.teacher_cache.TeacherCache.epoch_logits`).
    """
    train, info = load_train(config, clock, teacher_logits)
    return train, load_validation(config), info


def load_train(config: TrainConfig, clock: EpochClock | None = None, teacher_logits=None):
    """The training split as `load_splits` gives it: `(dataset, info)`."""
    train, info = load_dataset(
        config.dataset,
        "train",
        config.batch_size,
        augment_images=config.augment,
        flip=config.flip,
        max_examples=config.max_train_examples,
        clock=clock,
        teacher_logits=teacher_logits,
        unlabeled_examples=config.unlabeled_examples,
        augment_views=config.augment_views,
        mixed_fraction=config.mixed_fraction,
        **carve_out(config),
    )
    if config.batch_size > info.num_examples:  # Checked before any batch is assembled.
        raise ValueError(
            f"batch size {config.batch_size} is larger than the {info.num_examples} training examples of "
            f"{config.dataset}; pass a smaller --batch-size"
        )
    return auto_shard_data(train), info


@dataclasses.dataclass
class Splits:
    """A run's prepared data: the training and validation pipelines, what the model needs to know about them, and
    the clock that sets the training pipeline's epoch (None for a pipeline of your own, which keeps its own)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    info: DatasetInfo
    clock: EpochClock | None = None


def prepare_splits(config: TrainConfig) -> Splits:
    """The `Splits` of `config.dataset` (a dataset spec), each split built once."""
    clock = EpochClock()
    train, validation, info = load_splits(config, clock)
    return Splits(train, validation, info, clock)


def load_cached_train(teacher, config: TrainConfig, clock: EpochClock, cache_root: str, terms,
                      collaborative: bool = False):  # fmt: skip
    """The training split with the teacher's logits read from a cache (computed first if needed,
    `kdkeras.teacher_cache`), for `distill` and the tuner's trials alike.

    Raises:
        ValueError: before anything is computed, when the terms read teacher features or the teacher trains
            (collaborative mode): a cache holds logits only.
    """
    if terms_lib.needs_live_teacher(terms, collaborative):
        # Built terms (a Distiller's) know their layers: name them. Specs (dicts) name none.
        built = [term for term in terms if isinstance(term, terms_lib.Term) and term.reads_teacher_features]
        layers = [name for term in built for name in term.teacher_layers]
        reason = "collaborative mode trains the teacher" if collaborative else "the terms read teacher features"
        if layers and not collaborative:
            reason += f" ({', '.join(dict.fromkeys(layers))})"
        raise ValueError(f"a teacher cache holds logits only and {reason}: run without --teacher-cache")
    from kdkeras.teacher_cache import TeacherCache

    cache = TeacherCache.prepare(teacher, config, cache_root)
    return load_train(config, clock, cache.epoch_logits)[0]


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The configured optimizer; by default Adam with a cosine decay of the learning rate from `lr` to 0 over the
    whole run, after `warmup_epochs` of linear warm-up from 0."""
    rate = config.lr
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "cosine" or warmup_steps:
        rate = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else config.lr,
            decay_steps=max(1, config.epochs * steps_per_epoch - warmup_steps),
            # alpha=1 holds the rate at its peak: a "constant" schedule with warm-up.
            alpha=0.0 if config.schedule == "cosine" else 1.0,
            warmup_target=config.lr if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay or None)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def make_callbacks(config: TrainConfig, extra: Sequence[keras.callbacks.Callback] = (), run_spec: dict | None = None):
    """The run's callbacks, in the order that keeps checkpoints good.

    The non-finite guard runs first, so a NaN step is never checkpointed; then the signal handler, which saves a
    checkpoint and stops at a step boundary; then the checkpoints (`config.backup_dir`, tagged with `run_spec`),
    TensorBoard (`config.logdir`) and `extra`.
    """
    backup = None
    if config.backup_dir:
        backup = ResumableBackup(config.backup_dir, save_freq=config.checkpoint_steps or "epoch", run_spec=run_spec)
    callbacks = [StopOnNonFinite(where=config.backup_dir), StopOnSignal(backup)]
    if backup is not None:
        callbacks.append(backup)
    if config.logdir:
        callbacks.append(keras.callbacks.TensorBoard(config.logdir, update_freq="epoch"))
    return callbacks + list(extra)


def run_spec(model: keras.Model, config: TrainConfig) -> dict:
    """Everything a run's weights depend on, for telling a checkpoint of this run from one of another run."""
    from kdkeras.artifacts import architecture_digest, weights_digest

    spec = result_settings(config)
    spec["model"] = architecture_digest(getattr(model, "student", model))
    if isinstance(model, Distiller):
        spec["terms"] = [terms_lib.serialize(term) for term in model.terms]
        spec["collaborative"] = model.collaborative
        spec["teacher_weights"] = weights_digest(model.teacher) if model.teacher is not None else None
    return spec


def _fit(model, train, validation, config: TrainConfig, callbacks, clock: EpochClock):
    """`model.fit` with the run's callbacks; returns `(history, seconds)`, both over all epochs, also resumed ones
    (seconds: this process' wall time plus what earlier processes spent on the epochs it resumed from)."""
    start = time.perf_counter()
    epoch_setter = [SetEpoch(clock)] if clock is not None else []
    run_callbacks = make_callbacks(
        config, [*epoch_setter, WarmStartBatchNorm(_first_images(train)), *callbacks], run_spec(model, config)
    )
    history = model.fit(
        train,
        validation_data=validation,
        epochs=config.epochs,
        callbacks=run_callbacks,
        shuffle=False,  # The dataset reshuffles itself every epoch.
        verbose=config.verbose,
    )
    seconds = time.perf_counter() - start
    backup = next((c for c in run_callbacks if isinstance(c, ResumableBackup)), None)
    if backup is None:
        return history.history, seconds
    return backup.history, seconds + backup.earlier_seconds


def remove_backup(config: TrainConfig) -> None:
    """Deletes the run's checkpoint folder; call it once the run's final artifact is written (until then, a
    re-run resumes from the finished training instead of starting over)."""
    if config.backup_dir:
        shutil.rmtree(config.backup_dir, ignore_errors=True)


def _first_images(dataset):
    """The images of the first batch of epoch 0 (the training pipeline is a pure function of its epoch)."""
    return next(iter(dataset))[0]


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras; with `deterministic`, TensorFlow ops are made deterministic too,
    so the same run on the same CPU gives identical weights."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def compile_classifier(model: keras.Model, optimizer) -> None:
    """Compiles a logits model with sparse categorical cross-entropy and accuracy."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def train_classifier(model: keras.Model, config: TrainConfig, callbacks=(), data: Splits | None = None):
    """Trains a model on the labels alone (a teacher, or a student from scratch).

    Args:
        data: the prepared splits; default those of `config.dataset`.

    Returns:
        `(history dict, wall seconds, DatasetInfo)`.
    """
    if config.unlabeled_examples or config.mixed_fraction:
        name = "unlabeled_examples" if config.unlabeled_examples else "mixed_fraction"
        raise ValueError(f"{name}: only a teacher can teach on images without labels (distill, not train)")
    data = data or prepare_splits(config)
    compile_classifier(model, make_optimizer(config, len(data.train)))
    history, seconds = _fit(model, data.train, data.validation, config, callbacks, data.clock)
    return history, seconds, data.info


def distill(
    teacher: keras.Model | None,
    student: keras.Model,
    config: TrainConfig,
    callbacks=(),
    teacher_lr: float | None = None,
    terms=None,
    collaborative: bool = False,
    synchronized_bn: bool = False,
    teacher_cache: str | None = None,
    teacher_mimicry: float | None = None,
    data: Splits | None = None,
):
    """Trains `student` from `teacher` with a `Distiller`.

    Args:
        teacher: trained teacher (frozen unless `collaborative=True`).
        student: student to train (its weights are updated in place).
        config: the shared training configuration.
        callbacks: extra Keras callbacks.
        teacher_lr: peak learning rate of the teacher in collaborative mode; default `config.lr / 100`, so the
            trained teacher is refined rather than re-learned (at lr/10 the mirrored logit terms, which pull it
            toward a student that has just started, took a ResNet-20 from 0.88 to 0.46 validation accuracy in one
            epoch; at lr/100 to 0.83: experiments/results/demo_scale.md).
        terms: the distillation terms (see `kdkeras.terms`); default the default preset.
        collaborative: also train the teacher.
        synchronized_bn: adapters synchronize batch statistics across replicas.
        teacher_mimicry: collaborative mode: the factor on the mirrored terms in the teacher's loss (`Distiller`;
            default 0, the teacher learns from the labels alone; 1 is deep mutual learning).
        teacher_cache: a folder of teacher-output caches (`kdkeras.teacher_cache`): the teacher's training logits
            are computed once for every epoch and read from there, so training runs at the student's own speed.
            Not possible with collaborative mode or terms that read teacher features. (With or without it, the
            teacher's logits on the validation split are computed once per run, where those allow.)
        data: the prepared splits; default those of `config.dataset`.

    Returns:
        `(distiller, history dict, wall seconds, DatasetInfo)`.
    """
    data = data or prepare_splits(config)
    train, validation, info, clock = data.train, data.validation, data.info, data.clock
    if teacher is not None:
        check_classes(teacher, info, "teacher", any_input_size=True)
    check_classes(student, info, "student")
    mimicry = {} if teacher_mimicry is None else {"teacher_mimicry": teacher_mimicry}
    distiller = Distiller(
        teacher, student, terms, collaborative=collaborative, synchronized_bn=synchronized_bn, **mimicry
    )
    if teacher_cache:
        if teacher is None:
            raise ValueError("a teacher cache holds a teacher's logits: there is no teacher (self-distillation)")
        if clock is None:
            raise ValueError("a teacher cache needs kdkeras' own training pipeline (a dataset spec or arrays)")
        train = load_cached_train(teacher, config, clock, teacher_cache, distiller.terms, collaborative)
    live_only = terms_lib.needs_live_teacher(distiller.terms, collaborative)
    if teacher is not None and validation is not None and not live_only:
        # Validation images are never augmented: the teacher's answers on them are the same every epoch.
        validation = auto_shard_data(with_teacher_logits(validation, on_images_of(teacher, info.input_shape)))
    teacher_optimizer = None
    if distiller.collaborative:
        teacher_config = dataclasses.replace(config, lr=teacher_lr or config.lr / 100)
        teacher_optimizer = make_optimizer(teacher_config, len(train))
    distiller.compile(optimizer=make_optimizer(config, len(train)), teacher_optimizer=teacher_optimizer)
    history, seconds = _fit(distiller, train, validation, config, callbacks, clock)
    return distiller, history, seconds, info


@dataclasses.dataclass
class RunResult:
    """What `run_training` returns: the run record, the dataset info, and the distiller when there was a teacher.

    `record` holds `model`, `params`, `flops`, `test_accuracy`, `test_loss`, `test_examples`, `per_class` (when
    evaluated), `history` (every epoch, resumed ones too), `train_seconds` (wall time of `fit`, summed over the
    processes of a resumed run) and `cpu_seconds` (this process' CPU time over its span, plus what earlier
    processes of a resumed run spent on their epochs; None when one of them did not record it).
    """

    record: dict
    info: DatasetInfo
    distiller: Distiller | None = None


def run_training(
    model: keras.Model,
    config: TrainConfig,
    teacher: keras.Model | None = None,
    *,
    callbacks=(),
    evaluate: bool = True,
    data: Splits | None = None,
    test=None,
    **distill_options,
) -> RunResult:
    """One training run as every kdkeras entry point makes it: prepare the data, fit `model` (on the labels alone,
    or from `teacher` through a `Distiller`), evaluate it on the test split, and return the record.

    `kdkeras train` and `distill`, the experiment runner (teacher and rows) and the demo all go through here, so
    they all fit, time and evaluate the same way; each adds what only it knows (paths, specs) to the record.

    Args:
        model: the model to train (in place): a classifier, or the student when `teacher` is given.
        config: the run's configuration.
        teacher: a trained teacher; None trains `model` from scratch.
        callbacks: extra Keras callbacks.
        evaluate: evaluate on the test split (under a multi-worker strategy only the chief does).
        data: the prepared splits (`Splits`); default those of `config.dataset`.
        test: with `data`, a test dataset to evaluate on (without one, a run on `data` is not evaluated).
        **distill_options: `distill`'s `terms`, `collaborative`, `teacher_lr`, `teacher_mimicry`,
            `synchronized_bn`, `teacher_cache`.
    """
    # Read before training: the checkpoint then holds only the epochs of earlier processes.
    earlier_cpu_seconds = recorded_cpu_seconds(config.backup_dir) if config.backup_dir else 0.0
    cpu_start = time.process_time()
    if teacher is None and exit_layers(model):  # A multi-exit model teaches its exits itself (`byot`).
        distiller, history, seconds, info = distill(None, model, config, callbacks, data=data, **distill_options)
    elif teacher is None:
        if distill_options:
            raise ValueError(f"{', '.join(sorted(distill_options))}: only used when distilling from a teacher")
        distiller = None
        history, seconds, info = train_classifier(model, config, callbacks, data)
    else:
        distiller, history, seconds, info = distill(teacher, model, config, callbacks, data=data, **distill_options)
    cpu_seconds = None if earlier_cpu_seconds is None else earlier_cpu_seconds + time.process_time() - cpu_start
    if evaluate and (data is None or test is not None):
        record = test_record(model, config, test, info, None if data is None else data.validation)
    else:
        record = {"model": model.name}
    record.update(
        history={key: [float(v) for v in values] for key, values in history.items()},
        train_seconds=seconds,
        cpu_seconds=cpu_seconds,
    )
    return RunResult(record, info, distiller)


def default_logdir(command: str, name: str) -> str:
    """`runs/{command}-{name}-{YYYYmmdd-HHMMSS}`; `runs` is `$KDKERAS_RUNS_DIR` when set (the test suite points it
    at a temporary folder so that tests never write into the working tree)."""
    root = os.environ.get("KDKERAS_RUNS_DIR") or "runs"
    return os.path.join(root, f"{command}-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
