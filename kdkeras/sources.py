"""Dataset sources: where the images and labels of a dataset spec come from, read once into memory (or, for image
folders, into file paths decoded by the pipeline). `kdkeras.data` turns a source into tf.data pipelines.

Dataset specs:

- `fashion_mnist` — the offline default: Debian's `dataset-fashion-mnist` files in
  `/usr/share/datasets/fashion-mnist/`, else a prepared TFDS copy, else a TFDS download;
- `tfds:NAME` — any TFDS image-classification dataset (`tfds:cifar10`, `tfds:mnist`, …);
- `folder:PATH` — images in one sub-folder per class; `PATH/train/` and `PATH/test/` are the splits when present,
  else 20 % of the images are the test split, the same for every run (it does not follow `seed`: a model trained
  with any seed is evaluated on images it never saw);
- `idx:PATH` — a folder of MNIST-format IDX files (`train-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`, …).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
from collections import Counter

import numpy as np

from kdkeras.idx import IDXError, read_idx

logger = logging.getLogger("kdkeras")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# The formats tf.io.decode_image reads (PIL's names): a file's content decides, not its name.
_DECODABLE = ("PNG", "JPEG", "GIF", "BMP")
# Datasets whose classes change meaning when mirrored (digits, letters), and image folders, whose content kdkeras
# cannot know: no horizontal flip unless asked for. A wrong flip costs far more than a missing one gains (digits in
# an image folder: 0.82 test accuracy with flips, 0.91 without; experiments/results/small_data.md).
_NO_FLIP = ("mnist", "emnist", "kmnist", "svhn_cropped", "idx:", "folder:")


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message says what to install or pass."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset before splitting: in-memory arrays, or image file paths (decoded lazily) for folders."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    from_files: bool = False


def _read_idx_folder(path: str) -> Source:
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
        labels_file = find(prefix, "labels-idx1-ubyte")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"{labels_file}: labels are {labels.dtype}; class labels must be integers 0, 1, 2, …")
        if len(images) == 0:
            raise DatasetError(f"{find(prefix, 'images-idx3-ubyte')}: holds 0 images")
        if labels.min() < 0:
            raise DatasetError(f"{labels_file}: labels include {int(labels.min())}; class labels must be 0, 1, 2, …")
        arrays[split] = (images[..., None].astype(np.uint8), labels.astype(np.int32))
    train_classes = np.unique(arrays["train"][1])
    num_classes = int(train_classes[-1]) + 1
    if len(train_classes) != num_classes:
        missing = sorted(set(range(num_classes)) - set(train_classes.tolist()))
        raise DatasetError(
            f"{path}: the training labels go up to {num_classes - 1} but lack {_few(missing)}; class labels must be "
            "0, 1, 2, … without gaps"
        )
    unknown = sorted(set(np.unique(arrays["test"][1]).tolist()) - set(train_classes.tolist()))
    if unknown:
        raise DatasetError(f"{path}: the test labels include {_few(unknown)}, which no training image has")
    return Source(
        train=arrays["train"],
        test=arrays["test"],
        class_names=tuple(str(i) for i in range(num_classes)),
        input_shape=tuple(arrays["train"][0].shape[1:]),
    )


def _few(values: list[int]) -> str:
    return ", ".join(map(str, values[:5])) + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def _load_tfds(name: str, data_dir: str | None, download: bool = True) -> Source:
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
    return Source(train=train, test=test, class_names=class_names, input_shape=tuple(train[0].shape[1:]))


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


def _load_fashion_mnist(data_dir: str | None) -> Source:
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
    import warnings

    from PIL import Image, UnidentifiedImageError

    sizes, channels = Counter(), 1
    for path in paths:
        try:
            with warnings.catch_warnings():
                # PIL warns above MAX_IMAGE_PIXELS and refuses at twice that: both are a data error here.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    if image.format not in _DECODABLE:
                        raise DatasetError(
                            f"{path}: a {image.format} image; the training pipeline decodes {', '.join(_DECODABLE)} "
                            "only: convert it (e.g. to PNG)"
                        )
                    image.load()  # Decodes the pixels: Image.open alone reads only the header.
                    sizes[image.size] += 1
                    if image.mode not in ("L", "1", "I", "I;16", "F"):
                        channels = 3
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise DatasetError(
                f"{path}: too large an image (over {Image.MAX_IMAGE_PIXELS:,} pixels) to decode safely: resize it"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            if isinstance(error, DatasetError):
                raise
            raise DatasetError(f"{path}: not a readable image ({' '.join(str(error).split())})") from None
    (width, height), count = sizes.most_common(1)[0]
    if count != len(paths):
        logger.warning(
            "images have %d different sizes; all are resized to %dx%d (the most common)", len(sizes), width, height
        )
    return height, width, channels


def _read_folder(path: str, test_fraction: float, seed: int) -> Source:
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
    return Source(
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
def load_source(spec: str, data_dir: str | None) -> Source:
    """The source of a dataset spec, read once per process (cached per spec and data_dir).

    Raises:
        DatasetError: for an unknown spec, or a dataset missing, unreachable or unreadable.
    """
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


def default_flip(spec: str) -> bool:
    """Whether a horizontal flip keeps the class: not for digits and letters (mnist, svhn, …), IDX and image
    folders (pass `flip=True` for, e.g., a folder of photographs)."""
    name = spec.removeprefix("tfds:")
    return not any(name == key or name.startswith(key) for key in _NO_FLIP)
