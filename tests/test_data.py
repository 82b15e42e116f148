"""kdkeras.data and kdkeras.sources: every dataset spec on real or generated data, splits, augmentation, bad input."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import requires_fashion_mnist, write_idx_folder
from PIL import Image

from kdkeras import data, sources
from kdkeras.data import DatasetError, load_dataset


def _all(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@requires_fashion_mnist
def test_fashion_mnist_default_reads_debian_files():
    test, info = load_dataset("fashion_mnist", "test", 500, max_examples=1000)
    x, y = _all(test)
    assert info.num_classes == 10 and info.input_shape == (28, 28, 1) and info.class_names[9] == "ankle boot"
    assert x.shape == (1000, 28, 28, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    _, train_info = load_dataset("fashion_mnist", "train", 128)
    _, val_info = load_dataset("fashion_mnist", "validation", 128)
    assert (train_info.num_examples, val_info.num_examples) == (54000, 6000)


def test_fashion_mnist_missing_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", str(tmp_path / "absent"))

    def offline(*args, **kwargs):
        raise DatasetError("could not load TFDS dataset 'fashion_mnist' (no internet access?)")

    monkeypatch.setattr(sources, "_load_tfds", offline)
    sources.load_source.cache_clear()
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist.*tfds:fashion_mnist"):
        load_dataset("fashion_mnist", "train")
    sources.load_source.cache_clear()


def test_idx_folder_splits_are_disjoint_and_seeded(idx_folder):
    spec = f"idx:{idx_folder}"
    train_x, _ = _all(load_dataset(spec, "train", 16, validation_fraction=0.25, shuffle=False)[0])
    val_x, _ = _all(load_dataset(spec, "validation", 16, validation_fraction=0.25)[0])
    assert len(train_x) == 45 and len(val_x) == 15
    train_rows = {row.tobytes() for row in train_x}
    assert not any(row.tobytes() in train_rows for row in val_x)
    again, _ = _all(load_dataset(spec, "validation", 16, validation_fraction=0.25)[0])
    np.testing.assert_array_equal(again, val_x)
    other_seed, _ = _all(load_dataset(spec, "validation", 16, validation_fraction=0.25, seed=1)[0])
    assert not np.array_equal(other_seed, val_x)


def test_idx_folder_info_and_default_no_flip(idx_folder):
    _, info = load_dataset(f"idx:{idx_folder}", "test", 8)
    assert info.num_classes == 3 and info.class_names == ("0", "1", "2") and info.num_examples == 20
    assert not data.default_flip(f"idx:{idx_folder}")
    assert not data.default_flip("tfds:mnist") and data.default_flip("tfds:cifar10")
    assert data.default_flip("fashion_mnist")


def test_idx_folder_with_missing_or_truncated_file(tmp_path):
    folder = write_idx_folder(str(tmp_path / "idx"))
    os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(DatasetError, match="missing t10k-labels-idx1-ubyte"):
        load_dataset(f"idx:{folder}", "train")
    folder = write_idx_folder(str(tmp_path / "idx2"))
    path = os.path.join(folder, "train-images-idx3-ubyte.gz")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: corrupt or truncated"):
        load_dataset(f"idx:{folder}", "train")


def test_augmentation_crops_and_flips_deterministically():
    image = tf.reshape(tf.range(36, dtype=tf.float32), (6, 6, 1))
    seed = tf.constant([1, 2], tf.int64)
    a = data.augment(image, seed, pad=2, flip=True).numpy()
    b = data.augment(image, seed, pad=2, flip=True).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 6, 1)
    outputs = {data.augment(image, tf.constant([s, 7], tf.int64), 2, True).numpy().tobytes() for s in range(20)}
    assert len(outputs) > 5  # Different seeds give different crops/flips.
    # Without padding and flips the image is unchanged; with flips only, it is itself or its mirror.
    np.testing.assert_array_equal(data.augment(image, seed, 0, False).numpy(), image.numpy())
    flipped = data.augment(image, seed, 0, True).numpy()
    assert np.array_equal(flipped, image.numpy()) or np.array_equal(flipped, image.numpy()[:, ::-1])


def test_augmented_pipeline_shapes_and_epoch_reshuffle(idx_folder):
    from kdkeras.data import EpochClock

    clock = EpochClock()
    dataset, _ = load_dataset(
        f"idx:{idx_folder}", "train", 10, augment_images=True, validation_fraction=0.2, clock=clock
    )
    assert len(dataset) == 5
    first, labels_1 = _all(dataset)
    second, labels_2 = _all(dataset)  # Every pass is the next epoch: a new order and new crops.
    assert int(clock.variable.numpy()) == 2
    clock.set(0)
    again, _ = _all(dataset)
    assert first.shape == (48, 28, 28, 1)
    np.testing.assert_array_equal(first, again)  # The same epoch: the same images in the same order.
    assert sorted(labels_1) == sorted(labels_2) and not np.array_equal(first, second)


def test_plain_iteration_without_a_clock_draws_a_new_epoch_per_pass(idx_folder):
    """What `fit(load_dataset(...))` sees without kdkeras' callbacks: each pass is the next epoch of the seeded
    sequence, the same sequence on every run."""
    spec = f"idx:{idx_folder}"

    def passes(n):
        dataset, _ = load_dataset(spec, "train", 12, augment_images=True, validation_fraction=0.2, seed=3)
        return [_all(dataset)[0] for _ in range(n)]

    first_run, second_run = passes(3), passes(3)
    for a, b in zip(first_run, second_run, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first_run[0], first_run[1]) and not np.array_equal(first_run[1], first_run[2])


def _write_images(root, classes, count, size, mode):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            shape = (size, size) if mode == "L" else (size, size, 3)
            array = (rng.integers(0, 50, shape) + 100 * k).astype(np.uint8)
            Image.fromarray(array, mode).save(os.path.join(root, name, f"{i}.png"))


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_folder_with_train_and_test(tmp_path, mode, channels):
    for split in ("train", "test"):
        _write_images(str(tmp_path / split), ["cat", "dog"], 6, 12, mode)
    dataset, info = load_dataset(f"folder:{tmp_path}", "test", 4)
    x, y = _all(dataset)
    assert info.class_names == ("cat", "dog") and info.input_shape == (12, 12, channels)
    assert x.shape == (12, 12, 12, channels) and sorted(y.tolist()) == [0] * 6 + [1] * 6
    assert x[y == 1].mean() > x[y == 0].mean() + 50  # Labels follow the folders.


def test_folder_without_splits_is_split_deterministically(tmp_path, caplog):
    _write_images(str(tmp_path), ["a", "b", "c"], 10, 8, "L")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    sources.load_source.cache_clear()
    with caplog.at_level(logging.WARNING, logger="kdkeras"):
        test, info = load_dataset(f"folder:{tmp_path}", "test", 100)
    assert "skipped 1 non-image file" in caplog.text
    assert info.num_examples == 6  # 20 % of 30.
    train, train_info = load_dataset(f"folder:{tmp_path}", "train", 100, validation_fraction=0.25)
    assert train_info.num_examples == 18

    # The test split is the dataset's, not the run's: every seed trains on images outside the same test set.
    def image_set(dataset):
        return sorted(image.tobytes() for image in _all(dataset)[0])

    for seed in (1, 7):
        assert image_set(load_dataset(f"folder:{tmp_path}", "test", 100, seed=seed)[0]) == image_set(test)


def test_folder_mixed_sizes_are_resized(tmp_path, caplog):
    _write_images(str(tmp_path / "train"), ["a", "b"], 3, 10, "RGB")
    _write_images(str(tmp_path / "test"), ["a", "b"], 2, 10, "RGB")
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(tmp_path / "train" / "a" / "big.png")
    with caplog.at_level(logging.WARNING, logger="kdkeras"):
        dataset, info = load_dataset(f"folder:{tmp_path}", "train", 10, validation_fraction=0.2)
    assert "resized to 10x10" in caplog.text
    assert info.input_shape == (10, 10, 3) and _all(dataset)[0].shape[1:] == (10, 10, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    _write_images(str(tmp_path / "x"), ["a"], 4, 8, "L")
    os.makedirs(tmp_path / "x" / "empty")
    with pytest.raises(DatasetError, match="class folder 'empty' holds no images"):
        load_dataset(f"folder:{tmp_path / 'x'}")
    bad = tmp_path / "y"
    _write_images(str(bad), ["a", "b"], 4, 8, "L")
    (bad / "a" / "broken.png").write_bytes(b"not really a png")
    with pytest.raises(DatasetError, match="broken.png: not a readable image"):
        load_dataset(f"folder:{bad}")


def test_a_tiff_named_png_and_a_decompression_bomb_are_named_before_training(tmp_path, monkeypatch):
    from PIL import Image

    from kdkeras.sources import load_source

    tiff = tmp_path / "t"
    _write_images(str(tiff), ["a", "b"], 3, 8, "L")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tiff / "a" / "disguised.png", format="TIFF")
    with pytest.raises(DatasetError, match=r"disguised.png: a TIFF image; the training pipeline decodes PNG, JPEG"):
        load_source(f"folder:{tiff}", None)
    big = tmp_path / "big"
    _write_images(str(big), ["a", "b"], 3, 8, "L")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(big / "b" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 = 1,600 pixels: PIL's warning, then its refusal.
    with pytest.raises(DatasetError, match=r"huge.png: too large an image \(over 1,000 pixels\)"):
        load_source(f"folder:{big}", None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # Over twice the limit: PIL's DecompressionBombError.
    load_source.cache_clear()
    with pytest.raises(DatasetError, match=r"huge.png: too large an image"):
        load_source(f"folder:{big}", None)


def test_tfds_spec_through_mocked_tfds(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(sources, "_can_reach", lambda address: True)  # The mock stands in for the download.
    sources.load_source.cache_clear()
    with tfds.testing.mock_data(num_examples=40):
        dataset, info = load_dataset("tfds:cifar10", "train", 8, validation_fraction=0.25)
        x, y = _all(dataset)
    sources.load_source.cache_clear()
    # The mock carries no label metadata files, so the class names are the label numbers.
    assert info.num_classes == 10 and info.input_shape == (32, 32, 3) and len(info.class_names) == 10
    assert x.shape == (30, 32, 32, 3) and y.max() < 10


def test_tfds_without_network_fails_at_once_without_trying_to_download(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    def download(*args, **kwargs):
        raise AssertionError("a download was attempted although the host is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download)
    monkeypatch.setattr(sources, "_can_reach", lambda address: False)
    sources.load_source.cache_clear()
    with pytest.raises(DatasetError, match="'mnist': it is not prepared in .* storage.googleapis.com is unreachable"):
        load_dataset("tfds:mnist", data_dir=str(tmp_path))
    sources.load_source.cache_clear()


def test_can_reach_is_false_for_a_closed_port_and_trusts_a_configured_proxy(monkeypatch):
    import socket

    with socket.socket() as listener:  # A port that was bound and is closed again: nothing listens there.
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not sources._can_reach(("127.0.0.1", port), timeout=2)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert sources._can_reach(("127.0.0.1", port), timeout=2)


def test_bad_specs_and_arguments(idx_folder):
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'; use fashion_mnist, tfds:NAME"):
        load_dataset("cifar")
    with pytest.raises(DatasetError, match="unknown TFDS dataset 'no_such_set'"):
        load_dataset("tfds:no_such_set")
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset(f"idx:{idx_folder}", "dev")
    with pytest.raises(DatasetError, match="validation_fraction must be in"):
        load_dataset(f"idx:{idx_folder}", validation_fraction=0.9)
    with pytest.raises(DatasetError, match="too few for validation_fraction"):
        load_dataset(f"idx:{idx_folder}", validation_fraction=0.001)


def _relabel(folder, prefix, labels, code=0x08):
    """Rewrites one labels file of an IDX folder (`code` 0x0D: float32 labels)."""
    import gzip

    labels = np.asarray(labels)
    data = labels.astype(">f4").tobytes() if code == 0x0D else labels.astype(np.uint8).tobytes()
    header = bytes([0, 0, code, 1]) + len(labels).to_bytes(4, "big")
    with gzip.open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(header + data)


@pytest.mark.parametrize(
    "prefix, labels, message",
    [
        ("train", [0, 1, 5] * 20, r"lack 2, 3, 4; class labels must be 0, 1, 2, … without gaps"),
        ("t10k", [0, 1, 2] * 6 + [200, 1], r"test labels include 200, which no training image has"),
        ("train", [0, 1, 2] * 19 + [0, 1, 255], r"lack 3, 4, 5, 6, 7 and 247 more"),
    ],
    ids=["gap", "unseen_test_label", "one_stray_label"],
)
def test_idx_labels_with_gaps_or_unseen_classes_are_refused(tmp_path, prefix, labels, message):
    from conftest import write_idx_folder

    from kdkeras.sources import load_source

    folder = write_idx_folder(str(tmp_path / "idx"), n_train=60, n_test=20)
    _relabel(folder, prefix, labels)
    with pytest.raises(DatasetError, match=message):
        load_source(f"idx:{folder}", None)


def test_idx_float_labels_are_refused_naming_the_file(tmp_path):
    from conftest import write_idx_folder

    from kdkeras.sources import load_source

    folder = write_idx_folder(str(tmp_path / "idx"), n_train=60, n_test=20)
    _relabel(folder, "train", np.arange(60) % 3 + 0.5, code=0x0D)
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.gz: labels are float32; class labels must be"):
        load_source(f"idx:{folder}", None)


def test_from_arrays_is_the_seeded_pipeline_of_load_dataset():
    from kdkeras.data import from_arrays

    x = np.random.default_rng(0).integers(0, 255, (20, 12, 12)).astype(np.uint8)
    y = np.arange(20) % 4
    dataset, info = from_arrays(x, y, 8, seed=5, augment_images=True)
    assert (info.input_shape, info.num_classes, info.num_examples, len(dataset)) == ((12, 12, 1), 4, 20, 3)
    first, second = _all(dataset), _all(dataset)
    assert sorted(first[1]) == sorted(y) and not np.array_equal(first[0], second[0])  # A new epoch per pass.
    again, _ = from_arrays(x, y, 8, seed=5, augment_images=True)
    np.testing.assert_array_equal(_all(again)[0], first[0])  # The same seed: the same epoch 0.


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, 15, 2]), r"labels range from 0 to 15; expected class indices 0 … 9"),
        (np.array([0, -1, 2, 3]), r"labels range from -1 to 3"),
        (np.array([0.0, 1.5, 2.0, 3.0]), r"labels must be integer class indices, got float64"),
        (np.eye(10)[:4], r"one class index per example, got shape \(4, 10\) \(one-hot\?"),
    ],
    ids=["too_large", "negative", "fractional", "one_hot"],
)
def test_check_labels_says_what_it_found_and_what_it_expected(labels, message):
    from kdkeras.labels import check_labels

    with pytest.raises(ValueError, match=message):
        check_labels(labels, 10)
    assert check_labels(np.array([[1.0], [2.0]]), 10).tolist() == [1, 2]


def test_a_copied_epoch_setter_sets_the_same_clock(idx_folder):
    """Keras Tuner deep-copies callbacks per trial: the copy must still drive the pipeline's clock."""
    import copy

    from kdkeras.callbacks import SetEpoch
    from kdkeras.data import EpochClock

    clock = EpochClock()
    copy.deepcopy(SetEpoch(clock)).on_epoch_begin(4)
    assert int(clock.variable.numpy()) == 4


def test_unlabeled_examples_are_the_next_training_images_marked_unlabeled(idx_folder):
    spec = f"idx:{idx_folder}"
    plain, _ = load_dataset(spec, "train", 100, max_examples=20, validation_fraction=0.2, shuffle=False)
    more, _ = load_dataset(spec, "train", 100, max_examples=30, validation_fraction=0.2, shuffle=False)
    mixed, info = load_dataset(spec, "train", 100, max_examples=20, unlabeled_examples=10, validation_fraction=0.2,
                               shuffle=False)  # fmt: skip
    ((images, targets),) = list(mixed)
    ((plain_images, plain_labels),) = list(plain)
    ((more_images, _),) = list(more)
    assert info.num_examples == 30 and set(targets) == {"labels", "labeled"}
    np.testing.assert_array_equal(targets["labeled"].numpy(), [1.0] * 20 + [0.0] * 10)
    np.testing.assert_array_equal(targets["labels"].numpy()[:20], plain_labels)
    np.testing.assert_array_equal(targets["labels"].numpy()[20:], 0)
    np.testing.assert_array_equal(images, more_images)  # The 10 images that follow the labeled 20.
    with pytest.raises(DatasetError, match="fewer than the 100 unlabeled_examples"):
        load_dataset(spec, "train", 8, max_examples=20, unlabeled_examples=100, validation_fraction=0.2)
    with pytest.raises(DatasetError, match="apply to the train split, not validation"):
        load_dataset(spec, "validation", 8, unlabeled_examples=5, validation_fraction=0.2)


def test_mixed_fraction_shows_mixes_of_two_views_without_labels(idx_folder):
    """Function matching's images: a share of the examples is λ·a + (1 − λ)·b of the example's own view and its
    partner's view in the same epoch, labeled −1 (no label); which ones, the partner and λ depend only on (seed,
    epoch, index)."""
    spec = f"idx:{idx_folder}"
    common = dict(validation_fraction=0.2, seed=4, augment_images=True, epoch=1, return_index=True, shuffle=False)

    def stream(**options):
        ((images, labels, indices),) = list(load_dataset(spec, "train", 100, **common, **options)[0])
        return images.numpy(), labels.numpy(), indices.numpy()

    views, labels, indices = stream()
    mixed_images, mixed_labels, mixed_indices = stream(mixed_fraction=0.5)
    np.testing.assert_array_equal(mixed_indices, indices)
    n = len(indices)
    is_mixed = []
    for i in indices:
        mixed, partner, weight = (t.numpy() for t in data.mix_draw(4, 1, i, n, 0.5))
        is_mixed.append(bool(mixed))
        if mixed:
            assert 0.0 <= weight <= 1.0 and 0 <= partner < n
            np.testing.assert_allclose(mixed_images[i], weight * views[i] + (1 - weight) * views[partner], atol=1e-4)
            assert mixed_labels[i] == -1
        else:
            np.testing.assert_array_equal(mixed_images[i], views[i])
            assert mixed_labels[i] == labels[i]
    assert 0.25 * n < sum(is_mixed) < 0.75 * n  # About half of the 48 examples.
    np.testing.assert_array_equal(stream(mixed_fraction=0.5)[0], mixed_images)  # The same draw every time.
    assert stream(mixed_fraction=1.0)[1].tolist() == [-1] * n and stream(mixed_fraction=0.0)[1].tolist() == list(labels)

    # Training batches carry the mask the distiller reads: a mixed image teaches through the teacher only.
    batches, _ = load_dataset(spec, "train", 100, validation_fraction=0.2, seed=4, mixed_fraction=0.5)
    ((_, targets),) = list(batches)
    assert set(targets) == {"labels", "labeled"} and 0 < targets["labeled"].numpy().mean() < 1
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(DatasetError, match="mixed_fraction must be a number in \\[0, 1\\]"):
            load_dataset(spec, "train", 8, validation_fraction=0.2, mixed_fraction=bad)
    with pytest.raises(DatasetError, match="mixed_fraction applies to the train split, not validation"):
        load_dataset(spec, "validation", 8, validation_fraction=0.2, mixed_fraction=0.5)
    # The recipe's arrays mix the same way.
    arrays, _ = data.from_arrays(views, np.maximum(labels, 0), 100, shuffle=False, mixed_fraction=1.0)
    ((_, targets),) = list(arrays)
    np.testing.assert_array_equal(targets["labeled"].numpy(), np.zeros(n))
