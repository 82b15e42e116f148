"""The kdkeras recipe on your own models and data: `kdkeras.train` and `kdkeras.distill`.

The same run the command line makes (`kdkeras train` / `kdkeras distill`): Adam at 2e-3 with a cosine decay to 0,
batch-norm statistics warm-started on the first batch, a new seeded order and augmentation every epoch,
checkpoints that resume an interrupted run (`backup_dir`), a stop naming the term that became NaN, TensorBoard
logs (`logdir`) — on data given as a dataset spec, numpy arrays or a `tf.data.Dataset`.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import tensorflow as tf

from kdkeras.data import EpochClock, from_arrays
from kdkeras.labels import check_labels
from kdkeras.models import signature
from kdkeras.training import RunResult, Splits, TrainConfig, run_training


def train(model: keras.Model, data, validation_data=None, *, test_data=None, callbacks=(), **settings) -> RunResult:
    """Trains `model` (a logits classifier) on the labels alone, with kdkeras' recipe.

    Args:
        model: a built functional or Sequential `keras.Model` returning logits.
        data: a dataset spec (`"fashion_mnist"`, `"tfds:cifar10"`, `"folder:PATH"`, `"idx:PATH"`: its validation
            and test splits are used), a tuple `(images, labels)` of numpy arrays (kdkeras' pipeline: seeded
            order and augmentation per epoch), or a batched `tf.data.Dataset` of `(images, labels)` (used as it
            is; its number of batches must be known).
        validation_data: with arrays or a dataset, the validation data in the same form; default none.
        test_data: with arrays or a dataset, data to evaluate on at the end (the record's `test_accuracy`).
        callbacks: more Keras callbacks.
        **settings: `kdkeras.training.TrainConfig` fields: `epochs` (10), `batch_size` (128), `lr` (2e-3),
            `optimizer`, `schedule`, `warmup_epochs`, `weight_decay`, `seed`, `augment` (True), `flip`,
            `backup_dir`, `checkpoint_steps`, `logdir`, `verbose`, `max_train_examples`, … Unknown names are an
            error.

    Returns:
        A `RunResult`: `record` (history of every epoch, train time, test result when there is test data).

    Example:
        >>> result = kdkeras.train(model, (x_train, y_train), epochs=5, test_data=(x_test, y_test))
        >>> result.record["test_accuracy"]
    """
    config, splits, test = _prepare(model, data, validation_data, test_data, settings)
    return run_training(model, config, callbacks=callbacks, data=splits, test=test)


def distill(
    teacher: keras.Model,
    student: keras.Model,
    data,
    validation_data=None,
    *,
    terms=None,
    test_data=None,
    callbacks=(),
    collaborative: bool = False,
    teacher_cache: str | None = None,
    **settings,
) -> RunResult:
    """Trains `student` from `teacher` with a `Distiller` and kdkeras' recipe.

    The teacher may take another image size or channel count (it sees the student's images converted). With
    `data` given as a spec or arrays, the teacher's logits on the validation data are computed once per run.

    Args:
        teacher: a trained `keras.Model` returning logits (frozen unless `collaborative`).
        student: the `keras.Model` to train, in place.
        data, validation_data, test_data, callbacks, **settings: as for `train`.
        terms: the distillation terms (`kdkeras.terms`); default the default preset.
        collaborative: also train the teacher (mutual learning).
        teacher_cache: a folder for the teacher's precomputed training logits (`kdkeras.teacher_cache`); with a
            dataset spec or arrays only.

    Returns:
        A `RunResult`; `distiller` holds the trained `Distiller`.

    Example:
        >>> result = kdkeras.distill(teacher, student, (x_train, y_train), epochs=5, terms=["ce", "kd"])
    """
    config, splits, test = _prepare(student, data, validation_data, test_data, settings)
    if splits is not None and teacher_cache and splits.clock is None:
        raise ValueError("teacher_cache needs kdkeras' own pipeline: pass a dataset spec or (images, labels) arrays")
    return run_training(
        student, config, teacher, callbacks=callbacks, data=splits, test=test, terms=terms,
        collaborative=collaborative, teacher_cache=teacher_cache if splits is None else None,
    )  # fmt: skip


def _prepare(model, data, validation_data, test_data, settings: dict):
    """`(TrainConfig, Splits or None, test dataset or None)`; None splits: `data` is a spec."""
    import dataclasses

    known = {field.name for field in dataclasses.fields(TrainConfig)} - {"dataset"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; the settings are: {', '.join(sorted(known))}")
    if isinstance(data, str):
        if validation_data is not None or test_data is not None:
            raise ValueError("a dataset spec brings its own validation and test splits: pass no validation/test data")
        return TrainConfig(dataset=data, **settings), None, None
    input_shape, classes = signature(model, "model")
    if isinstance(data, tf.data.Dataset):
        config = TrainConfig(dataset="tf.data", **settings)
        if config.mixed_fraction:
            raise ValueError("mixed_fraction applies to a dataset spec or arrays; mix the images of your own pipeline")
        train, info = _own_pipeline(data, input_shape, classes, "data")
        clock = None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        config = TrainConfig(dataset=f"arrays:{_digest(x, y)}", **settings)
        if config.max_train_examples is not None:
            raise ValueError("max_train_examples applies to dataset specs; slice the arrays instead")
        clock = EpochClock()
        # from_arrays checks the labels against the model's classes.
        train, info = from_arrays(x, y, config.batch_size, class_names=_names(classes), seed=config.seed,
                                  augment_images=config.augment, flip=bool(config.flip), clock=clock,
                                  mixed_fraction=config.mixed_fraction)  # fmt: skip
    else:
        raise ValueError(
            f"data must be a dataset spec, an (images, labels) tuple of arrays or a tf.data.Dataset, got "
            f"{type(data).__name__}"
        )
    if tuple(info.input_shape) != tuple(input_shape):
        raise ValueError(f"the model takes images of shape {tuple(input_shape)}, the data has {info.input_shape}")
    validation = _evaluation_data(validation_data, config.batch_size, input_shape, classes, "validation_data")
    test = _evaluation_data(test_data, 256, input_shape, classes, "test_data")
    return config, Splits(train, validation, info, clock), test


def _evaluation_data(data, batch_size: int, input_shape, classes: int, what: str):
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        return _own_pipeline(data, input_shape, classes, what)[0]
    if isinstance(data, (tuple, list)) and len(data) == 2:
        labels = check_labels(data[1], classes, f"{what} labels")
        return from_arrays(data[0], labels, batch_size, class_names=_names(classes), shuffle=False)[0]
    raise ValueError(f"{what} must be an (images, labels) tuple of arrays or a tf.data.Dataset")


def _own_pipeline(dataset: tf.data.Dataset, input_shape, classes: int, what: str):
    """A dataset of your own, checked: batched `(images, labels)` of the model's image shape, known length."""
    from kdkeras.data import DatasetInfo

    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and len(spec[0].shape) == 4):
        raise ValueError(f"{what} must yield batched (images, labels) pairs, got elements {spec}: use .batch(n)")
    batches = int(dataset.cardinality())
    if batches < 0:
        raise ValueError(
            f"{what} has an unknown number of batches: the learning-rate schedule needs it "
            "(dataset.apply(tf.data.experimental.assert_cardinality(n)))"
        )
    if tuple(spec[0].shape[1:]) != tuple(input_shape):
        raise ValueError(f"the model takes images of shape {tuple(input_shape)}, {what} has {tuple(spec[0].shape[1:])}")
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError(f"{what} is empty")
    check_labels(first[1].numpy(), classes, f"{what}: the first batch's labels")
    return dataset, DatasetInfo(what, classes, _names(classes), tuple(input_shape), batches)


def _names(classes: int) -> tuple[str, ...]:
    return tuple(str(k) for k in range(classes))


def _digest(x: np.ndarray, y: np.ndarray) -> str:
    """Names the arrays in the run's settings, so a checkpoint of a run on other data is not resumed."""
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    return digest.hexdigest()[:16]
