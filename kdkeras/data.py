"""Datasets: `load_dataset(spec, split, batch_size, ...)` → a batched `tf.data.Dataset` of (image, label) and a
`DatasetInfo`.

Dataset specs:

- `fashion_mnist` — the offline default: Debian's `dataset-fashion-mnist` files in
  `/usr/share/datasets/fashion-mnist/`, else a prepared TFDS copy, else a TFDS download;
- `tfds:NAME` — any TFDS image-classification dataset (`tfds:cifar10`, `tfds:mnist`, …);
- `folder:PATH` — images in one sub-folder per class; `PATH/train/` and `PATH/test/` are the splits when present,
  else 20 % of the images are the test split, the same for every run (it does not follow `seed`: a model trained
  with any seed is evaluated on images it never saw);
- `idx:PATH` — a folder of MNIST-format IDX files (`train-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`, …).

Images come out as float32 pixel values in [0, 255] (the models rescale them), labels as int32. The validation
split is carved from the training data by a seeded permutation, so `train` and `validation` never overlap and are
the same on every run with the same seed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
from collections import Counter

import numpy as np
import tensorflow as tf

from kdkeras.idx import IDXError, read_idx

logger = logging.getLogger("kdkeras")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "validation", "test")
# Datasets whose classes change meaning when mirrored (digits, letters), and image folders, whose content kdkeras
# cannot know: no horizontal flip unless asked for. A wrong flip costs far more than a missing one gains (digits in
# an image folder: 0.82 test accuracy with flips, 0.91 without; experiments/results/small_data.md).
_NO_FLIP = ("mnist", "emnist", "kmnist", "svhn_cropped", "idx:", "folder:")


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message says what to install or pass."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: the spec it was loaded from.
        num_classes: number of classes.
        class_names: one name per label, in label order.
        input_shape: `(height, width, channels)` of the images.
        num_examples: examples in the loaded split (after `max_examples`).
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    num_examples: int


@dataclasses.dataclass(frozen=True)
class _Source:
    """A dataset before splitting: in-memory arrays, or image file paths (decoded lazily) for folders."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    from_files: bool = False


# --------------------------------------------------------------------------------------------------- sources


def _read_idx_folder(path: str) -> _Source:
    """`idx:PATH`: the four MNIST-format files (gzip or not) in one folder."""
    if not os.path.isdir(path):
        raise DatasetError(f"idx dataset folder not found: {path}")

    def find(prefix: str, kind: str) -> str:
        for suffix in (".gz", ""):
            candidate = os.path.join(path, f"{prefix}-{kind}{suffix}")
            if os.path.exists(candidate):
                return candidate
        raise DatasetError(f"{path}: missing {prefix}-{kind}[.gz] (an idx: folder holds the 4 MNIST-format files)")

    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(find(prefix, "images-idx3-ubyte"))
        labels = read_idx(find(prefix, "labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{path}: {split} images {images.shape} and labels {labels.shape} do not match")
        if labels.size and labels.min() < 0:
            raise DatasetError(f"{path}: {split} labels include {int(labels.min())}; class labels must be 0, 1, 2, …")
        arrays[split] = (images[..., None].astype(np.uint8), labels.astype(np.int32))
    num_classes = int(max(arrays["train"][1].max(), arrays["test"][1].max())) + 1
    return _Source(
        train=arrays["train"],
        test=arrays["test"],
        class_names=tuple(str(i) for i in range(num_classes)),
        input_shape=tuple(arrays["train"][0].shape[1:]),
    )


def _load_tfds(name: str, data_dir: str | None, download: bool = True) -> _Source:
    """`tfds:NAME` through tensorflow-datasets, loaded into memory (sized for MNIST/CIFAR-scale datasets)."""
    import tensorflow_datasets as tfds  # Imported lazily: it takes seconds and most runs do not need it.

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises its own DatasetNotFoundError and others.
        raise DatasetError(f"unknown TFDS dataset '{name}': {error}".splitlines()[0]) from None
    if not download and not builder.is_prepared():
        raise DatasetError(f"TFDS dataset '{name}' is not prepared in {builder.data_dir}")
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise DatasetError(f"TFDS dataset '{name}' has no (image, label) supervised keys")
    label_feature = builder.info.features[keys[1]]
    class_names = tuple(label_feature.names)
    if not builder.is_prepared() and not _can_reach(TFDS_HOST):
        raise DatasetError(
            f"could not load TFDS dataset '{name}': it is not prepared in {builder.data_dir} and {TFDS_HOST[0]} is "
            "unreachable (no internet access? pass --data-dir with a prepared copy, or use idx:PATH / folder:PATH)"
        )
    try:
        builder.download_and_prepare()
        arrays = {}
        for split in ("train", "test", "validation"):
            if builder.info.splits and split not in builder.info.splits:
                continue
            # Batches rather than `batch_size=-1`, which aborts the process on datasets of unknown size.
            batches = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(1024)))
            if not batches:
                continue
            images, labels = (np.concatenate(parts) for parts in zip(*batches, strict=True))
            arrays[split] = (images.astype(np.uint8), labels.astype(np.int32))
    except DatasetError:
        raise
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(
            f"could not load TFDS dataset '{name}' (no internet access? pass --data-dir with a prepared copy, "
            f"or use idx:PATH / folder:PATH): {first_line}"
        ) from None
    train = arrays["train"]
    test = arrays.get("test", arrays.get("validation"))
    if train[0].ndim != 4:
        raise DatasetError(f"TFDS dataset '{name}' images have shape {train[0].shape[1:]}, need (H, W, C)")
    return _Source(train=train, test=test, class_names=class_names, input_shape=tuple(train[0].shape[1:]))


# Where TFDS downloads most datasets from; checked before a download, because TFDS' own retries take minutes to
# give up on a machine without internet access.
TFDS_HOST = ("storage.googleapis.com", 443)


def _can_reach(address: tuple[str, int], timeout: float = 5.0) -> bool:
    """Whether a TCP connection to `address` opens within `timeout` seconds (true behind a configured proxy, whose
    reachability only the download itself can tell)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def _load_fashion_mnist(data_dir: str | None) -> _Source:
    """The embedded default: Debian's files first (offline), then a prepared TFDS copy, then a TFDS download."""
    if os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")):
        source = _read_idx_folder(FASHION_MNIST_DIR)
        return dataclasses.replace(source, class_names=FASHION_MNIST_CLASSES)
    try:
        return _load_tfds("fashion_mnist", data_dir)
    except DatasetError as error:
        raise DatasetError(
            f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: install it with "
            "'sudo apt-get update && sudo apt-get install dataset-fashion-mnist' (or run 'make install'), "
            f"or pass --dataset tfds:fashion_mnist with internet access ({error})"
        ) from None


def _list_images(folder: str) -> tuple[list[str], list[int], list[str]]:
    """Image paths and labels of a one-sub-folder-per-class tree; non-image files are skipped with a warning."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DatasetError(f"{folder}: no class sub-folders (expected one sub-folder of images per class)")
    paths, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(class_dir) if not f.startswith("."))
        images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        skipped += [os.path.join(class_dir, f) for f in files if f not in images]
        if not images:
            raise DatasetError(f"{class_dir}: class folder '{name}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += [os.path.join(class_dir, f) for f in images]
        labels += [label] * len(images)
    if skipped:
        logger.warning("skipped %d non-image file(s) in %s, e.g. %s", len(skipped), folder, skipped[0])
    return paths, labels, classes


def _folder_geometry(paths: list[str]) -> tuple[int, int, int]:
    """The common (height, width, channels): the most frequent size; RGB if any image has colour.

    Every image is decoded once, fully, so that a truncated or corrupt file is named here rather than ending the
    run mid-epoch in a TensorFlow decode error. It costs one decode per image before training, measured on this
    2-core machine while it trained: the 1,797 32-px PNGs of experiments/small_data.py in 0.6 s, 224-px JPEGs at
    1.2 ms each (about 2 minutes for 100,000 photographs).
    """
    from PIL import Image, UnidentifiedImageError

    sizes, channels = Counter(), 1
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()  # Decodes the pixels: Image.open alone reads only the header.
                sizes[image.size] += 1
                if image.mode not in ("L", "1", "I", "I;16", "F"):
                    channels = 3
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DatasetError(f"{path}: not a readable image ({' '.join(str(error).split())})") from None
    (width, height), count = sizes.most_common(1)[0]
    if count != len(paths):
        logger.warning(
            "images have %d different sizes; all are resized to %dx%d (the most common)", len(sizes), width, height
        )
    return height, width, channels


def _read_folder(path: str, test_fraction: float, seed: int) -> _Source:
    """`folder:PATH`, with `PATH/train` and `PATH/test` as splits when both exist, else a seeded test split."""
    if not os.path.isdir(path):
        raise DatasetError(f"image folder not found: {path}")
    if os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test")):
        train_paths, train_labels, classes = _list_images(os.path.join(path, "train"))
        test_paths, test_labels, test_classes = _list_images(os.path.join(path, "test"))
        if test_classes != classes:
            raise DatasetError(f"{path}: train/ and test/ have different class folders")
    else:
        all_paths, all_labels, classes = _list_images(path)
        order = np.random.default_rng(seed).permutation(len(all_paths))
        n_test = int(round(len(order) * test_fraction))
        if n_test < 1 or n_test >= len(order):
            raise DatasetError(f"{path}: {len(order)} images are too few to split off a test set")
        pick = lambda idx: ([all_paths[i] for i in idx], [all_labels[i] for i in idx])  # noqa: E731
        (test_paths, test_labels), (train_paths, train_labels) = pick(order[:n_test]), pick(order[n_test:])
    shape = _folder_geometry(train_paths + test_paths)
    as_arrays = lambda p, y: (np.array(p), np.array(y, np.int32))  # noqa: E731
    return _Source(
        train=as_arrays(train_paths, train_labels),
        test=as_arrays(test_paths, test_labels),
        class_names=tuple(classes),
        input_shape=shape,
        from_files=True,
    )


# The test split of a folder without train/ and test/ is a property of the dataset, not of a run: with the run's
# seed, `kdkeras evaluate` (seed 0) would score a model trained with seed 3 partly on its own training images.
FOLDER_TEST_SPLIT_SEED = 0


@functools.lru_cache(maxsize=4)  # One read per dataset and process, however many splits a run loads.
def _load_source(spec: str, data_dir: str | None) -> _Source:
    kind, _, arg = spec.partition(":")
    try:
        if spec == "fashion_mnist":
            return _load_fashion_mnist(data_dir)
        if kind == "tfds" and arg:
            return _load_tfds(arg, data_dir)
        if kind == "idx" and arg:
            return _read_idx_folder(arg)
        if kind == "folder" and arg:
            return _read_folder(arg, test_fraction=0.2, seed=FOLDER_TEST_SPLIT_SEED)
    except (IDXError, FileNotFoundError) as error:
        raise DatasetError(str(error)) from None
    raise DatasetError(
        f"unknown dataset '{spec}'; use fashion_mnist, tfds:NAME (e.g. tfds:cifar10), folder:PATH or idx:PATH"
    )


# --------------------------------------------------------------------------------------------------- pipeline


def default_flip(spec: str) -> bool:
    """Whether a horizontal flip keeps the class: not for digits and letters (mnist, svhn, …), IDX and image
    folders (pass `flip=True` for, e.g., a folder of photographs)."""
    name = spec.removeprefix("tfds:")
    return not any(name == key or name.startswith(key) for key in _NO_FLIP)


def _split_arrays(source: _Source, split: str, validation_fraction: float, seed: int):
    """The (x, y) arrays of one split; validation is a seeded carve-out of the training data."""
    if split == "test":
        if source.test is None:
            raise DatasetError("this dataset has no test split")
        return source.test
    x, y = source.train
    n_val = int(round(len(x) * validation_fraction))
    if validation_fraction > 0 and (n_val < 1 or n_val >= len(x)):
        raise DatasetError(f"{len(x)} training examples are too few for validation_fraction={validation_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    idx = order[:n_val] if split == "validation" else order[n_val:]
    return x[idx], y[idx]


def _decode_file(path, label, input_shape):
    height, width, channels = input_shape
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image = tf.image.resize(image, (height, width))  # A no-op for images already of that size.
    image.set_shape(input_shape)
    return image, label


def augment(image, seed, pad: int, flip: bool):
    """Random crop after zero-padding by `pad` pixels, then an optional horizontal flip (stateless, seeded)."""
    height, width, _ = image.shape
    padded = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
    image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed[::-1])
    return image


def load_dataset(
    spec: str = "fashion_mnist",
    split: str = "train",
    batch_size: int = 128,
    *,
    validation_fraction: float = 0.1,
    seed: int = 0,
    shuffle: bool | None = None,
    augment_images: bool = False,
    flip: bool | None = None,
    max_examples: int | None = None,
    data_dir: str | None = None,
    drop_remainder: bool = False,
    clock: EpochClock | None = None,
    epoch: int | None = None,
    teacher_logits=None,
    return_index: bool = False,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Loads one split of a dataset as a batched, prefetched `tf.data.Dataset`.

    Args:
        spec: `fashion_mnist`, `tfds:NAME`, `folder:PATH` or `idx:PATH` (see the module docstring).
        split: `train`, `validation` (carved from the training data) or `test`.
        batch_size: examples per batch (the global batch under a `tf.distribute` strategy).
        validation_fraction: share of the training data held out as `validation`, in [0, 0.5].
        seed: seeds the validation carve-out, the shuffling and the augmentation.
        shuffle: a new order every epoch (a pure function of seed and epoch); default: only for `train`.
        augment_images: random crop with padding (and flip, see `flip`); for training.
        flip: horizontal flips when augmenting; default: `default_flip(spec)`.
        max_examples: keep only the first N examples of the split (after the seeded permutation), for quick runs.
        data_dir: TFDS data directory.
        drop_remainder: drop the last partial batch.
        clock: the `EpochClock` whose epoch each pass draws its order and augmentation for (set it with
            `kdkeras.callbacks.SetEpoch`); without one every pass is epoch 0.
        epoch: a fixed epoch instead of a clock (the teacher-output cache precomputes epoch by epoch).
        teacher_logits: `epoch -> (num_examples, classes) float16 array` of cached teacher logits; batches are then
            `(images, {"labels": labels, "teacher_logits": logits})`, what `kdkeras.distiller.Distiller` takes.
        return_index: batches are `(images, labels, example indices)`.

    Returns:
        `(dataset, info)`: batches of (float32 images in [0, 255], int32 labels) and a `DatasetInfo`.

    Raises:
        DatasetError: for an unknown spec, a missing or corrupt dataset, or a split too small.

    Example:
        >>> train, info = load_dataset("fashion_mnist", "train", 128, augment_images=True, max_examples=1000)
        >>> info.input_shape, info.num_classes
        ((28, 28, 1), 10)
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    if not 0.0 <= validation_fraction <= 0.5:
        raise DatasetError(f"validation_fraction must be in [0, 0.5], got {validation_fraction}")
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
    if max_examples is not None and max_examples < 1:
        raise DatasetError(f"max_examples must be >= 1, got {max_examples}")
    source = _load_source(spec, data_dir)
    x, y = _split_arrays(source, split, validation_fraction, seed)
    if max_examples is not None:
        if split == "test":  # The test files are ordered; subsample them without bias.
            keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:max_examples])
            x, y = x[keep], y[keep]
        else:
            x, y = x[:max_examples], y[:max_examples]
    if len(x) == 0:
        raise DatasetError(f"the {split} split of {spec} is empty")
    if len(source.class_names) < 2:
        raise DatasetError(f"{spec} has {len(source.class_names)} class: a classifier needs at least 2")
    info = DatasetInfo(
        name=spec,
        num_classes=len(source.class_names),
        class_names=source.class_names,
        input_shape=source.input_shape,
        num_examples=len(x),
    )

    shuffle = split == "train" if shuffle is None else shuffle
    pad = max(2, min(source.input_shape[:2]) // 8)
    do_flip = default_flip(spec) if flip is None else flip
    images, labels = tf.constant(x), tf.constant(y)

    # Plain TensorFlow ops and Python-level branches: nothing for AutoGraph to convert (it tried, failed on the
    # closure and warned once per epoch, then ran the function as is, which is what this says up front).
    @tf.autograph.experimental.do_not_convert
    def example(index, epoch):
        image = images[index]
        if source.from_files:
            image, _ = _decode_file(image, None, source.input_shape)
        image = tf.cast(image, tf.float32)
        if augment_images:
            image = augment(image, example_seed(seed, epoch, index), pad, do_flip)
        return image, tf.cast(labels[index], tf.int32), index

    def epoch_examples(epoch):
        order = epoch_order(len(x), seed, epoch) if shuffle else tf.range(len(x), dtype=tf.int32)
        examples = tf.data.Dataset.from_tensor_slices(order).map(
            lambda index: example(index, epoch), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if teacher_logits is None:
            return examples
        # One epoch of cached logits, `(num_examples, classes)`, read (memory-mapped) once per pass.
        logits = tf.numpy_function(lambda e: teacher_logits(int(e)), [epoch], tf.float16, stateful=False)
        logits = tf.ensure_shape(logits, [len(x), len(source.class_names)])
        return examples.map(
            lambda image, label, index: (
                image,
                {"labels": label, "teacher_logits": tf.cast(tf.gather(logits, index), tf.float32)},
            )
        )

    if epoch is not None:
        dataset = epoch_examples(tf.constant(epoch, tf.int64))
    else:
        # The epoch is read once per pass, when the pass starts (Keras starts one per epoch, after the callbacks'
        # on_epoch_begin): order and augmentation are a pure function of (seed, epoch, example index).
        clock = clock or EpochClock()
        dataset = tf.data.Dataset.from_tensors(0).map(lambda _: clock.variable.read_value()).flat_map(epoch_examples)
    if teacher_logits is None and not return_index:
        dataset = dataset.map(lambda image, label, index: (image, label))
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # flat_map hides the length; Keras needs it for `len()`, progress bars and schedules.
    batches = len(x) // batch_size if drop_remainder else -(-len(x) // batch_size)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(tf.data.AUTOTUNE), info


class EpochClock:
    """The epoch a training pipeline draws its order and augmentation for.

    A `tf.Variable` that `kdkeras.callbacks.SetEpoch(clock)` sets at the start of every epoch; resumed runs set it
    to the epoch they resume at, so a resumed run sees the same images as an uninterrupted one.
    """

    def __init__(self):
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")

    def set(self, epoch: int) -> None:
        self.variable.assign(epoch)


def epoch_order(num_examples: int, seed: int, epoch):
    """The order of the examples in one epoch: a permutation that is a pure function of (seed, epoch)."""
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)
    return tf.argsort(tf.random.stateless_uniform([num_examples], seed=key), stable=True)


def example_seed(seed: int, epoch, index):
    """The augmentation seed of one example in one epoch: a pure function of (seed, epoch, example index)."""
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 1], tf.int64), epoch)
    return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))
