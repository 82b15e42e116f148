"""kdkeras.callbacks: non-finite losses stop the run naming the term, and never reach a checkpoint."""

import json
import os
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_classifier

from kdkeras.callbacks import (
    CheckpointMismatchError,
    NonFiniteLossError,
    ResumableBackup,
    StopOnNonFinite,
    StopOnSignal,
    recorded_cpu_seconds,
)
from kdkeras.distiller import Distiller
from kdkeras.training import TrainConfig, make_callbacks

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 255, (32, 28, 28, 1)).astype(np.float32)
Y = RNG.integers(0, 10, 32).astype(np.int32)


def _distiller():
    keras.utils.set_random_seed(0)
    teacher, student = tiny_classifier(10, name="teacher"), tiny_classifier(10, name="student")
    distiller = Distiller(teacher, student, [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}])
    distiller.compile("adam")
    return distiller


class PoisonTeacher(keras.callbacks.Callback):
    """Makes the teacher's logits NaN after a given step of the second epoch."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 0:
            bias = self.teacher.get_layer("logits").bias
            bias.assign(np.full(bias.shape, np.nan, np.float32))


def test_nan_names_the_term_and_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    distiller = _distiller()
    backup_dir = str(tmp_path / "backup")
    config = TrainConfig(epochs=3, backup_dir=backup_dir, checkpoint_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"loss term 'kd' became nan at epoch 2, step 2.*kept in"):
        distiller.fit(
            X,
            Y,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=make_callbacks(config, [PoisonTeacher(distiller.teacher)]),
        )
    weights = os.path.join(backup_dir, "latest.weights.h5")
    assert os.path.exists(weights)  # Not deleted: training did not end normally.
    with h5py.File(weights) as f:
        arrays = []
        f.visititems(lambda name, obj: arrays.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert arrays and all(np.all(np.isfinite(a)) for a in arrays if a.dtype.kind == "f")


def test_callback_order_guards_before_checkpoints(tmp_path):
    callbacks = make_callbacks(TrainConfig(backup_dir=str(tmp_path), logdir=str(tmp_path / "logs")))
    kinds = [type(c) for c in callbacks]
    assert kinds[:3] == [StopOnNonFinite, StopOnSignal, ResumableBackup]
    assert isinstance(callbacks[3], keras.callbacks.TensorBoard)
    assert callbacks[1].backup is callbacks[2]


def test_resumable_backup_reports_the_resumed_epoch(tmp_path):
    distiller = _distiller()
    backup = ResumableBackup(str(tmp_path / "b"))
    stop = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epoch == 1 and (_ for _ in ()).throw(
        RuntimeError("crash")))  # fmt: skip
    with pytest.raises(RuntimeError, match="crash"):
        distiller.fit(X, Y, batch_size=16, epochs=4, verbose=0, callbacks=[backup, stop])
    resumed = ResumableBackup(str(tmp_path / "b"))
    history = distiller.fit(X, Y, batch_size=16, epochs=4, verbose=0, callbacks=[resumed])
    assert resumed.resumed_epoch == 2
    assert len(history.history["loss"]) == 2  # Epochs 3 and 4 only were trained ...
    assert len(resumed.history["loss"]) == 4  # ... and the backup's history holds all four.
    assert os.path.exists(tmp_path / "b")  # Kept after a normal end, until the caller has saved its result.
    resumed.remove()
    assert not os.path.exists(tmp_path / "b")


def _classifier(classes=10):
    keras.utils.set_random_seed(0)
    model = tiny_classifier(classes)  # These tests are about callbacks: the smallest model that trains.
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(tmp_path):
    backup_dir = str(tmp_path / "backup")
    _classifier().fit(X, Y, epochs=1, verbose=0, callbacks=[ResumableBackup(backup_dir, run_spec={"seed": 0, "lr": 1})])
    assert os.path.exists(os.path.join(backup_dir, "run.json"))  # Kept until the caller's final save is done.
    with pytest.raises(CheckpointMismatchError, match=r"another run \(different lr, seed\): run the original"):
        _classifier().fit(X, Y, epochs=2, verbose=0,
                          callbacks=[ResumableBackup(backup_dir, run_spec={"seed": 1, "lr": 2})])  # fmt: skip
    resumed = ResumableBackup(backup_dir, run_spec={"seed": 0, "lr": 1})
    _classifier().fit(X, Y, epochs=2, verbose=0, callbacks=[resumed])
    assert resumed.resumed_epoch == 1


def test_the_history_covers_every_epoch_across_resumes(tmp_path):
    backup_dir = str(tmp_path / "backup")
    first = ResumableBackup(backup_dir, run_spec={})
    _classifier().fit(X, Y, epochs=2, verbose=0, callbacks=[first])  # As if killed after epoch 2 of 3.
    second = ResumableBackup(backup_dir, run_spec={})
    history = _classifier().fit(X, Y, epochs=3, verbose=0, callbacks=[second])
    assert len(history.history["loss"]) == 1  # Keras' own history: only this process' epoch.
    assert second.history["loss"][:2] == first.history["loss"] and len(second.history["loss"]) == 3


def test_a_resumed_run_stopped_within_its_first_epoch_keeps_the_epochs_done(tmp_path):
    """Killed after 2 epochs, resumed, then stopped by a signal (`save_now`) in the middle of epoch 3: the
    checkpoint still counts 2 epochs done, and a third process starts at epoch 3, not epoch 1."""
    backup_dir = str(tmp_path / "backup")
    _classifier().fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[ResumableBackup(backup_dir, run_spec={})])
    second = ResumableBackup(backup_dir, run_spec={})
    stop = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: second.save_now() or _interrupt())
    with pytest.raises(KeyboardInterrupt):
        _classifier().fit(X, Y, batch_size=16, epochs=4, verbose=0, callbacks=[second, stop])
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 2
    epochs_run = []
    third = ResumableBackup(backup_dir, run_spec={})
    count = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    _classifier().fit(X, Y, batch_size=16, epochs=4, verbose=0, callbacks=[third, count])
    assert third.resumed_epoch == 2 and epochs_run == [2, 3]


def _interrupt():
    raise KeyboardInterrupt("stopped by a signal")


def test_the_wall_time_of_resumed_epochs_is_carried_over(tmp_path):
    backup_dir = str(tmp_path / "backup")
    slow = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.1))
    first = ResumableBackup(backup_dir, run_spec={})
    _classifier().fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[first, slow])  # Killed after 2 of 3.
    with open(os.path.join(backup_dir, "timing.json")) as f:
        recorded = json.load(f)["epoch_seconds"]
    assert len(recorded) == 2 and all(seconds >= 0.2 for seconds in recorded)  # 2 batches of >= 0.1 s each.
    second = ResumableBackup(backup_dir, run_spec={})
    _classifier().fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[second])
    assert second.earlier_seconds == pytest.approx(sum(recorded))
    fresh = ResumableBackup(str(tmp_path / "fresh"), run_spec={})
    _classifier().fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[fresh])
    assert fresh.earlier_seconds == 0.0


def test_a_resumed_run_counts_the_time_of_every_process(tmp_path):
    from kdkeras.data import EpochClock
    from kdkeras.training import _fit

    backup_dir = str(tmp_path / "backup")
    config = TrainConfig(epochs=2, backup_dir=backup_dir, verbose=0)
    train = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)
    crash = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: (_ for _ in ()).throw(RuntimeError("kill")))
    with pytest.raises(RuntimeError, match="kill"):
        _fit(_classifier(), train, None, config, [crash], EpochClock())  # Killed after epoch 1 of 2.
    with open(os.path.join(backup_dir, "timing.json"), "w") as f:
        json.dump({"epoch_seconds": [1000.0]}, f)  # As if the first process had been slow.
    history, seconds = _fit(_classifier(), train, None, config, [], EpochClock())
    assert len(history["loss"]) == 2
    assert 1000.0 < seconds < 1000.0 + 120  # The earlier process' epoch, and this process' one.


def test_the_cpu_time_of_resumed_epochs_is_carried_over(tmp_path):
    from kdkeras.training import run_training

    backup_dir = str(tmp_path / "backup")
    assert recorded_cpu_seconds(backup_dir) == 0.0  # No checkpoint yet.
    busy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: sum(range(200_000)))
    first = ResumableBackup(backup_dir, run_spec={})
    _classifier().fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[first, busy])  # Killed after 2 of 3.
    with open(os.path.join(backup_dir, "timing.json")) as f:
        recorded = json.load(f)["epoch_cpu_seconds"]
    assert len(recorded) == 2 and all(seconds > 0 for seconds in recorded)
    assert recorded_cpu_seconds(backup_dir) == pytest.approx(sum(recorded))

    # A resumed run's record counts the earlier processes' epochs, as its wall time does.
    from conftest import write_idx_folder

    folder = write_idx_folder(str(tmp_path / "idx"), n_train=32, n_test=8, classes=3)
    run_dir = str(tmp_path / "run")
    config = TrainConfig(dataset=f"idx:{folder}", epochs=2, batch_size=16, backup_dir=run_dir, verbose=0)
    crash = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: (_ for _ in ()).throw(RuntimeError("kill")))
    with pytest.raises(RuntimeError, match="kill"):
        run_training(_classifier(classes=3), config, callbacks=[crash], evaluate=False)  # Killed after epoch 1.
    with open(os.path.join(run_dir, "timing.json"), "w") as f:
        json.dump({"epoch_seconds": [1.0], "epoch_cpu_seconds": [1000.0]}, f)  # As if that process had been slow.
    record = run_training(_classifier(classes=3), config, evaluate=False).record
    assert 1000.0 < record["cpu_seconds"] < 1000.0 + 300  # The earlier process' epoch, and this process' span.
    with open(os.path.join(run_dir, "timing.json")) as f:
        cpu = json.load(f)["epoch_cpu_seconds"]
    assert cpu[0] == 1000.0 and len(cpu) == 2 and cpu[1] > 0


def test_cpu_time_is_unknown_when_an_earlier_process_did_not_record_it(tmp_path):
    backup_dir = str(tmp_path / "backup")
    first = ResumableBackup(backup_dir, run_spec={})
    _classifier().fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[first])
    with open(os.path.join(backup_dir, "timing.json"), "w") as f:
        json.dump({"epoch_seconds": [1.0, 1.0]}, f)  # As written by code before CPU time was recorded.
    assert recorded_cpu_seconds(backup_dir) is None
    second = ResumableBackup(backup_dir, run_spec={})
    _classifier().fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[second])
    with open(os.path.join(backup_dir, "timing.json")) as f:
        cpu = json.load(f)["epoch_cpu_seconds"]
    assert cpu[:2] == [None, None] and cpu[2] > 0  # Still aligned with the epochs.


def _checkpointed(backup_dir, epochs=1):
    """A classifier trained `epochs` epochs with a checkpoint in `backup_dir`; returns the callback."""
    backup = ResumableBackup(backup_dir, run_spec={"run": 1})
    _classifier().fit(X, Y, batch_size=16, epochs=epochs, verbose=0, callbacks=[backup])
    return backup


def test_a_half_written_first_checkpoint_is_discarded_and_the_run_starts(tmp_path):
    backup_dir = str(tmp_path / "backup")
    os.makedirs(backup_dir)
    with open(os.path.join(backup_dir, "partial.weights.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # What a kill -9 during the first save leaves.
    backup = _checkpointed(backup_dir)
    assert backup.resumed_epoch is None and not os.path.exists(os.path.join(backup_dir, "partial.weights.h5"))
    assert json.load(open(os.path.join(backup_dir, "training_metadata.json")))["epoch"] == 1


def test_a_kill_between_the_renames_of_a_save_resumes_from_the_previous_checkpoint(tmp_path):
    backup_dir = str(tmp_path / "backup")
    _checkpointed(backup_dir, epochs=2)
    weights = os.path.join(backup_dir, "latest.weights.h5")
    metadata = os.path.join(backup_dir, "training_metadata.json")
    # The state right after "the new weights take the place of the old": their metadata is not written yet.
    os.remove(metadata)
    resumed = ResumableBackup(backup_dir, run_spec={"run": 1})
    _classifier().fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[resumed])
    assert resumed.resumed_epoch == 1 and os.path.exists(weights)  # The previous checkpoint, epoch 1.


def test_an_unreadable_checkpoint_is_set_aside_with_one_line_and_the_next_run_starts_over(tmp_path):
    from kdkeras.callbacks import UnreadableCheckpointError

    backup_dir = str(tmp_path / "backup")
    _checkpointed(backup_dir)
    with open(os.path.join(backup_dir, "latest.weights.h5"), "r+b") as f:
        f.truncate(200)
    with pytest.raises(UnreadableCheckpointError, match=r"could not be read .* moved to .*backup.unreadable-"):
        _classifier().fit(X, Y, batch_size=16, epochs=2, verbose=0,
                          callbacks=[ResumableBackup(backup_dir, run_spec={"run": 1})])  # fmt: skip
    assert not os.path.exists(backup_dir) and len(list(tmp_path.glob("backup.unreadable-*"))) == 1
    assert _checkpointed(backup_dir).resumed_epoch is None  # Not a dead end: the next run starts over.


def test_a_corrupt_training_metadata_file_is_set_aside_too(tmp_path):
    from kdkeras.callbacks import UnreadableCheckpointError

    backup_dir = str(tmp_path / "backup")
    _checkpointed(backup_dir)
    with open(os.path.join(backup_dir, "training_metadata.json"), "w") as f:
        f.write('{"epoch":\n')
    with pytest.raises(UnreadableCheckpointError, match="moved to"):
        _checkpointed(backup_dir)


def test_a_checkpoint_without_a_run_record_is_refused(tmp_path):
    backup_dir = str(tmp_path / "backup")
    _checkpointed(backup_dir)
    os.remove(os.path.join(backup_dir, "run.json"))
    with pytest.raises(CheckpointMismatchError, match="without a readable run.json"):
        _checkpointed(backup_dir)


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import shutil

    backup_dir = str(tmp_path / "backup")
    _checkpointed(backup_dir)
    weights = os.path.join(backup_dir, "latest.weights.h5")
    before = open(weights, "rb").read()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"the disk of .* is full .* the last good checkpoint is kept"):
        _classifier().fit(X, Y, batch_size=16, epochs=2, verbose=0,
                          callbacks=[ResumableBackup(backup_dir, run_spec={"run": 1})])  # fmt: skip
    assert open(weights, "rb").read() == before


def test_a_nan_before_any_checkpoint_does_not_claim_one_is_kept(tmp_path):
    distiller = _distiller()
    guard = StopOnNonFinite(where=str(tmp_path / "never_written"))
    with pytest.raises(NonFiniteLossError) as raised:
        distiller.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[PoisonTeacher(distiller.teacher), guard])
    assert "became nan" in str(raised.value) and "checkpoint" not in str(raised.value)
