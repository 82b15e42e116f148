"""Teacher-output cache: the teacher's logits for every (epoch, training example), computed once, reused by every
student, seed-mate row and tuner trial that trains on the same images.

The training pipeline's order and augmentation are a pure function of (seed, epoch, example index)
(`kdkeras.data.epoch_order`, `kdkeras.data.example_seed`), so the image a student sees at epoch e is known before
training: the teacher sees exactly that augmented view (Beyer et al., "Knowledge distillation: A good teacher is
patient and consistent", CVPR 2022), as in FKD (Shen & Xing, ECCV 2022), which stores soft labels per crop.

Layout: `ROOT/FINGERPRINT/logits.npy`, float16 `(epochs, examples, classes)`, memory-mapped, and `meta.json`. The
fingerprint covers the teacher's weights, the dataset and its split, the seed, the augmentation settings and the
number of epochs: any change makes a new cache. A cache is computed in `ROOT/FINGERPRINT.partial/`, epoch by
epoch (a killed precompute resumes at the first unfinished epoch), and renamed into place only when complete.
All classes are stored (10 classes: 20 bytes per example and epoch); top-k storage for large label spaces is not
implemented.

The validation split is never augmented, so the teacher's logits on it are the same every epoch:
`with_teacher_logits` computes them once per run, in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from kdkeras import artifacts
from kdkeras.adapters import on_images_of
from kdkeras.data import distinct_views, load_dataset
from kdkeras.evaluation import carve_out
from kdkeras.models import signature

# What a cached run's pipeline depends on (TrainConfig fields); the rest (lr, optimizer, …) does not change the images.
_DATA_FIELDS = ("dataset", "data_dir", "seed", "max_train_examples", "validation_fraction", "augment", "flip")


def fingerprint(teacher, config) -> str:
    """A digest of everything the cached logits depend on: teacher weights, data, seed, augmentation, epochs."""
    return _key(_data_spec(teacher, config), config.epochs)


def _data_spec(teacher, config) -> dict:
    spec = {field: getattr(config, field) for field in _DATA_FIELDS}
    if config.unlabeled_examples:  # Only when set: caches made before it existed keep their fingerprints.
        spec["unlabeled_examples"] = config.unlabeled_examples
    if config.mixed_fraction:
        spec["mixed_fraction"] = config.mixed_fraction
    spec.update(teacher=artifacts.weights_digest(teacher), version=1)
    return spec


def _key(data_spec: dict, epochs: int) -> str:
    return hashlib.sha256(json.dumps({**data_spec, "epochs": epochs}, sort_keys=True).encode()).hexdigest()[:20]


# How many epochs a sibling cache may hold for `prepare` to find it (a key per count is hashed: microseconds each).
_MAX_SIBLING_EPOCHS = 1000


def _siblings(root: str, data_spec: dict) -> dict[int, str]:
    """Complete caches in `root` of the same teacher and data for any number of epochs: `{epochs: path}`.

    Epoch e's images are a pure function of (seed, epoch, example), whatever the run's length, so these hold the
    same logits for the epochs they share."""
    if not os.path.isdir(root):
        return {}
    present = set(os.listdir(root))
    keys = {_key(data_spec, epochs): epochs for epochs in range(1, _MAX_SIBLING_EPOCHS + 1)}
    return {
        keys[name]: os.path.join(root, name)
        for name in present & set(keys)
        if os.path.exists(os.path.join(root, name, "meta.json"))
    }


class TeacherCache:
    """A complete cache on disk: `epoch_logits(e)` is the `(examples, classes)` float16 array of epoch e.

    Build one with `TeacherCache.prepare(teacher, config, root)`.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            with open(os.path.join(path, "meta.json")) as f:
                self.meta = json.load(f)
            self._logits = np.load(os.path.join(path, "logits.npy"), mmap_mode="r")
        except (OSError, ValueError) as error:  # numpy: "mmap length is greater than file size", json, ...
            raise DamagedCacheError(f"teacher cache {path} is damaged ({artifacts.first_line(error)})") from None
        if list(self._logits.shape) != list(self.meta.get("shape", [])):
            raise DamagedCacheError(
                f"teacher cache {path} is damaged (logits of shape {list(self._logits.shape)}, meta.json says "
                f"{self.meta.get('shape')})"
            )

    @property
    def epochs(self) -> int:
        return self._logits.shape[0]

    def epoch_logits(self, epoch: int) -> np.ndarray:
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"the teacher cache holds epochs 0–{self.epochs - 1}, asked for {epoch}")
        return self._logits[epoch]

    @classmethod
    def prepare(cls, teacher, config, root: str, batch_size: int = 1024, log=print) -> TeacherCache:
        """The cache for `teacher` under `config` in `root`: reused when one exists, else computed (resumably).

        Args:
            teacher: the trained teacher (run in inference mode).
            config: the student's `TrainConfig` (dataset, seed, augmentation, epochs).
            root: the cache folder; one sub-folder per fingerprint.
            batch_size: teacher inference batch size.
            log: where progress lines go.
        """
        # A pipeline of N augmentation views shows epoch e mod N: the first N epochs hold every logit it reads.
        views = distinct_views(config.augment, config.augment_views)
        if views is not None and views < config.epochs:
            config = dataclasses.replace(config, epochs=views)
        data_spec = _data_spec(teacher, config)
        path = os.path.join(root, _key(data_spec, config.epochs))
        if os.path.exists(os.path.join(path, "meta.json")) and (cache := _readable(path, log)) is not None:
            log(f"teacher cache: reusing {path}")
            return cache
        siblings = {epochs: cache for epochs, folder in _siblings(root, data_spec).items()
                    if (cache := _readable(folder, log)) is not None}  # fmt: skip
        longer = min((epochs for epochs in siblings if epochs > config.epochs), default=None)
        if longer is not None:  # A longer run's cache holds this run's epochs.
            log(f"teacher cache: reusing the first {config.epochs} of {longer} epochs in {siblings[longer].path}")
            return siblings[longer]
        shorter = max(siblings, default=None)  # Its epochs are copied, only the rest is computed.
        start = time.perf_counter()
        partial = f"{path}.partial"
        _compute(teacher, config, partial, batch_size, siblings.get(shorter), log)
        _publish(partial, path, time.perf_counter() - start, log)
        return cls(path)


class DamagedCacheError(ValueError):
    """A finished cache folder whose files cannot be read back (truncated, edited, half deleted)."""


def _readable(path: str, log) -> TeacherCache | None:
    """The cache in `path`, or None when it is damaged: then it is removed (it holds only what kdkeras computed and
    computes again) and the reason logged."""
    try:
        return TeacherCache(path)
    except DamagedCacheError as error:
        log(f"{error}: removed; it is computed again")
        shutil.rmtree(path, ignore_errors=True)
        return None


def _compute(teacher, config, partial: str, batch_size: int, earlier: TeacherCache | None, log) -> None:
    """Fills `partial/logits.npy` epoch by epoch, each epoch recorded in `progress.json` once it is on disk."""
    os.makedirs(partial, exist_ok=True)

    def training_stream(epoch):
        return load_dataset(
            config.dataset, "train", batch_size, shuffle=False, augment_images=config.augment, flip=config.flip,
            max_examples=config.max_train_examples, epoch=epoch, return_index=True,
            unlabeled_examples=config.unlabeled_examples, mixed_fraction=config.mixed_fraction, **carve_out(config),
        )  # fmt: skip

    _, info = training_stream(0)
    shape = (config.epochs, info.num_examples, signature(teacher, "teacher")[1])
    progress_path = os.path.join(partial, "progress.json")
    logits, done = _open_logits(os.path.join(partial, "logits.npy"), progress_path, shape, earlier, log)
    # What the distiller runs: a teacher of another input size sees the images converted to it.
    teacher = on_images_of(teacher, info.input_shape)
    forward = tf.function(lambda images: teacher(images, training=False), reduce_retracing=True)
    for epoch in range(done, config.epochs):
        data, _ = training_stream(epoch)
        for images, _, indices in data:
            logits[epoch, indices.numpy()] = forward(images).numpy().astype(np.float16)
        logits.flush()
        artifacts.write_json(progress_path, {"epochs_done": epoch + 1})  # Atomic: after the data is flushed.
        log(f"teacher cache: epoch {epoch + 1}/{config.epochs} computed")


def _open_logits(logits_path: str, progress_path: str, shape, earlier: TeacherCache | None, log):
    """The memory-mapped logits and how many epochs they hold: a killed run's, else new ones that start with the
    epochs of `earlier` (a complete, shorter cache of the same teacher and data)."""
    done = _read_progress(progress_path)
    if done and os.path.exists(logits_path):
        return np.load(logits_path, mmap_mode="r+"), done
    logits = np.lib.format.open_memmap(logits_path, mode="w+", dtype=np.float16, shape=shape)
    if earlier is None:
        return logits, 0
    logits[: earlier.epochs] = earlier._logits
    logits.flush()
    artifacts.write_json(progress_path, {"epochs_done": earlier.epochs})
    log(f"teacher cache: epochs 1–{earlier.epochs} copied from {earlier.path}")
    return logits, earlier.epochs


def _publish(partial: str, path: str, seconds: float, log) -> None:
    """Renames a finished `partial` folder into place, with its `meta.json`; the logits are final by now."""
    logits_path = os.path.join(partial, "logits.npy")
    meta = {
        "fingerprint": os.path.basename(path),
        "shape": list(np.load(logits_path, mmap_mode="r").shape),
        "dtype": "float16",
        "seconds": seconds,
        "bytes": os.path.getsize(logits_path),
    }
    os.remove(os.path.join(partial, "progress.json"))
    artifacts.write_json(os.path.join(partial, "meta.json"), meta)
    if os.path.exists(path):  # Another process finished the same cache first: keep theirs.
        shutil.rmtree(partial)
    else:
        os.replace(partial, path)
    log(f"teacher cache: {path} ready ({meta['bytes'] / 1e6:.1f} MB, {meta['seconds']:.0f} s)")


def _read_progress(path: str) -> int:
    try:
        with open(path) as f:
            return int(json.load(f)["epochs_done"])
    except (OSError, ValueError, KeyError):
        return 0


def with_teacher_logits(dataset: tf.data.Dataset, teacher, batch_size: int | None = None) -> tf.data.Dataset:
    """`dataset`'s `(images, labels)` batches as `(images, {"labels", "teacher_logits"})`, with the teacher's logits
    computed now, in one pass, and kept in memory (float32): for a split that is the same every pass (validation).

    Args:
        dataset: a batched dataset of a fixed order and content (not shuffled, not augmented).
        teacher: the teacher, taking the dataset's images.
        batch_size: the dataset's batch size; default that of its first batch.
    """
    forward = tf.function(lambda images: teacher(images, training=False), reduce_retracing=True)
    logits = [forward(images).numpy().astype(np.float32) for images, _ in dataset]
    if not logits:
        return dataset
    batch_size = batch_size or len(logits[0])
    cached = tf.data.Dataset.from_tensor_slices(np.concatenate(logits)).batch(batch_size)
    return tf.data.Dataset.zip(dataset, cached).map(
        lambda batch, teacher_logits: (batch[0], {"labels": batch[1], "teacher_logits": teacher_logits})
    )
