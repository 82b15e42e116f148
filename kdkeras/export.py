"""Export for serving and mobile: SavedModel with a raw-image signature, and TFLite (LiteRT) in four precisions,
each verified on the test set before it is put in place.

The exported file is written to a temporary path, run on the test data (LiteRT interpreter or the loaded
SavedModel), and renamed into place only when its accuracy is within `max_drop` of the Keras model's; the result of
the check is written as JSON beside it (`OUT.verify.json`), pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kdkeras import artifacts
from kdkeras.export_choices import FORMATS, QUANTIZATIONS, check_quantization  # noqa: F401 (QUANTIZATIONS re-exported)


class ExportVerificationError(ValueError):
    """The exported model's accuracy dropped more than allowed; nothing was put in place."""


def _input_shape(model: keras.Model) -> tuple[int, int, int]:
    return tuple(int(d) for d in model.inputs[0].shape[1:])


# --------------------------------------------------------------------------------------------------- SavedModel


def write_saved_model(model: keras.Model, path: str, class_names) -> None:
    """Writes a SavedModel whose `serve` signature takes raw uint8 images of any batch size.

    Signature `serve(images: uint8[batch, H, W, C])` returns `probabilities` (float32[batch, classes]),
    `class_id` (int32[batch]) and `class_name` (string[batch]); preprocessing and the class names are inside.
    """
    names = tf.constant([str(n) for n in class_names])

    def serve(images):
        logits = model(tf.cast(images, tf.float32), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=serve,
        input_signature=[tf.TensorSpec([None, *_input_shape(model)], tf.uint8, name="images")],
    )
    archive.write_out(path, verbose=False)


def saved_model_predict(path: str):
    """A function mapping uint8 image batches to class ids, from a SavedModel written by `write_saved_model`."""
    loaded = tf.saved_model.load(path)  # Held by the closure: its variables die with it.
    return lambda images: loaded.serve(tf.convert_to_tensor(images, tf.uint8))["class_id"].numpy()


# --------------------------------------------------------------------------------------------------- TFLite


def representative_images(dataset, count: int, input_shape) -> np.ndarray:
    """Up to `count` images from a dataset of (images, labels) batches, checked against the model's input shape."""
    images = []
    for batch, _ in dataset:
        images.append(np.asarray(batch, np.float32))
        if sum(len(b) for b in images) >= count:
            break
    images = np.concatenate(images)[:count]
    if tuple(images.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"representative images have shape {tuple(images.shape[1:])}, the model takes {tuple(input_shape)}"
        )
    return images


def tflite_bytes(model: keras.Model, quantize: str = "none", representative: np.ndarray | None = None,
                 float_io: bool = False) -> bytes:  # fmt: skip
    """Converts a Keras model to a TFLite flatbuffer.

    Args:
        model: a logits model taking float images in [0, 255].
        quantize: `none` (float32), `float16` (float16 weights), `dynamic` (int8 weights, float activations) or
            `int8` (full integer: int8 weights, activations, input and output).
        representative: float images from the training data, needed for `int8` (calibration of the ranges).
        float_io: with `int8`, keep float32 inputs and outputs (quantized inside): for models whose inputs are
            another model's features (`kdkeras.cascade`).

    Returns:
        The `.tflite` file content.
    """
    check_quantization(quantize)
    # Through a SavedModel: converting a concrete function directly keeps Keras 3's resource variables as
    # READ_VARIABLE ops, which the interpreter runs uninitialized (NaN outputs); from a SavedModel they are frozen.
    with tempfile.TemporaryDirectory() as folder:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serve",
            fn=lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, *_input_shape(model)], tf.float32, name="images")],
        )
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serve"])
        return configure_converter(converter, quantize, representative, float_io).convert()


def configure_converter(converter, quantize: str, representative: np.ndarray | None = None, float_io: bool = False):
    """Sets a `TFLiteConverter` up for one of `QUANTIZATIONS` (see `tflite_bytes`) and returns it."""
    check_quantization(quantize)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 quantization needs representative images")

        def samples():
            for image in representative:
                yield [image[None]]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if not float_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter


@contextlib.contextmanager
def _stderr_hidden():
    """File descriptor 2 on /dev/null: LiteRT's C++ INFO lines bypass Python (its errors still raise)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class TFLiteModel:
    """Runs a `.tflite` file with the LiteRT interpreter, (de)quantizing int8 inputs and outputs.

    Args:
        path: the `.tflite` file.
        num_threads: interpreter threads.
    """

    def __init__(self, path: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
            with _stderr_hidden():  # The first allocation prints "INFO: Created TensorFlow Lite XNNPACK delegate".
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: not a valid TFLite model ({str(error).splitlines()[0]})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"][1:])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Float logits for a batch of float images in [0, 255]."""
        images = np.asarray(images, np.float32)
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"images have shape {tuple(images.shape[1:])}, the model takes {self.input_shape}")
        if self._batch != len(images):
            self.interpreter.resize_tensor_input(self.input["index"], [len(images), *self.input_shape])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self._batch = len(images)
        if self.input["dtype"] == np.int8:
            scale, zero_point = self.input["quantization"]
            images = np.clip(np.round(images / scale + zero_point), -128, 127).astype(np.int8)
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] == np.int8:
            scale, zero_point = self.output["quantization"]
            output = (output.astype(np.float32) - zero_point) * scale
        return output

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(images), axis=-1)

    def run(self, inputs: np.ndarray) -> list[np.ndarray]:
        """Every output of a float-input model's `serve` signature, in the Keras model's output order."""
        runner = self.interpreter.get_signature_runner("serve")
        outputs = runner(images=np.asarray(inputs, np.float32))
        return [outputs[name] for name in sorted(outputs, key=lambda n: int(n.rsplit("_", 1)[-1]))]


def tflite_predict(path: str):
    """`predict(images) -> class ids` of a `.tflite` file."""
    return TFLiteModel(path).predict


# --------------------------------------------------------------------------------------------------- verification


def accuracy_of(predict, dataset) -> float:
    """Top-1 accuracy of `predict(images) -> class ids` over a dataset of (images, labels) batches."""
    correct = total = 0
    for images, labels in dataset:
        predictions = predict(np.asarray(images))
        correct += int(np.sum(predictions == np.asarray(labels)))
        total += len(predictions)
    return correct / total


def verify(predict_exported, model: keras.Model, dataset, max_drop: float) -> dict:
    """Compares the exported model's test accuracy with the Keras model's.

    Returns:
        `{"keras_accuracy", "exported_accuracy", "drop", "max_drop", "passed"}` (accuracies as fractions, drop in
        percentage points).
    """
    keras_accuracy = accuracy_of(lambda x: np.argmax(model.predict_on_batch(x), axis=-1), dataset)
    exported_accuracy = accuracy_of(predict_exported, dataset)
    drop = 100.0 * (keras_accuracy - exported_accuracy)
    return {
        "keras_accuracy": keras_accuracy,
        "exported_accuracy": exported_accuracy,
        "drop": drop,
        "max_drop": max_drop,
        "passed": drop <= max_drop,
    }


def verify_path(path: str) -> str:
    """`student.tflite` → `student.tflite.verify.json`: the check of the export in place."""
    return os.fspath(path) + ".verify.json"


def failed_verify_path(path: str) -> str:
    """`student.tflite` → `student.tflite.failed.verify.json`: the check of the last export that failed."""
    return os.fspath(path) + ".failed.verify.json"


def export_model(
    model: keras.Model,
    out: str,
    export_format: str,
    test_dataset,
    class_names,
    quantize: str = "none",
    representative: np.ndarray | None = None,
    max_drop: float = 1.0,
    reference: keras.Model | None = None,
) -> dict:
    """Exports, verifies, and puts the file in place only when verification passes.

    Args:
        model: the Keras model to export.
        out: the `.tflite` file or the SavedModel folder.
        export_format: `tflite` or `saved_model`.
        test_dataset: (images, labels) batches for the verification.
        class_names: carried in the SavedModel signature and in the verification JSON.
        quantize: TFLite quantization (see `tflite_bytes`); `saved_model` takes only `none`.
        representative: calibration images for `int8`.
        max_drop: largest accepted accuracy drop, in percentage points.
        reference: the model the accuracy is compared with; default `model` itself.

    Returns:
        The verification record (also written to `OUT.verify.json`).

    Raises:
        ExportVerificationError: when the drop exceeds `max_drop` (the export is discarded).
    """
    if export_format not in FORMATS:
        raise ValueError(f"unknown format '{export_format}'; choose one of: {', '.join(FORMATS)}")
    if export_format == "saved_model" and quantize != "none":
        raise ValueError("quantization applies to --format tflite only")
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    if export_format == "tflite":
        content = tflite_bytes(model, quantize, representative)
        return publish(out, "model.tflite", lambda staged: _write_bytes(staged, content), tflite_predict,
                       reference or model, test_dataset, class_names, max_drop,
                       {"format": "tflite", "quantize": quantize})  # fmt: skip
    return publish(out, "saved_model", lambda staged: write_saved_model(model, staged, class_names),
                   saved_model_predict, reference or model, test_dataset,
                   class_names, max_drop, {"format": "saved_model", "quantize": "none"})  # fmt: skip


def _write_bytes(path: str, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)


def publish(out, staged_name, write, load, reference, test_dataset, class_names, max_drop, details) -> dict:
    """Writes an export to a staging path, verifies it, and renames it to `out` only when it passes.

    Args:
        out: the final file or folder.
        staged_name: its name inside the staging folder.
        write: `write(staged_path)` writes the export.
        load: `load(staged_path)` returns `predict(images) -> class ids`.
        reference: the Keras model whose accuracy the export must keep.
        test_dataset, class_names, max_drop: see `export_model`.
        details: extra fields of the verification record.

    Returns:
        The verification record, also written to `OUT.verify.json`.
    """
    out = os.fspath(out)
    check_replaceable(out)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=folder)
    try:
        staged = os.path.join(work, staged_name)
        write(staged)
        record = verify(load(staged), reference, test_dataset, max_drop)
        record.update(details)
        record.update({"file": out, "class_names": [str(n) for n in class_names], "bytes": _size(staged)})
        if not record["passed"]:
            # Beside, not over, the record of the export already in place (which stays valid).
            artifacts.write_json(failed_verify_path(out), record)
            raise ExportVerificationError(
                f"exported model accuracy {record['exported_accuracy']:.4f} is {record['drop']:.2f} points below "
                f"the Keras model's {record['keras_accuracy']:.4f} (allowed {max_drop}); {out} was not written, "
                f"details in {failed_verify_path(out)}"
            )
        _put_in_place(staged, out)
        artifacts.write_json(verify_path(out), record)  # After the export it describes is in place.
        with contextlib.suppress(FileNotFoundError):
            os.remove(failed_verify_path(out))  # An earlier failure is no longer the latest word.
        return record
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def check_replaceable(out: str) -> None:
    """Refuses an `out` that exists and is not an earlier kdkeras export: one whose verification record
    (`OUT.verify.json`) names it. An export replaces its own earlier output, never a user's files or folders.

    Raises:
        ValueError: naming `out` and what to do.
    """
    if not os.path.lexists(out):
        return
    record = artifacts.read_json_or_none(verify_path(out))
    if isinstance(record, dict) and os.path.abspath(str(record.get("file", ""))) == os.path.abspath(out):
        return
    kind = "folder" if os.path.isdir(out) else "file"
    raise ValueError(
        f"{out} is an existing {kind} that no kdkeras export wrote (no {os.path.basename(verify_path(out))} beside "
        "it): choose another --out, or move it away first"
    )


def _put_in_place(staged: str, out: str) -> None:
    """Renames a verified export to its final path, replacing an older one (file or folder) only once the new one
    is there."""
    if not os.path.lexists(out):
        os.replace(staged, out)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old.", dir=os.path.dirname(os.path.abspath(out)))
    previous = os.path.join(old, "previous")
    os.replace(out, previous)
    try:
        os.replace(staged, out)
    except OSError:
        os.replace(previous, out)  # The old export stays in place.
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
