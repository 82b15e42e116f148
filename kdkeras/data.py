"""Datasets: `load_dataset(spec, split, batch_size, ...)` → a batched `tf.data.Dataset` of (image, label) and a
`DatasetInfo`. The dataset specs (`fashion_mnist`, `tfds:NAME`, `folder:PATH`, `idx:PATH`) and where their images
come from are `kdkeras.sources`.

Images come out as float32 pixel values in [0, 255] (the models rescale them), labels as int32. The validation
split is carved from the training data by a seeded permutation, so `train` and `validation` never overlap and are
the same on every run with the same seed. Training order and augmentation are a pure function of (seed, epoch,
example index), which the teacher-output cache relies on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

# DatasetError and FASHION_MNIST_DIR are part of this module's interface too (re-exported).
from kdkeras.labels import check_labels
from kdkeras.sources import FASHION_MNIST_DIR, DatasetError, Source, default_flip, load_source  # noqa: F401

SPLITS = ("train", "validation", "test")


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


def _split_arrays(source: Source, split: str, validation_fraction: float, seed: int):
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
    unlabeled_examples: int = 0,
    augment_views: int | None = None,
    mixed_fraction: float = 0.0,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Loads one split of a dataset as a batched, prefetched `tf.data.Dataset`.

    Args:
        spec: `fashion_mnist`, `tfds:NAME`, `folder:PATH` or `idx:PATH` (see `kdkeras.sources`).
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
        clock: the `EpochClock` each pass draws its epoch from. Every pass (every Keras epoch, every `for` loop over
            the dataset) takes the clock's epoch and advances it by one, so plain `fit` sees a new order and new
            augmentation in every epoch; `kdkeras.callbacks.SetEpoch(clock)` sets it at each epoch's start, so
            that a resumed run sees the epochs it resumes at. Default: a clock of the dataset's own, from 0.
        epoch: a fixed epoch instead of a clock (the teacher-output cache precomputes epoch by epoch).
        teacher_logits: `epoch -> (num_examples, classes) float16 array` of cached teacher logits; batches are then
            `(images, {"labels": labels, "teacher_logits": logits})`, what `kdkeras.distiller.Distiller` takes.
        return_index: batches are `(images, labels, example indices)`.
        unlabeled_examples: `train` only: N more training images, the next ones after the labeled
            `max_examples`, without their labels (transfer images, on which only a teacher can teach). Batches
            are then `(images, {"labels", "labeled"})`: `labeled` is 1.0 for a labeled example and 0.0 for a
            transfer image, whose `labels` entry is 0 (with `return_index`, transfer images have label −1).
        augment_views: with `augment_images`, epoch e draws the augmentation of epoch e mod N (the order is still
            new every epoch): N distinct views of each image, so a teacher cache holds N epochs, not all (FKD,
            Shen & Xing 2022, stores a few crops per image). Default: a new augmentation every epoch. Without
            augmentation every epoch is the same view, and cached logits are read from epoch 0.
        mixed_fraction: `train` only: the share of the examples shown, in each view, as a mix `λ·a + (1 − λ)·b` of
            the example and another training image, λ uniform in [0, 1], without a label (`labeled` 0.0, as a
            transfer image): the student matches the teacher's function between the images, not only on them
            (function matching, Beyer et al. 2022). Which examples, partners and λ are a pure function of (seed,
            view, example index), so a teacher cache serves the mixed images too.

    Returns:
        `(dataset, info)`: batches of (float32 images in [0, 255], int32 labels) and a `DatasetInfo`.

    Raises:
        DatasetError: for an unknown spec, a missing or corrupt dataset, or a split too small.

    Example:
        >>> train, info = load_dataset("fashion_mnist", "train", 128, augment_images=True, max_examples=1000)
        >>> info.input_shape, info.num_classes
        ((28, 28, 1), 10)
    """
    source = load_source(spec, data_dir)
    x, y = _select(source, spec, split, validation_fraction, seed, max_examples, batch_size)
    if unlabeled_examples:
        x, y = _with_unlabeled(source, spec, split, validation_fraction, seed, x, y, unlabeled_examples)
    shuffle = split == "train" if shuffle is None else shuffle
    flip = default_flip(spec) if flip is None else flip
    views = distinct_views(augment_images, augment_views)
    mixing = _mixing(mixed_fraction, split)
    dataset = _pipeline(source, x, y, batch_size, seed, shuffle, augment_images, flip, drop_remainder, clock, epoch,
                        teacher_logits, return_index, bool(unlabeled_examples), views, mixing)  # fmt: skip
    return dataset, DatasetInfo(spec, len(source.class_names), source.class_names, source.input_shape, len(x))


def from_arrays(
    x,
    y,
    batch_size: int = 128,
    *,
    class_names=None,
    seed: int = 0,
    shuffle: bool = True,
    augment_images: bool = False,
    flip: bool = False,
    clock: EpochClock | None = None,
    name: str = "arrays",
    mixed_fraction: float = 0.0,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """`load_dataset`'s pipeline over in-memory arrays: the same seeded order and augmentation per pass.

    Args:
        x: `(examples, height, width, channels)` images (or `(examples, height, width)` gray ones), pixel values
            in [0, 255].
        y: `(examples,)` integer class labels 0, 1, 2, …
        class_names: one name per class; default `"0"`, `"1"`, … for `max(y) + 1` classes.
        seed, shuffle, augment_images, flip, clock, mixed_fraction: as for `load_dataset` (`flip` defaults to off:
            kdkeras cannot know whether mirroring keeps your classes).
        name: the `DatasetInfo.name`.

    Raises:
        ValueError: for images that are not a batch of images, labels that are not integers 0 … classes − 1, or
            counts that differ.

    Example:
        >>> train, info = from_arrays(np.zeros((8, 28, 28), "uint8"), np.arange(8) % 2, 4)
        >>> info.input_shape, info.num_classes
        ((28, 28, 1), 2)
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"images must be an (examples, height, width[, channels]) number array, got {x.shape}")
    num_classes = len(class_names) if class_names is not None else None
    y = check_labels(y, num_classes, "labels")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    class_names = tuple(class_names) if class_names is not None else tuple(str(k) for k in range(int(y.max()) + 1))
    source = Source((x, y), None, class_names, tuple(int(d) for d in x.shape[1:]))
    dataset = _pipeline(source, x, y, batch_size, seed, shuffle, augment_images, flip, False, clock, None, None, False,
                        views=None, mixing=_mixing(mixed_fraction, "train"))  # fmt: skip
    return dataset, DatasetInfo(name, len(class_names), class_names, source.input_shape, len(x))


def _mixing(fraction, split: str) -> float:
    """`mixed_fraction`, checked: a share in [0, 1], of the training split only."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"mixed_fraction must be a number in [0, 1], got {fraction!r}")
    if fraction and split != "train":
        raise DatasetError(f"mixed_fraction applies to the train split, not {split}")
    return float(fraction)


def _with_unlabeled(source: Source, spec: str, split: str, validation_fraction: float, seed: int, x, y, count: int):
    """The labeled `(x, y)` followed by the next `count` images of the training split, labeled −1."""
    if split != "train":
        raise DatasetError(f"unlabeled_examples apply to the train split, not {split}")
    if not isinstance(count, int) or count < 0:
        raise DatasetError(f"unlabeled_examples must be an integer >= 0, got {count!r}")
    rest, _ = _split_arrays(source, split, validation_fraction, seed)
    rest = rest[len(x) : len(x) + count]
    if len(rest) < count:
        raise DatasetError(
            f"{spec} has {len(rest)} training images beyond the {len(x)} labeled ones, fewer than the "
            f"{count} unlabeled_examples asked for"
        )
    return np.concatenate([x, rest]), np.concatenate([y, np.full(count, -1, y.dtype)])


def _pipeline(source: Source, x, y, batch_size, seed, shuffle, augment_images, flip, drop_remainder, clock, epoch,
              teacher_logits, return_index, unlabeled=False, views=None, mixing=0.0) -> tf.data.Dataset:  # fmt: skip
    """The batched pipeline of one split's arrays (see `load_dataset` for the arguments)."""
    augmentation = None
    if augment_images:
        augmentation = {"pad": max(2, min(source.input_shape[:2]) // 8), "flip": flip}
    unlabeled = unlabeled or mixing > 0  # A mixed image has no label either.
    targets = not return_index and (teacher_logits is not None or unlabeled)
    epoch_examples = _epoch_examples(source, x, y, seed, shuffle, augmentation, teacher_logits if targets else None,
                                     unlabeled and targets, views, mixing)  # fmt: skip
    if epoch is not None:
        dataset = epoch_examples(tf.constant(epoch, tf.int64))
    else:
        # The epoch is taken once per pass, when the pass starts (Keras starts one per epoch, after the callbacks'
        # on_epoch_begin): order and augmentation are a pure function of (seed, epoch, example index).
        clock = clock or EpochClock()
        dataset = tf.data.Dataset.from_tensors(0).map(lambda _: clock.take()).flat_map(epoch_examples)
    if not targets and not return_index:
        dataset = dataset.map(lambda image, label, index: (image, label))
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # flat_map hides the length; Keras needs it for `len()`, progress bars and schedules.
    batches = len(x) // batch_size if drop_remainder else -(-len(x) // batch_size)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _select(source: Source, spec: str, split: str, validation_fraction: float, seed: int, max_examples, batch_size):
    """The (x, y) arrays of one split after `max_examples`; every argument checked first."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    if not 0.0 <= validation_fraction <= 0.5:
        raise DatasetError(f"validation_fraction must be in [0, 0.5], got {validation_fraction}")
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
    if max_examples is not None and max_examples < 1:
        raise DatasetError(f"max_examples must be >= 1, got {max_examples}")
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
    return x, y


def distinct_views(augment_images: bool, augment_views: int | None) -> int | None:
    """How many distinct views of each image a training pipeline shows over its epochs: None for a new one every
    epoch, 1 without augmentation (what a teacher cache needs to hold, per epoch of `epoch mod views`)."""
    if augment_views is not None and (not isinstance(augment_views, int) or augment_views < 1):
        raise DatasetError(f"augment_views must be an integer >= 1, got {augment_views!r}")
    return augment_views if augment_images else 1


def _epoch_examples(source: Source, x, y, seed: int, shuffle: bool, augmentation: dict | None, teacher_logits,
                    unlabeled: bool = False, views: int | None = None, mixing: float = 0.0):  # fmt: skip
    """`epoch -> tf.data.Dataset` of one pass: `(image, label, index)`, or `(image, {"labels", "teacher_logits"})`
    with cached teacher logits (and `"labeled"` with unlabeled transfer images); order and augmentation are a pure
    function of (seed, epoch, example index)."""
    images, labels = tf.constant(x), tf.constant(y)
    num_classes = len(source.class_names)

    # Plain TensorFlow ops and Python-level branches: nothing for AutoGraph to convert (it tried, failed on the
    # closure and warned once per epoch, then ran the function as is, which is what this says up front).
    @tf.autograph.experimental.do_not_convert
    def view_of(index, epoch):
        image = images[index]
        if source.from_files:
            image, _ = _decode_file(image, None, source.input_shape)
        image = tf.cast(image, tf.float32)
        if augmentation is not None:
            image = augment(image, example_seed(seed, epoch, index), augmentation["pad"], augmentation["flip"])
        return image

    @tf.autograph.experimental.do_not_convert
    def example(index, epoch):
        image, label = view_of(index, epoch), tf.cast(labels[index], tf.int32)
        if mixing:
            mixed, partner, weight = mix_draw(seed, epoch, index, len(x), mixing)
            # tf.cond, not tf.where: the partner's view (a second file read and decode for a folder) only when used.
            image = tf.cond(mixed, lambda: weight * image + (1.0 - weight) * view_of(partner, epoch), lambda: image)
            label = tf.where(mixed, tf.constant(-1, tf.int32), label)  # Unlabeled, as a transfer image.
        return image, label, index

    def epoch_examples(epoch):
        order = epoch_order(len(x), seed, epoch) if shuffle else tf.range(len(x), dtype=tf.int32)
        view = epoch if views is None else epoch % views  # The augmentation (and cached logits) it shows.
        examples = tf.data.Dataset.from_tensor_slices(order).map(
            lambda index: example(index, view), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        if teacher_logits is None and not unlabeled:
            return examples
        if teacher_logits is not None:
            # One epoch of cached logits, `(num_examples, classes)`, read (memory-mapped) once per pass.
            logits = tf.numpy_function(lambda e: teacher_logits(int(e)), [view], tf.float16, stateful=False)
            logits = tf.ensure_shape(logits, [len(x), num_classes])

        def with_targets(image, label, index):
            targets = {"labels": tf.maximum(label, 0)}
            if unlabeled:
                targets["labeled"] = tf.cast(label >= 0, tf.float32)
            if teacher_logits is not None:
                targets["teacher_logits"] = tf.cast(tf.gather(logits, index), tf.float32)
            return image, targets

        return examples.map(with_targets)

    return epoch_examples


class EpochClock:
    """The current epoch, for what depends on it: a training pipeline's order and augmentation, a term's schedule.

    A `tf.Variable` that `kdkeras.callbacks.SetEpoch(clock)` sets at the start of every epoch (a resumed run to
    the epoch it resumes at, so it sees the same images as an uninterrupted one). A pipeline also advances its
    clock by one at every pass (`take`), so without the callback each pass is the next epoch.

    Args:
        variable: an int64 scalar variable to hold the epoch (a model's, so that it is saved with it); default a
            new one at 0.
    """

    def __init__(self, variable=None):
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch") if variable is None else variable

    def set(self, epoch: int) -> None:
        self.variable.assign(epoch)

    def __deepcopy__(self, memo):
        # A clock is a handle on the pipeline's variable: Keras Tuner deep-copies each trial's callbacks, and a
        # copied SetEpoch must still set the clock the shared pipeline reads.
        return self

    def take(self):
        """The current epoch, advancing the clock to the next one (a pass of a pipeline calls it once)."""
        return self.variable.assign_add(1, read_value=True) - 1


def epoch_order(num_examples: int, seed: int, epoch):
    """The order of the examples in one epoch: a permutation that is a pure function of (seed, epoch)."""
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)
    return tf.argsort(tf.random.stateless_uniform([num_examples], seed=key), stable=True)


def mix_draw(seed: int, epoch, index, num_examples: int, fraction: float):
    """Whether example `index` is mixed in `epoch`, its partner and its own weight λ: a pure function of (seed,
    epoch, index). The partner is uniform over the examples, λ uniform in [0, 1] (mixup with α = 1)."""
    # Epoch and index as int64 tensors: the key is then the pipeline's also when called with Python ints.
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 2], tf.int64), tf.cast(epoch, tf.int64))
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))
    draw = tf.random.stateless_uniform([3], seed=key)
    partner = tf.minimum(tf.cast(draw[1] * num_examples, tf.int32), num_examples - 1)
    return draw[0] < fraction, partner, draw[2]


def example_seed(seed: int, epoch, index):
    """The augmentation seed of one example in one epoch: a pure function of (seed, epoch, example index)."""
    key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 1], tf.int64), tf.cast(epoch, tf.int64))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))
