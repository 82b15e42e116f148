"""Shared fixtures: small generated datasets and tiny models, so the suite stays fast on 2 CPU cores."""

import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorBoard logs of commands run without --logdir go here, not into the repository's runs/ (also for the
# subprocesses the CLI tests start, which inherit the environment).
if "KDKERAS_RUNS_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["KDKERAS_RUNS_DIR"] = tempfile.mkdtemp(prefix="kdkeras-test-runs-")
    atexit.register(shutil.rmtree, os.environ["KDKERAS_RUNS_DIR"], ignore_errors=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy can be tested without GPUs (test_distribute.py). It must happen
# before TensorFlow starts its runtime; everything else keeps running on /cpu:0 under the default strategy.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

# Grappler's graph optimizations cost more than they save on the tests' tiny models (a first fit 2.6 s against
# 3.0 s, alternated in one process) and no result of the library depends on them. In this process only: the CLI,
# README and demo subprocesses run TensorFlow as users do. KDKERAS_TEST_GRAPPLER=1 keeps them on.
if os.environ.get("KDKERAS_TEST_GRAPPLER") != "1":
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

from kdkeras.data import FASHION_MNIST_DIR  # noqa: E402

requires_fashion_mnist = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist not installed (make install installs it)",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder, n_train=60, n_test=20, size=28, classes=3, seed=0):
    """Writes the four MNIST-format gzip files; class k images are brighter with k, so they are learnable."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, classes, n).astype(np.uint8)
        images = (rng.integers(0, 60, (n, size, size)) + labels[:, None, None] * 80).astype(np.uint8)
        with gzip.open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "wb") as f:
            f.write(idx_bytes(images))
        with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(idx_bytes(labels))
    return folder


def tiny_classifier(classes, input_shape=(28, 28, 1), name="tiny"):
    """A two-convolution functional classifier whose layers carry the stage names of kdkeras' models (`stage3`,
    `stage5`, `logits`), so feature terms can tap it. For tests of mechanics (checkpoints, resuming, tuning, workers,
    the teacher cache): a 2-epoch fit of a one-convolution model took 0.9 s against 5.5 s for ds_alexnet width 0.25
    (alternated), nearly all of that Keras tracing the graph."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="stage3")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="stage5")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x), name=name)


def idx_dataset_and_teacher(root, n_train, n_test, classes):
    """A generated `idx:` dataset under `root` and an (untrained, seeded) `tiny_classifier` saved beside it as the
    teacher.

    Returns:
        `(dataset spec, teacher .keras path)`.
    """
    from kdkeras import artifacts

    dataset = f"idx:{write_idx_folder(os.path.join(root, 'idx'), n_train=n_train, n_test=n_test, classes=classes)}"
    keras.utils.set_random_seed(0)
    teacher = os.path.join(root, "teacher.keras")
    artifacts.save_model(tiny_classifier(classes, name="teacher"), teacher)
    return dataset, teacher


@pytest.fixture
def idx_folder(tmp_path):
    return write_idx_folder(str(tmp_path / "idx"))


@pytest.fixture(scope="session")
def mirrored_two_cpus():
    """One MirroredStrategy over the two logical CPUs for the whole session: a second MirroredStrategy in the same
    process aborts synchronized batch normalization with "Shape mismatch in the collective instance" (TF 2.21)."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def pytest_collection_modifyitems(config, items):
    """The end-to-end (`slow`) modules first. Under `--dist loadscope` (the Makefile's) each module goes whole to
    one worker, so its module-scoped fixtures (a trained student, a finished experiment) are built once; handing
    out the long modules before the short ones keeps both workers busy to the end instead of one finishing a long
    module alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # A stable sort: files keep their order.
