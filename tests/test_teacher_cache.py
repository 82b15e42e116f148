"""kdkeras.teacher_cache: cached logits equal live ones on the same augmented images, a cached run trains like a
live one, any change of teacher or data makes a new cache, and a killed precompute never looks complete."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_classifier, write_idx_folder
from keras import ops

from kdkeras import teacher_cache
from kdkeras.data import load_dataset
from kdkeras.models import build_model
from kdkeras.teacher_cache import TeacherCache
from kdkeras.training import TrainConfig, distill

# End-to-end runs: in `make test` (and CI), not in `make test-fast`.
pytestmark = pytest.mark.slow

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    dataset = f"idx:{write_idx_folder(str(root / 'idx'), n_train=90, n_test=20, classes=3)}"
    keras.utils.set_random_seed(0)
    # What is cached is the teacher's output: any classifier does, the smaller the faster.
    teacher = tiny_classifier(3, name="teacher")
    config = TrainConfig(dataset=dataset, epochs=2, batch_size=16, seed=3, verbose=0, lr=1e-3)
    return root, teacher, config


def _messages():
    lines = []
    return lines, lines.append


def test_cached_logits_equal_the_live_teacher_on_the_images_the_student_sees(setup, tmp_path):
    _, teacher, config = setup
    cache = TeacherCache.prepare(teacher, config, str(tmp_path), log=lambda _: None)
    assert cache.epochs == 2 and cache.epoch_logits(0).dtype == np.float16
    for epoch in (0, 1):
        # The training stream itself (shuffled, augmented) for this epoch, with its example indices.
        data, _ = load_dataset(config.dataset, "train", 16, seed=config.seed, augment_images=True, epoch=epoch,
                               return_index=True)  # fmt: skip
        for images, _, indices in data:
            live = teacher(images, training=False).numpy()
            cached = cache.epoch_logits(epoch)[indices.numpy()].astype(np.float32)
            np.testing.assert_allclose(cached, live, rtol=2e-3, atol=2e-3)  # float16 precision.
    # Augmentation differs between epochs, and so do the logits.
    assert not np.allclose(cache.epoch_logits(0), cache.epoch_logits(1))


def test_a_cached_run_is_the_live_run_up_to_float16_logits(setup, tmp_path):
    """Bit for bit the live run whose teacher rounds its logits to float16: no other difference. Against the exact
    live run, the first epoch agrees to float16 precision (later epochs drift apart, as rounding is amplified)."""
    _, teacher, config = setup
    rounded = keras.Model(teacher.input, ops.cast(ops.cast(teacher.output, "float16"), "float32"))
    histories = []
    for model, cache_dir in ((teacher, None), (rounded, None), (teacher, str(tmp_path / "c"))):
        keras.utils.set_random_seed(0)
        student = build_model("ds_alexnet", SHAPE, 3, width=0.25, dropout=0.0)
        _, history, _, _ = distill(model, student, config, terms=["ce", "kd"], teacher_cache=cache_dir)
        histories.append(history)
    live, live_float16, cached = histories
    for key in ("kd", "loss", "accuracy", "val_accuracy"):
        assert cached[key] == live_float16[key], key
    # Validation runs the real teacher in both cached and live runs (only training logits are cached).
    np.testing.assert_allclose(cached["val_loss"], live_float16["val_loss"], rtol=1e-4)
    np.testing.assert_allclose(cached["kd"][0], live["kd"][0], rtol=1e-3)
    np.testing.assert_allclose(cached["loss"][0], live["loss"][0], rtol=1e-3)


def test_the_cache_is_reused_and_any_change_makes_a_new_one(setup, tmp_path):
    _, teacher, config = setup
    lines, log = _messages()
    first = TeacherCache.prepare(teacher, config, str(tmp_path), log=log)
    again = TeacherCache.prepare(teacher, config, str(tmp_path), log=log)
    assert again.path == first.path and any("reusing" in line for line in lines)
    other_seed = TeacherCache.prepare(teacher, dataclasses.replace(config, seed=4), str(tmp_path), log=log)
    no_augment = TeacherCache.prepare(teacher, dataclasses.replace(config, augment=False), str(tmp_path), log=log)
    longer = teacher_cache.fingerprint(teacher, dataclasses.replace(config, epochs=3))
    same_images = teacher_cache.fingerprint(teacher, dataclasses.replace(config, lr=0.5, optimizer="sgd"))
    changed = keras.models.clone_model(teacher)
    changed.set_weights([w + 0.01 for w in teacher.get_weights()])
    assert len({first.path, other_seed.path, no_augment.path}) == 3
    assert longer != teacher_cache.fingerprint(teacher, config)
    assert teacher_cache.fingerprint(changed, config) != teacher_cache.fingerprint(teacher, config)
    assert same_images == teacher_cache.fingerprint(teacher, config)  # The optimizer does not change the images.


@pytest.mark.parametrize("damage", ["truncate logits", "corrupt meta", "shape mismatch"])
def test_a_damaged_cache_is_named_removed_and_computed_again(setup, tmp_path, damage):
    _, teacher, config = setup
    first = TeacherCache.prepare(teacher, config, str(tmp_path), log=lambda _: None)
    expected = np.array(first.epoch_logits(1))
    del first
    folder = teacher_cache.fingerprint(teacher, config)
    logits_path, meta_path = (os.path.join(tmp_path, folder, name) for name in ("logits.npy", "meta.json"))
    if damage == "truncate logits":
        with open(logits_path, "r+b") as f:
            f.truncate(os.path.getsize(logits_path) // 2)
    elif damage == "corrupt meta":
        with open(meta_path, "w") as f:
            f.write('{"shape":')
    else:
        meta = json.load(open(meta_path))
        json.dump({**meta, "shape": [9, 9, 9]}, open(meta_path, "w"))
    with pytest.raises(teacher_cache.DamagedCacheError, match=f"teacher cache {tmp_path}.* is damaged"):
        TeacherCache(os.path.join(tmp_path, folder))
    lines, log = _messages()
    again = TeacherCache.prepare(teacher, config, str(tmp_path), log=log)
    assert any("is damaged" in line and "removed; it is computed again" in line for line in lines)
    np.testing.assert_array_equal(again.epoch_logits(1), expected)


def test_a_longer_run_extends_a_shorter_cache_and_a_shorter_run_reads_a_longer_one(setup, tmp_path):
    """Epoch e's images do not depend on the run's length: a 3-epoch cache copies the 2 epochs of a 2-epoch one and
    computes only the third (the result equals a cache computed from scratch); a 1-epoch run reads the 3-epoch
    cache instead of computing its own."""
    _, teacher, config = setup
    lines, log = _messages()
    two = TeacherCache.prepare(teacher, config, str(tmp_path / "a"), log=log)
    three = TeacherCache.prepare(teacher, dataclasses.replace(config, epochs=3), str(tmp_path / "a"), log=log)
    assert any("epochs 1–2 copied" in line for line in lines)
    assert sum("computed" in line for line in lines) == 2 + 1  # Two epochs for the first cache, one for the second.
    fresh = TeacherCache.prepare(teacher, dataclasses.replace(config, epochs=3), str(tmp_path / "b"), log=log)
    for epoch in range(3):
        np.testing.assert_array_equal(three.epoch_logits(epoch), fresh.epoch_logits(epoch))
    np.testing.assert_array_equal(three.epoch_logits(1), two.epoch_logits(1))
    lines.clear()
    one = TeacherCache.prepare(teacher, dataclasses.replace(config, epochs=1), str(tmp_path / "a"), log=log)
    assert one.path == two.path and any("reusing the first 1 of 2 epochs" in line for line in lines)
    assert not any("computed" in line for line in lines)


def test_a_killed_precompute_is_not_taken_for_a_cache_and_resumes(setup, tmp_path, monkeypatch):
    _, teacher, config = setup
    calls = []
    original = teacher_cache.load_dataset

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(kwargs["epoch"])
        if kwargs["epoch"] == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "load_dataset", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        TeacherCache.prepare(teacher, config, str(tmp_path), log=lambda _: None)
    key = teacher_cache.fingerprint(teacher, config)
    assert not os.path.exists(tmp_path / key)  # Nothing that looks complete.
    assert json.loads((tmp_path / f"{key}.partial" / "progress.json").read_text()) == {"epochs_done": 1}
    lines, log = _messages()
    cache = TeacherCache.prepare(teacher, config, str(tmp_path), log=log)
    assert lines[0] == "teacher cache: epoch 2/2 computed"  # Epoch 1 was kept, epoch 2 redone.
    assert not os.path.exists(tmp_path / f"{key}.partial")
    reference = TeacherCache.prepare(teacher, config, str(tmp_path / "fresh"), log=lambda _: None)
    np.testing.assert_array_equal(np.asarray(cache.epoch_logits(0)), np.asarray(reference.epoch_logits(0)))
    np.testing.assert_array_equal(np.asarray(cache.epoch_logits(1)), np.asarray(reference.epoch_logits(1)))


def test_validation_and_test_images_are_never_augmented(setup):
    _, _, config = setup
    for split in ("validation", "test"):
        plain, _ = load_dataset(config.dataset, split, 64, seed=config.seed)
        asked, _ = load_dataset(config.dataset, split, 64, seed=config.seed, augment_images=False, epoch=5)
        np.testing.assert_array_equal(next(iter(plain))[0].numpy(), next(iter(asked))[0].numpy())


def test_the_cache_refuses_feature_terms_and_collaborative_mode(setup, tmp_path):
    _, teacher, config = setup
    student = build_model("ds_alexnet", SHAPE, 3, width=0.25)
    with pytest.raises(ValueError, match=r"teacher features \(stage3\): run without --teacher-cache"):
        distill(teacher, student, config, terms=["ce", {"name": "hint", "pairs": [["stage3", "stage5"]]}],
                teacher_cache=str(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match="collaborative mode trains the teacher"):
        distill(teacher, student, config, terms=["ce", "kd"], collaborative=True, teacher_cache=str(tmp_path))
    assert not os.listdir(tmp_path)  # Refused before any precompute.


def test_the_training_stream_is_a_pure_function_of_seed_epoch_and_index(setup):
    _, _, config = setup
    first, _ = load_dataset(config.dataset, "train", 90, seed=3, augment_images=True, epoch=1, return_index=True)
    again, _ = load_dataset(config.dataset, "train", 90, seed=3, augment_images=True, epoch=1, return_index=True)
    other, _ = load_dataset(config.dataset, "train", 90, seed=3, augment_images=True, epoch=2, return_index=True)
    (a, _, ia), (b, _, ib), (c, _, ic) = (next(iter(d)) for d in (first, again, other))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(ia.numpy(), ib.numpy())
    assert not np.array_equal(ia.numpy(), ic.numpy())
    order = tf.argsort(ic).numpy()
    assert sorted(ic.numpy()) == list(range(len(ic))) and len(order) == len(ic)  # A permutation of the examples.


def test_a_teacher_of_another_input_size_is_cached_on_the_converted_images(setup, tmp_path):
    _, _, config = setup
    keras.utils.set_random_seed(1)
    rgb_teacher = tiny_classifier(3, (32, 32, 3), name="rgb_teacher")
    cache = TeacherCache.prepare(rgb_teacher, dataclasses.replace(config, epochs=1), str(tmp_path), log=lambda _: None)
    data, _ = load_dataset(config.dataset, "train", 16, seed=config.seed, augment_images=True, epoch=0,
                           return_index=True)  # fmt: skip
    for images, _, indices in data:
        by_hand = np.repeat(tf.image.resize(images, (32, 32)).numpy(), 3, axis=-1)
        live = rgb_teacher(by_hand, training=False).numpy()
        np.testing.assert_allclose(cache.epoch_logits(0)[indices.numpy()].astype(np.float32), live, rtol=2e-3,
                                   atol=2e-3)  # fmt: skip


def test_augmentation_views_repeat_and_the_cache_holds_only_them(setup, tmp_path):
    """With `augment_views` 2, epoch e shows epoch e mod 2's crops in a new order; a 5-epoch run's cache computes
    2 epochs, and the cached run reads the logits of the very images it trains on."""
    root, teacher, config = setup
    views = dataclasses.replace(config, epochs=5, augment_views=2)

    def by_index(epoch):
        data, _ = load_dataset(config.dataset, "train", 16, seed=config.seed, augment_images=True, epoch=epoch,
                               return_index=True, augment_views=2)  # fmt: skip
        batches = [(images.numpy(), indices.numpy()) for images, _, indices in data]
        images, indices = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        return images[np.argsort(indices)], indices

    (first, order_0), (third, order_2), (second, _) = by_index(0), by_index(2), by_index(1)
    np.testing.assert_array_equal(first, third)
    assert not np.array_equal(order_0, order_2) and not np.array_equal(first, second)
    lines, log = _messages()
    cache = TeacherCache.prepare(teacher, views, str(tmp_path), log=log)
    assert cache.epochs == 2 and sum("computed" in line for line in lines) == 2
    _, history, _, _ = distill(teacher, build_model("ds_alexnet", SHAPE, 3, width=0.25), views,
                               teacher_cache=str(tmp_path))  # fmt: skip
    assert len(history["loss"]) == 5 and np.all(np.isfinite(history["loss"]))
    assert TeacherCache.prepare(teacher, dataclasses.replace(config, epochs=4, augment=False), str(tmp_path / "flat"),
                                log=lambda _: None).epochs == 1  # fmt: skip


def test_the_cache_serves_mixed_images_and_knows_them_from_plain_ones(setup, tmp_path):
    """With `mixed_fraction` the cached logits are the teacher's on the mixed images the student sees, and the
    cache of the mixed stream is another than the plain stream's."""
    _, teacher, config = setup
    mixed_config = dataclasses.replace(config, mixed_fraction=0.5)
    assert teacher_cache.fingerprint(teacher, mixed_config) != teacher_cache.fingerprint(teacher, config)
    cache = TeacherCache.prepare(teacher, mixed_config, str(tmp_path), log=lambda _: None)
    stream, _ = load_dataset(config.dataset, "train", 16, seed=config.seed, augment_images=True, epoch=1,
                             return_index=True, mixed_fraction=0.5)  # fmt: skip
    unlabeled = 0
    for images, labels, indices in stream:
        live = teacher(images, training=False).numpy()
        np.testing.assert_allclose(cache.epoch_logits(1)[indices.numpy()].astype(np.float32), live, rtol=2e-3,
                                   atol=2e-3)  # fmt: skip
        unlabeled += int(np.sum(labels.numpy() == -1))
    assert unlabeled > 0  # Mixed images were among them.
