"""Evaluating a trained classifier: the shape checks, accuracy and loss on a dataset, and the test record every
run writes (its size, its test-split result and its prediction for every test example)."""

from __future__ import annotations

import base64
import zlib
from typing import TYPE_CHECKING

import keras
import numpy as np
import tensorflow as tf

from kdkeras.data import DatasetInfo, load_dataset
from kdkeras.distribute import auto_shard_data
from kdkeras.models import signature

if TYPE_CHECKING:
    from kdkeras.settings import TrainConfig


def check_classes(model: keras.Model, info: DatasetInfo, role: str = "model", any_input_size: bool = False) -> None:
    """Raises a clear error when a model does not fit a dataset's images or classes.

    Args:
        any_input_size: only the classes must match (a teacher, which sees the images converted to its own size).
    """
    expected, classes = signature(model, role)
    if classes != info.num_classes:
        raise ValueError(
            f"the {role} '{model.name}' predicts {classes} classes, the dataset {info.name} has {info.num_classes}"
        )
    if not any_input_size and expected != tuple(info.input_shape):
        raise ValueError(
            f"the {role} '{model.name}' takes images of shape {expected}, the dataset {info.name} has "
            f"{tuple(info.input_shape)}"
        )


def evaluate_classifier(model: keras.Model, dataset, info: DatasetInfo) -> dict:
    """Accuracy, mean cross-entropy and per-class accuracy of a logits model on a dataset.

    Returns:
        `{"accuracy", "loss", "num_examples", "per_class": {class name: accuracy}}`.
    """
    return _scores(*_labels_and_logits(model, dataset, info), info)


def _labels_and_logits(model: keras.Model, dataset, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    check_classes(model, info)
    # A plain compiled call, not `predict`: under a multi-worker strategy `predict` is a collective op that needs
    # every worker, while the chief evaluates alone.
    forward = tf.function(lambda images: model(images, training=False), reduce_retracing=True)
    labels, logits = [], []
    for images, batch_labels in dataset:
        logits.append(np.asarray(forward(images), np.float32))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(labels), np.concatenate(logits)


def _scores(labels: np.ndarray, logits: np.ndarray, info: DatasetInfo) -> dict:
    loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = np.argmax(logits, axis=-1) == labels
    per_class = {
        name: float(correct[labels == k].mean()) if np.any(labels == k) else None
        for k, name in enumerate(info.class_names)
    }
    return {
        "accuracy": float(correct.mean()),
        "loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
        "num_examples": int(len(labels)),
        "per_class": per_class,
    }


def predict_test_split(model: keras.Model, config: TrainConfig) -> dict:
    """The test-split result of a trained model with its predicted class for every test example.

    Returns:
        `{"test_accuracy", "test_loss", "test_examples", "per_class", "test_predictions", "test_labels"}`, the last
        two encoded by `encode_classes`: with them two runs on the same test examples can be compared example by
        example (which ones each gets right), which is how the experiment report separates a real difference
        from the luck of the test sample.
    """
    test, info = load_test(config)
    return predict_dataset(model, test, info)


def load_test(config: TrainConfig):
    """The test split a run is scored on: `(dataset, info)`; a seeded sample of `config.max_test_examples`."""
    return load_dataset(config.dataset, "test", 256, data_dir=config.data_dir, seed=config.seed,
                        max_examples=config.max_test_examples)  # fmt: skip


def load_validation(config: TrainConfig):
    """The validation split (never augmented), bounded by `config.max_validation_examples`."""
    validation, _ = load_dataset(
        config.dataset, "validation", config.batch_size, max_examples=config.max_validation_examples,
        **carve_out(config),
    )  # fmt: skip
    return auto_shard_data(validation)


def carve_out(config: TrainConfig) -> dict:
    """What decides which training images are held out for validation (the same in every split's pipeline)."""
    return dict(validation_fraction=config.validation_fraction, seed=config.seed, data_dir=config.data_dir)


def predict_dataset(model: keras.Model, test, info: DatasetInfo) -> dict:
    """`predict_test_split`'s result on a dataset of `(images, labels)` batches of your own."""
    labels, logits = _labels_and_logits(model, test, info)
    result = _scores(labels, logits, info)
    return {
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "test_examples": result["num_examples"],
        "per_class": result["per_class"],
        "test_predictions": encode_classes(np.argmax(logits, axis=-1)),
        "test_labels": encode_classes(labels),
    }


def encode_classes(classes: np.ndarray) -> str:
    """Class indices as a short JSON string: the bytes of the smallest fitting unsigned type, zlib-compressed,
    base64; the type leads (`"uint8:..."`). 10,000 Fashion-MNIST predictions take about 7 kB."""
    classes = np.asarray(classes)
    dtype = np.dtype(np.uint8 if classes.size == 0 or classes.max() < 256 else np.uint16)
    payload = base64.b64encode(zlib.compress(classes.astype(dtype.newbyteorder("<")).tobytes(), 9)).decode("ascii")
    return f"{dtype.name}:{payload}"


def decode_classes(text: str) -> np.ndarray:
    """The class indices `encode_classes` wrote, as int64."""
    dtype, _, payload = text.partition(":")
    return np.frombuffer(zlib.decompress(base64.b64decode(payload)), np.dtype(dtype).newbyteorder("<")).astype(np.int64)


def test_record(model: keras.Model, config: TrainConfig, test=None, info: DatasetInfo | None = None,
                validation=None) -> dict:  # fmt: skip
    """The part of every run record that describes the trained model: its size and its test-split result, and for
    a multi-exit model its exits (`exit_record`).

    The one place a record's evaluation is assembled: `kdkeras train`/`distill` (the `.config.json` beside the
    model), the experiment rows, teachers and the demo all call it, so that they all evaluate the same way.

    Args:
        test, info: a test dataset of your own and its `DatasetInfo`, instead of the test split of
            `config.dataset` (`load_test`).
        validation: the run's validation split, where a multi-exit model's early-exit threshold is chosen; default
            the carve-out of `config.dataset`.

    Returns:
        `{"model", "params", "flops"}`, the items of `predict_dataset`, and `exits` for a multi-exit model.
    """
    from kdkeras.models.exits import exit_layers
    from kdkeras.profiling import count_flops, count_params

    if test is None:
        test, info = load_test(config)
    record = {
        "model": model.name,
        "params": count_params(model),
        "flops": count_flops(model),
        **predict_dataset(model, test, info),
    }
    if exit_layers(model):  # Each exit, the ensemble, the vote, and the early exit chosen on validation.
        record["exits"] = exit_record(model, config, test, validation)
    return record


def exit_record(model: keras.Model, config: TrainConfig, test=None, validation=None) -> dict:
    """A multi-exit model's `kdkeras.early_exit.exit_report`: each exit's test accuracy and cumulative MFLOPs, the
    ensemble and the vote, the early-exit curve, and the threshold chosen on the run's own validation split.

    Args:
        test, validation: datasets of your own instead of the test split and the validation carve-out of
            `config.dataset` (the one its training held out: same seed and fraction).
    """
    from kdkeras.early_exit import exit_report

    if test is None:
        test, _ = load_test(config)
    return exit_report(model, test, load_validation(config) if validation is None else validation)
