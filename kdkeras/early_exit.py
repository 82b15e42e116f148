"""A multi-exit student at inference: each exit's accuracy, the exits' ensemble and vote, and early exit.

Early exit (as SCAN, Zhang et al., NeurIPS 2019, with a confidence threshold): an image leaves at the first exit,
shallow to deep, whose largest softmax probability reaches the threshold τ; the final output takes the rest. Its
cost is the FLOPs computed until then: the backbone up to that exit's stage and every head passed on the way.
The threshold is chosen on validation images (`choose_threshold`), never on the test split.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kdkeras.models.exits import exit_layers, exits_model
from kdkeras.profiling import count_flops

# The confidence thresholds of the early-exit curve.
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)
FINAL = "final"


def exit_costs(model: keras.Model) -> dict[str, int]:
    """FLOPs of one image up to and including each exit, shallow to deep, then `"final"` (the backbone and every
    head: what a cascade that never stops early computes)."""
    network = exits_model(model)
    outputs = network.outputs
    names = [*exit_layers(model), FINAL]
    return {name: count_flops(keras.Model(network.inputs[0], outputs[: k + 1])) for k, name in enumerate(names)}


def exit_logits(model: keras.Model, dataset) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`(labels, {exit name or "final": logits})` of a dataset of `(images, labels)` batches, in one pass each."""
    network = exits_model(model)
    forward = tf.function(lambda images: network(images, training=False), reduce_retracing=True)
    names = [*exit_layers(model), FINAL]
    labels, logits = [], {name: [] for name in names}
    for images, batch_labels in dataset:
        for name, value in zip(names, forward(images), strict=True):
            logits[name].append(np.asarray(value, np.float32))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(labels), {name: np.concatenate(parts) for name, parts in logits.items()}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ensemble_predictions(logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{"mean": classes of the mean softmax over every exit and the final output, "vote": majority vote}`; a
    tied vote goes to the tied class with the highest mean probability."""
    probabilities = np.stack([_softmax(z) for z in logits.values()])  # (outputs, examples, classes)
    mean = probabilities.mean(axis=0)
    votes = np.zeros_like(mean)
    for p in probabilities:
        votes[np.arange(len(mean)), p.argmax(-1)] += 1
    return {"mean": mean.argmax(-1), "vote": (votes + 1e-3 * mean).argmax(-1)}


def early_exit_curve(labels: np.ndarray, logits: dict[str, np.ndarray], costs: dict[str, int],
                     thresholds=THRESHOLDS) -> list[dict]:  # fmt: skip
    """For each threshold τ: accuracy, mean MFLOPs per image, and the share of images leaving at each exit."""
    names = list(logits)
    probabilities = [_softmax(logits[name]) for name in names]
    curve = []
    for threshold in thresholds:
        leaves = np.full(len(labels), len(names) - 1)
        for k in range(len(names) - 2, -1, -1):  # Deep to shallow: the shallowest confident exit wins.
            leaves = np.where(probabilities[k].max(-1) >= threshold, k, leaves)
        predicted = np.stack([p.argmax(-1) for p in probabilities])[leaves, np.arange(len(labels))]
        cost = np.array([costs[name] for name in names])[leaves]
        curve.append({
            "threshold": float(threshold),
            "accuracy": float(np.mean(predicted == labels)),
            "mflops": float(cost.mean() / 1e6),
            "exits": {name: float(np.mean(leaves == k)) for k, name in enumerate(names)},
        })  # fmt: skip
    return curve


def choose_threshold(curve: list[dict], reference_accuracy: float, max_drop: float = 0.003) -> dict:
    """The cheapest point of a (validation) curve within `max_drop` of `reference_accuracy` (the full student's
    on the same images), else the most accurate point."""
    within = [point for point in curve if point["accuracy"] >= reference_accuracy - max_drop]
    if within:
        return min(within, key=lambda point: point["mflops"])
    return max(curve, key=lambda point: point["accuracy"])


def exit_report(model: keras.Model, test, validation=None, max_drop: float = 0.003) -> dict:
    """Each exit's test accuracy and cumulative MFLOPs, the ensemble's (mean softmax) and the vote's accuracy, the
    early-exit curve on the test split, and, with `validation`, the threshold chosen there and what it gives on
    the test split.

    Returns:
        `{"exits": {name: {"accuracy", "mflops"}}, "ensemble_accuracy", "vote_accuracy", "curve",
        "chosen": {"threshold", "validation_accuracy", "accuracy", "mflops", "full_mflops"} or None}`.
    """
    costs = exit_costs(model)
    labels, logits = exit_logits(model, test)
    ensemble = ensemble_predictions(logits)
    report = {
        "exits": {
            name: {"accuracy": float(np.mean(z.argmax(-1) == labels)), "mflops": costs[name] / 1e6}
            for name, z in logits.items()
        },
        "ensemble_accuracy": float(np.mean(ensemble["mean"] == labels)),
        "vote_accuracy": float(np.mean(ensemble["vote"] == labels)),
        "curve": early_exit_curve(labels, logits, costs),
        "chosen": None,
    }
    if validation is not None:
        val_labels, val_logits = exit_logits(model, validation)
        reference = float(np.mean(val_logits[FINAL].argmax(-1) == val_labels))
        point = choose_threshold(early_exit_curve(val_labels, val_logits, costs), reference, max_drop)
        on_test = next(p for p in report["curve"] if p["threshold"] == point["threshold"])
        report["chosen"] = {
            "threshold": point["threshold"], "validation_accuracy": point["accuracy"],
            "accuracy": on_test["accuracy"], "mflops": on_test["mflops"],
            "full_mflops": costs[FINAL] / 1e6, "max_drop": max_drop,
        }  # fmt: skip
    return report
