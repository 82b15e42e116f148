"""A multi-exit student on device: one TFLite model per segment, run one after another until an exit is confident.

Segment k runs the backbone from the previous segment's features (the image for the first) to exit k's stage and
returns `(exit k's logits, the stage's features)`; the last segment returns the final logits. An app runs segment
0, stops when the exit's largest softmax probability reaches the threshold, else feeds the features to segment 1,
and so on: an image that leaves early computes only its segments. `export_cascade` writes the segments and a
`cascade.json` (threshold, order, costs); `Cascade` runs them in the LiteRT interpreter exactly as an app would.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from kdkeras import artifacts
from kdkeras.models.exits import ExitCollector, exit_layers

MANIFEST = "cascade.json"


def segments(model: keras.Model) -> list[keras.Model]:
    """The segment models of a multi-exit model, shallow to deep (Keras models on intermediate inputs)."""
    names = exit_layers(model)
    if not names:
        raise ValueError(f"model '{model.name}' has no exits: a cascade needs a multi-exit student")
    collector = next(layer for layer in model.layers if isinstance(layer, ExitCollector))
    # Each exit head's input is its stage's feature map.
    stages = [_head_input(model.get_layer(name)) for name in names]
    inputs = [model.inputs[0], *stages]
    parts = []
    for k, name in enumerate(names):
        parts.append(keras.Model(inputs[k], [model.get_layer(name).output, stages[k]], name=f"segment_{k}"))
    parts.append(keras.Model(inputs[-1], collector.input[0], name=f"segment_{len(names)}"))
    return parts


def _head_input(exit_dense):
    """The stage feature map an exit head starts from: walk back from its dense layer to the first layer of the head
    (the heads' layers share the `exit_STAGE` prefix)."""
    tensor = exit_dense.output
    prefix = exit_dense.name
    while True:
        operation = tensor._keras_history.operation
        parent = operation.input
        producer = parent._keras_history.operation
        if not producer.name.startswith(prefix):
            return parent
        tensor = parent


def export_cascade(model: keras.Model, out: str, threshold: float, quantize: str = "none",
                   representative: np.ndarray | None = None) -> dict:  # fmt: skip
    """Writes `out/segment_K.tflite` for every segment and `out/cascade.json`.

    Args:
        model: a multi-exit student.
        out: a new folder (an existing one only when an earlier cascade export wrote it).
        threshold: the confidence at which an image leaves at an exit (choose it on validation images,
            `kdkeras.early_exit.choose_threshold`).
        quantize: `none` or `int8` (int8 weights and activations inside each segment, float32 between segments).
        representative: training images, for `int8` calibration (each segment is calibrated on the features the
            segments before it produce from these images).

    Returns:
        The manifest written to `cascade.json`.
    """
    import tensorflow as tf

    from kdkeras.early_exit import exit_costs
    from kdkeras.export import tflite_bytes

    if quantize not in ("none", "int8"):
        raise ValueError(f"a cascade is exported as none or int8, got {quantize!r}")
    if os.path.exists(out) and not os.path.exists(os.path.join(out, MANIFEST)):
        raise ValueError(f"{out} exists and no kdkeras cascade export wrote it: choose another --out")
    parts = segments(model)
    costs = exit_costs(model)
    os.makedirs(out, exist_ok=True)
    samples = representative
    files = []
    for k, part in enumerate(parts):
        content = tflite_bytes(part, quantize, samples, float_io=True)
        path = os.path.join(out, f"segment_{k}.tflite")
        with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(content)
        files.append(os.path.basename(path))
        if samples is not None and k < len(parts) - 1:
            samples = np.asarray(part(tf.constant(samples, tf.float32), training=False)[1])
    manifest = {
        "segments": files,
        "exits": [*exit_layers(model), "final"],
        "mflops": [costs[name] / 1e6 for name in [*exit_layers(model), "final"]],
        "threshold": float(threshold),
        "quantize": quantize,
    }
    artifacts.write_json(os.path.join(out, MANIFEST), manifest)
    return manifest


class Cascade:
    """Runs an exported cascade in the LiteRT interpreter, segment after segment, as an app would.

    Args:
        folder: what `export_cascade` wrote.
        threshold: overrides the manifest's.
    """

    def __init__(self, folder: str, threshold: float | None = None):
        from kdkeras.export import TFLiteModel

        with open(os.path.join(folder, MANIFEST)) as f:
            self.manifest = json.load(f)
        self.threshold = self.manifest["threshold"] if threshold is None else float(threshold)
        self.segments = [TFLiteModel(os.path.join(folder, name)) for name in self.manifest["segments"]]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(classes, exit index)` per image; each image runs only the segments up to the exit it leaves at."""
        classes = np.zeros(len(images), np.int64)
        leaves = np.full(len(images), len(self.segments) - 1)
        active, inputs = np.arange(len(images)), np.asarray(images, np.float32)
        for k, segment in enumerate(self.segments):
            outputs = segment.run(inputs)
            logits = outputs[0]
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            done = np.ones(len(active), bool) if k == len(self.segments) - 1 else (
                probabilities.max(-1) >= self.threshold)  # fmt: skip
            classes[active[done]] = logits[done].argmax(-1)
            leaves[active[done]] = k
            if k < len(self.segments) - 1:
                active, inputs = active[~done], outputs[1][~done]
                if not len(active):
                    break
        return classes, leaves

    def evaluate(self, dataset) -> dict:
        """The cascade on a dataset of `(images, labels)` batches: `{"accuracy", "leaving_at_each_exit" (image
        counts, shallow to deep), "mean_mflops" (the exits' cumulative costs weighted by where the images left)}`."""
        hits, leaves = [], []
        for images, labels in dataset:
            classes, leave = self.predict(np.asarray(images))
            hits.append(classes == np.asarray(labels))
            leaves.append(leave)
        hits, leaves = np.concatenate(hits), np.concatenate(leaves)
        return {
            "accuracy": float(np.mean(hits)),
            "leaving_at_each_exit": np.bincount(leaves, minlength=len(self.segments)).tolist(),
            "mean_mflops": float(np.mean(np.asarray(self.manifest["mflops"])[leaves])),
        }
