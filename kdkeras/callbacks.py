"""Callbacks that make long runs survive: resumable checkpoints, clean stops on signals, non-finite loss guards."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import keras
import numpy as np

from kdkeras.artifacts import read_json_or_none


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by SIGINT or SIGTERM at a step boundary, after saving a checkpoint."""


class NonFiniteLossError(ArithmeticError):
    """A loss term became NaN or Inf; the last good checkpoint is kept."""


class CheckpointMismatchError(ValueError):
    """A checkpoint folder holds a run with other settings than the one asked for."""


class UnreadableCheckpointError(ValueError):
    """A checkpoint could not be read; its folder was moved aside, so the next run starts over."""


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that keeps two checkpoints, checks they belong to this run, keeps the history, reports
    what it resumed from, and can save on demand.

    Re-running the same training after an interruption resumes from the newest checkpoint: weights, optimizer
    state (so the learning-rate schedule continues) and the epoch count. An epoch interrupted in the middle is
    run again from its start, with the weights of the mid-epoch checkpoint. With `double_checkpoint` a checkpoint
    damaged by a kill during its own save falls back to the previous one.

    The folder records `run_spec`, everything the weights depend on: a checkpoint of another run (another seed,
    learning rate, width, method …) is refused with a one-line error instead of being resumed into the wrong run.
    It also records the per-epoch history, wall time and CPU time, so `history` covers all epochs, not only those
    of the last process, and `earlier_seconds` is the wall time earlier processes spent on the epochs resumed from
    (`recorded_cpu_seconds` reads their CPU time).
    The folder is *not* deleted when training ends: the caller removes it (`remove`) once the final artifact is
    safely written, so a kill during that save still resumes from the finished training.

    Args:
        backup_dir: folder of the checkpoint files.
        save_freq: `"epoch"`, or a number of steps between checkpoints (at most that many steps are lost).
        run_spec: JSON-serializable description of the run.
    """

    def __init__(self, backup_dir: str, save_freq="epoch", run_spec: dict | None = None):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=True, delete_checkpoint=False)
        self.run_spec = json.loads(json.dumps(run_spec, default=str)) if run_spec is not None else None
        self.resumed_epoch = None
        self.history: dict[str, list[float]] = {}
        self.earlier_seconds = 0.0
        self._epoch_seconds: list[float] = []
        self._epoch_cpu_seconds: list[float | None] = []
        self._epoch_start = None
        self._epoch_cpu_start = None

    def _path(self, name: str) -> str:
        return os.path.join(self.backup_dir, name)

    def on_train_begin(self, logs=None):
        from kdkeras import artifacts

        self._recover_interrupted_save()
        had_checkpoint = os.path.exists(self._path("training_metadata.json"))
        if had_checkpoint:
            recorded = read_json_or_none(self._path("run.json"))
            if self.run_spec is not None and recorded is None:
                raise CheckpointMismatchError(
                    f"{self.backup_dir} holds a checkpoint without a readable run.json, so nothing says which run "
                    "it belongs to: delete that folder to start over"
                )
            if self.run_spec is not None and recorded != self.run_spec:
                differing = sorted(k for k in {*recorded, *self.run_spec} if recorded.get(k) != self.run_spec.get(k))
                raise CheckpointMismatchError(
                    f"{self.backup_dir} holds a checkpoint of another run (different {', '.join(differing)}): run "
                    "the original command again to resume it, or delete that folder to start this one over"
                )
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError, TypeError) as error:  # h5py, json and Keras' own load errors.
            self._set_aside(error)
        if had_checkpoint:
            with open(self._path("training_metadata.json")) as f:
                self.resumed_epoch = int(json.load(f)["epoch"])
            # Keras' BackupAndRestore restores the epoch into the model only and counts its own from 0 until an
            # epoch ends: a mid-epoch save before then (a second interruption) would record 0 epochs done.
            self._current_epoch = self.resumed_epoch
            previous = read_json_or_none(self._path("history.json")) or {}
            self.history = {k: list(v)[: self.resumed_epoch] for k, v in previous.items()}
            self._epoch_seconds, self._epoch_cpu_seconds = _recorded_timing(self.backup_dir, self.resumed_epoch)
            self.earlier_seconds = sum(self._epoch_seconds)
            print(f"Resuming from checkpoint in {self.backup_dir}: {self.resumed_epoch} epoch(s) done", flush=True)
        elif self.run_spec is not None:
            artifacts.write_json(self._path("run.json"), self.run_spec)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_cpu_start = time.process_time()
        super().on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        from kdkeras import artifacts

        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self._epoch_seconds.append(time.perf_counter() - self._epoch_start)
        self._epoch_cpu_seconds.append(time.process_time() - self._epoch_cpu_start)
        # Both before the epoch's checkpoint, so a checkpoint never counts epochs they do not hold.
        artifacts.write_json(self._path("history.json"), self.history)
        timing = {"epoch_seconds": self._epoch_seconds, "epoch_cpu_seconds": self._epoch_cpu_seconds}
        artifacts.write_json(self._path("timing.json"), timing)
        super().on_epoch_end(epoch, logs)

    def _recover_interrupted_save(self) -> None:
        """Puts back the previous checkpoint when a kill came in the middle of `_save_model`'s renames (the newest
        weights without their metadata cannot be trusted), and removes a half-written temporary."""
        weights, metadata = self._weights_path, self._training_metadata_path
        if not os.path.exists(metadata) and os.path.exists(self._prev_training_metadata_path):
            if os.path.exists(self._prev_weights_path):
                os.replace(self._prev_weights_path, weights)
            os.replace(self._prev_training_metadata_path, metadata)
        if os.path.exists(self._partial_weights_path):
            os.remove(self._partial_weights_path)

    @property
    def _partial_weights_path(self) -> str:
        return self._path("partial.weights.h5")

    def _set_aside(self, error: Exception) -> None:
        aside = f"{self.backup_dir.rstrip(os.sep)}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.backup_dir, aside)
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UnreadableCheckpointError(
            f"the checkpoint in {self.backup_dir} could not be read ({reason}); it was moved to {aside}: run the "
            "same command again to start over"
        ) from None

    def _save_model(self) -> None:
        """Keras' save, made atomic: the new weights are written completely beside the checkpoint, then take its
        place, and the old one becomes the previous checkpoint; a kill or a full disk at any point leaves a
        complete checkpoint (see `_recover_interrupted_save`)."""
        os.makedirs(self.backup_dir, exist_ok=True)
        _check_free_space(self.backup_dir, self._weights_path, self.model)
        partial = self._partial_weights_path
        try:
            self.model.save_weights(partial, overwrite=True)
            with open(partial, "rb+") as f:
                os.fsync(f.fileno())
        except OSError as error:
            if os.path.exists(partial):
                os.remove(partial)
            raise OSError(
                f"could not write a checkpoint in {self.backup_dir} ({error.strerror or error}); the last good "
                "checkpoint is kept"
            ) from None
        if os.path.exists(self._weights_path):
            os.replace(self._weights_path, self._prev_weights_path)
            if os.path.exists(self._training_metadata_path):
                os.replace(self._training_metadata_path, self._prev_training_metadata_path)
        os.replace(partial, self._weights_path)
        from kdkeras import artifacts

        artifacts.write_json(
            self._training_metadata_path, {"epoch": self._current_epoch, "batch": self._last_batch_seen}
        )

    def save_now(self) -> None:
        """Writes a checkpoint of the current step (the interrupted epoch is counted as not done)."""
        self._save_model()

    def remove(self) -> None:
        """Deletes the checkpoint folder: call it after the run's final artifact is written."""
        import shutil

        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _check_free_space(folder: str, previous: str, model) -> None:
    """Raises a one-line `OSError` when `folder`'s disk cannot hold another checkpoint (h5py can crash the process
    when the disk fills while it writes): the size of the last one, or of the model's and optimizer's variables."""
    import errno
    import shutil

    if os.path.exists(previous):
        needed = os.path.getsize(previous)
    else:
        variables = list(model.variables) + list(getattr(model.optimizer, "variables", []) or [])
        needed = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    needed = int(needed * 1.1) + (1 << 20)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"the disk of {folder} is full ({free / 1e6:.1f} MB free, a checkpoint needs about {needed / 1e6:.1f} MB); "
            "the last good checkpoint is kept",
        )


def recorded_cpu_seconds(backup_dir: str) -> float | None:
    """The CPU seconds earlier processes spent on the epochs that the checkpoint in `backup_dir` holds: 0.0 when
    there is no checkpoint, None when some of those epochs ran under code that did not record CPU time.

    Read before resuming, so that a resumed run's CPU time can count every process, as its wall time does.
    """
    metadata = read_json_or_none(os.path.join(backup_dir, "training_metadata.json"))
    if not isinstance(metadata, dict):
        return 0.0
    _, cpu = _recorded_timing(backup_dir, int(metadata.get("epoch", 0)))
    return None if None in cpu else float(sum(cpu))


def _recorded_timing(backup_dir: str, epochs: int) -> tuple[list[float], list[float | None]]:
    """The wall and CPU seconds timing.json records for the first `epochs` epochs (those a checkpoint holds). CPU
    seconds are None for epochs of a process whose code did not record them yet, so both lists stay aligned with
    the epochs."""
    timing = read_json_or_none(os.path.join(backup_dir, "timing.json")) or {}
    wall = [float(s) for s in timing.get("epoch_seconds", [])][:epochs]
    cpu = [None if s is None else float(s) for s in timing.get("epoch_cpu_seconds") or []][:epochs]
    return wall, cpu + [None] * (epochs - len(cpu))


class StopOnSignal(keras.callbacks.Callback):
    """Turns SIGINT and SIGTERM into a clean stop at the next step boundary, after a checkpoint.

    The handlers are installed for the duration of `fit` only. The stop raises `TrainingInterrupted` (rather than
    setting `stop_training`), because a normal end of training would delete the checkpoint folder.

    Args:
        backup: the run's `ResumableBackup`, which saves the checkpoint; None to stop without one.
    """

    def __init__(self, backup: ResumableBackup | None):
        super().__init__()
        self.backup = backup
        self._received = None
        self._previous = {}
        self._epoch = 0

    def _handle(self, signum, frame):
        if self._received is not None:  # A second signal: stop now, without waiting for the step.
            raise TrainingInterrupted(f"{signal.Signals(signum).name} received twice: stopped immediately")
        self._received = signal.Signals(signum).name
        print(f"\n{self._received} received: stopping after this step ...", flush=True)

    def on_train_begin(self, logs=None):
        self._received = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # Not the main thread: leave signals alone.
                pass

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._received is None:
            return
        self._restore()
        where = f"epoch {self._epoch + 1}, step {batch + 1}"
        if self.backup is None:
            raise TrainingInterrupted(f"{self._received}: stopped at {where} (no checkpoint folder configured)")
        self.backup.save_now()
        raise TrainingInterrupted(
            f"{self._received}: stopped at {where}; checkpoint saved in {self.backup.backup_dir}. "
            "Run the same command again to resume."
        )

    def on_train_end(self, logs=None):
        self._restore()


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training with a `NonFiniteLossError` naming the loss term and the step when a term is NaN or Inf.

    Place it before the checkpoint callback, so the bad step is never checkpointed.

    Args:
        terms: the log keys to watch; default the model's `loss_names` (a `Distiller`'s terms before their sum,
            so the message names the term that went wrong), else `loss`.
        where: text naming the last good checkpoint, for the message.
    """

    def __init__(self, terms=None, where: str | None = None):
        super().__init__()
        self.terms = None if terms is None else tuple(terms)
        self.where = where
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_begin(self, logs=None):
        if self.terms is None:
            self.terms = tuple(getattr(self.model, "loss_names", ("loss",)))

    def on_train_batch_end(self, batch, logs=None):
        for key in self.terms or ("loss",):
            if logs and key in logs:
                value = float(logs[key])
                if not math.isfinite(value):
                    has_checkpoint = self.where and os.path.exists(os.path.join(self.where, "latest.weights.h5"))
                    kept = f"; the last good checkpoint is kept in {self.where}" if has_checkpoint else ""
                    raise NonFiniteLossError(
                        f"loss term '{key}' became {value} at epoch {self._epoch + 1}, step {batch + 1}{kept}. "
                        "Lower the learning rate or the loss weights."
                    )


class SetEpoch(keras.callbacks.Callback):
    """Sets a `kdkeras.data.EpochClock` at the start of every epoch, so the training pipeline draws that epoch's
    order and augmentation (also after a resume, which starts at a later epoch)."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_epoch_begin(self, epoch, logs=None):
        self.clock.set(epoch)


class WarmStartBatchNorm(keras.callbacks.Callback):
    """Before the first step, sets every trainable batch-norm layer's moving mean and variance to the statistics
    of one training batch.

    Moving statistics start at mean 0 and variance 1, far from the truth for, e.g., a first conv over mostly-dark
    images (variance 0.05): with momentum 0.9 the error still halves the activations after 20 steps, so a short run
    on small data validates at chance while it trains well. Started at the truth, the averages only track the
    weights' drift. A resumed run (optimizer steps > 0) is left alone, and so are frozen layers (a teacher's) and
    multi-replica runs (the statistics would need a cross-replica pass; their step counts are large anyway).

    Args:
        images: one batch of training images.
    """

    def __init__(self, images):
        super().__init__()
        self.images = images

    def on_train_begin(self, logs=None):
        if int(self.model.optimizer.iterations.numpy()) > 0 or self.model.distribute_strategy.num_replicas_in_sync > 1:
            return
        network = getattr(self.model, "student", self.model)  # A Distiller trains its student.
        layers = [
            layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        ]
        if not layers or not getattr(network, "inputs", None):
            return
        probe = keras.Model(network.inputs, [layer.input for layer in layers])
        inputs = probe(self.images, training=True)
        for layer, value in zip(layers, inputs if isinstance(inputs, list) else [inputs], strict=True):
            axes = list(range(len(value.shape) - 1))
            layer.moving_mean.assign(keras.ops.mean(value, axis=axes))
            layer.moving_variance.assign(keras.ops.var(value, axis=axes))
