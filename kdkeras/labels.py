"""Labels: checked before any step (a `ValueError` saying what was found and what was expected, instead of
TensorFlow's raw error mid-step), and the mask that keeps unlabeled transfer images out of the label terms and the
accuracies."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def check_labels(labels, num_classes: int | None, what: str = "labels") -> np.ndarray:
    """`labels` as an int32 `(examples,)` array, or a `ValueError` saying what was found and what was expected:
    integer class indices 0 … num_classes − 1 (any non-negative integers when `num_classes` is None)."""
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        hint = " (one-hot? pass the class indices, labels.argmax(-1))" if array.ndim == 2 else ""
        raise ValueError(f"{what} must be one class index per example, got shape {array.shape}{hint}")
    if array.size == 0:
        raise ValueError(f"{what} are empty")
    if (
        not np.issubdtype(array.dtype, np.number)
        or not np.all(np.isfinite(array))
        or not np.all(array == np.round(array))
    ):
        raise ValueError(f"{what} must be integer class indices, got {array.dtype} values such as {array.flat[0]!r}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        expected = f"0 … {num_classes - 1}" if num_classes is not None else "0, 1, 2, …"
        raise ValueError(f"{what} range from {low} to {high}; expected class indices {expected}")
    return array.astype(np.int32)


def check_fit_labels(x, y, num_classes: int) -> None:
    """`check_labels` on what `fit(x, y)` / `evaluate(x, y)` receive: all labels of arrays, the first batch's of a
    dataset (cheap: one batch), so a label out of range is a `ValueError` before any step instead of TensorFlow's
    raw InvalidArgumentError mid-step."""
    if isinstance(x, tf.data.Dataset):
        if isinstance(x.element_spec, tuple) and isinstance(x.element_spec[1], dict):
            return  # kdkeras' own pipeline with targets (teacher cache, transfer images): checked when loaded.
        batch = next(iter(x.take(1)), None)
        if batch is None:
            raise ValueError("the dataset is empty")
        y, where = batch[1] if isinstance(batch, tuple) and len(batch) > 1 else None, "the first batch's labels"
    else:
        where = "labels"
    if isinstance(y, dict):
        y = y.get("labels")
    if y is not None:
        check_labels(np.asarray(y), num_classes, where)


def labeled_mask(y):
    """The 1.0/0.0 per-example mask of a batch with unlabeled transfer images (`unlabeled_examples`), else None."""
    return y.get("labeled") if isinstance(y, dict) else None


def labeled_weight(sample_weight, labeled):
    """The sample weight of the accuracies: labeled examples only."""
    if labeled is None:
        return sample_weight
    return labeled if sample_weight is None else tf.cast(sample_weight, tf.float32) * labeled
