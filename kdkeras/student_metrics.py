"""The extra student metrics of `Distiller.compile(metrics=[...])`: resolved as `keras.Model.compile` resolves them,
the accuracy the distiller reports anyway left out, and a name that a term or the distiller already reports
refused (two log entries of one name would overwrite each other)."""

from __future__ import annotations

from collections.abc import Sequence

import keras

# Names of the student accuracy the distiller reports as `accuracy` anyway.
ACCURACY_NAMES = ("accuracy", "acc", "sparse_categorical_accuracy")


def student_metrics(metrics, taken: set[str]) -> list[keras.metrics.Metric]:
    """The `keras.metrics.Metric`s for `metrics` (names or metrics; None for none).

    Args:
        taken: the log names already reported (the terms', the distiller's own).

    Raises:
        ValueError: for something that is not a list of metrics, an unknown name, or a name already taken.
    """
    if metrics is None:
        return []
    if isinstance(metrics, (str, keras.metrics.Metric)) or not isinstance(metrics, Sequence):
        raise ValueError(f"metrics must be a list of metric names or keras.metrics.Metric objects, got {metrics!r}")
    built = []
    for metric in metrics:
        if isinstance(metric, str) and metric in ACCURACY_NAMES:
            continue  # Reported as `accuracy` already.
        try:
            built.append(keras.metrics.get(metric))
        except ValueError as error:
            raise ValueError(f"unknown metric {metric!r}: {str(error).splitlines()[0]}") from None
    clashes = [m.name for m in built if m.name in taken]
    if clashes or len({m.name for m in built}) != len(built):
        raise ValueError(f"metric name(s) {', '.join(clashes) or 'repeated'} taken: give the metric another name")
    return built
