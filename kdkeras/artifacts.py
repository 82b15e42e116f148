"""Reading and writing artifacts: models and JSON files are written atomically and loaded in Keras' safe mode.

Atomic means: written to a temporary file in the same folder, flushed to disk, then renamed over the target, so an
interrupted save leaves the previous file intact and never a truncated one.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import tempfile
import zipfile

import keras


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # Not every file system lets a directory be opened.
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yields a temporary path beside `path`; on success it is fsync'ed and renamed to `path`, else removed.

    Args:
        path: the final file.
        suffix: ending the temporary file must have (Keras insists on `.keras` for models).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    # mkstemp creates the file readable by its owner only; give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike):
    """Holds an exclusive lock on an output for a whole run, so two runs never write the same files.

    The lock is `PATH.lock`, an `flock` that the kernel releases when the holder dies: a lock file left by a killed
    run is recognised as stale and taken over. Holding it, temporary files that an interrupted save of the same
    output left behind are removed.

    Raises:
        OSError: one line naming the process that holds the lock.
    """
    import fcntl

    path = os.fspath(path)
    lock_path = f"{path}.lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OSError(
            f"{path} is being written by another kdkeras run (pid {holder}); wait for it to finish or choose "
            "another output"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    remove_stale_temporaries(path)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock_path)
        os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Removes the temporary files (`.NAME.*.tmp*`) an interrupted atomic save of `path` left; returns them."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    stale = [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(prefix) and ".tmp" in f]
    for name in stale:
        with contextlib.suppress(OSError):
            os.remove(name)
    return stale


def read_json_or_none(path: str | os.PathLike):
    """The JSON in `path`, or None when it is missing or unreadable (for records a run can do without)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str | os.PathLike, data) -> None:
    """Writes `data` as indented JSON, atomically."""
    with atomic_path(path, ".json") as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a text file atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def save_figure(figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Saves a matplotlib figure as PNG, atomically."""
    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, dpi=dpi)


def save_model(model: keras.Model, path: str | os.PathLike, include_optimizer: bool = False) -> None:
    """Saves a model in the `.keras` format, atomically.

    Args:
        model: the model.
        path: a `.keras` file.
        include_optimizer: keep the optimizer state. Off by default: finished models are for inference and
            distillation (interrupted training resumes from its checkpoint folder instead), and Adam's state
            triples the file (measured: 27.1 MB instead of 9.1 MB for `alexnet`).
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"model files end in .keras, got {path}")
    # from_config rebuilds functional and sequential models; subclassed ones (a Distiller) are saved whole.
    rebuildable = isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"
    if not include_optimizer and getattr(model, "optimizer", None) is not None and rebuildable:
        weights = model.get_weights()
        model = model.__class__.from_config(model.get_config())  # Uncompiled (clone_model copies the optimizer).
        model.set_weights(weights)
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)


def config_path(model_path: str | os.PathLike) -> str:
    """The run-configuration JSON beside a model: `student.keras` → `student.config.json`."""
    return os.fspath(model_path).removesuffix(".keras") + ".config.json"


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Loads a `.keras` model with safe mode on (no code from the file runs).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not a valid .keras file, or would need safe mode off (a Lambda layer).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return load_saved_model(path)
        raise ValueError(f"{path} is a folder, not a model: give a .keras file or a SavedModel folder")
    if not os.path.isfile(path):
        hint = "" if path.endswith(".keras") else " (a trained .keras file goes here; `kdkeras train` makes one)"
        raise FileNotFoundError(f"model file not found: {path}{hint}")
    if not zipfile.is_zipfile(path):  # Keras' own message for this case is "File not found".
        raise ValueError(f"{path}: not a valid .keras file (a .keras model is a zip archive; this file is not)")
    try:
        _import_defining_modules(path)
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # Keras raises zipfile, OS, value and type errors for broken files.
        message = first_line(error)
        if "safe_mode" in str(error) or "Lambda" in str(error):
            raise ValueError(
                f"{path}: refused: the model contains code (e.g. a Lambda layer), which kdkeras never loads"
            ) from None
        unknown = re.search(r"Could not locate class '([^']+)'", str(error))
        if unknown:  # Keras' first line only says that the outer model "could not be deserialized properly".
            raise ValueError(
                f"{path}: uses the class '{unknown.group(1)}', which is neither Keras' nor kdkeras': in a script, "
                "import the module that defines it before loading; or save the model without custom classes"
            ) from None
        raise ValueError(f"{path}: not a valid .keras file ({type(error).__name__}: {message})") from None


def load_saved_model(path: str) -> keras.Model:
    """A TensorFlow SavedModel folder as a Keras model (inference only: a teacher, or a model to evaluate).

    Its `serving_default` signature runs inside a `keras.layers.TFSMLayer`; it must take one image batch and return
    one logits tensor. Its layers cannot be tapped, so it serves the terms that read the teacher's output only.

    Raises:
        ValueError: without such a signature.
    """
    import tensorflow as tf

    try:
        signature = tf.saved_model.load(path).signatures.get("serving_default")
    except Exception as error:  # TensorFlow raises several types for a damaged folder.
        raise ValueError(f"{path}: not a readable SavedModel ({type(error).__name__}: {first_line(error)})") from None
    if signature is None:
        raise ValueError(f"{path}: a SavedModel without a 'serving_default' signature, which kdkeras calls")
    inputs, outputs = signature.structured_input_signature[1], signature.structured_outputs
    if len(inputs) != 1 or not isinstance(outputs, dict) or len(outputs) != 1:
        raise ValueError(
            f"{path}: its serving signature takes {sorted(inputs)} and returns {sorted(outputs)}; kdkeras needs "
            "one image input and one logits output"
        )
    spec = next(iter(inputs.values()))
    images = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name)
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default", trainable=False)
    logits = layer(images)[next(iter(outputs))]
    return keras.Model(images, logits, name=os.path.basename(os.path.normpath(path)))


def first_line(error: Exception) -> str:
    """An exception's first line of text (its type's name when it has none), for one-line messages."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _import_defining_modules(path: str) -> None:
    """Imports the kdkeras modules that define the classes a saved model uses, so that their Keras registrations
    exist before Keras deserializes them.

    The saving layer stays below the models: it imports nothing of kdkeras up front, and reads the defining module
    of each class from the file itself (Keras records it next to the class name). Only `kdkeras.*` modules are
    imported: safe mode still means that no code named by a file runs, only kdkeras' own.
    """
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    modules = set()

    def visit(node):
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str) and module.startswith("kdkeras."):
                modules.add(module)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    for module in sorted(modules):
        importlib.import_module(module)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of a model's weights (values, shapes and dtypes, in order): equal digests mean bit-identical weights.

    Used to check that every worker of a multi-worker run trained the same model as the chief saved.
    """
    import hashlib

    digest = hashlib.sha256()
    for weight in model.weights:
        value = keras.ops.convert_to_numpy(weight)
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def architecture_digest(model: keras.Model) -> str:
    """SHA-256 of a model's architecture, blind to the layer names Keras generates.

    Building the same model twice in one process names its layers `conv2d`, then `conv2d_1`: the configs differ
    though the networks are the same (a notebook cell run again after an interrupt). Keras' own weight files address
    layers by class for this reason. Here every name becomes its rank of first appearance in the config, so two
    builds of one architecture give one digest and a change of layers, shapes or wiring gives another.
    """
    import hashlib
    import json

    text = json.dumps(model.get_config(), sort_keys=True, default=str)
    # Keras' own walk over nested layers: the public `Sequential.layers` leaves out the input layer, whose
    # generated name (`input_layer_3`) is in the config too.
    names = {layer.name for layer in model._flatten_layers(include_self=True)}
    quoted = sorted((f'"{name}"' for name in names), key=lambda q: (text.find(q) < 0, text.find(q)))
    for rank, name in enumerate(quoted):
        text = text.replace(name, f'"#{rank}"')  # Whole quoted strings only: `conv2d` never hits `conv2d_1`.
    return hashlib.sha256(text.encode()).hexdigest()
