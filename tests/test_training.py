"""kdkeras.training: configuration checks, the model/dataset fit check, and evaluation against numpy."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdkeras.data import DatasetInfo
from kdkeras.evaluation import check_classes, evaluate_classifier
from kdkeras.models import build_model
from kdkeras.training import TrainConfig, make_optimizer

INFO = DatasetInfo("toy", 3, ("a", "b", "c"), (28, 28, 1), 6)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"epochs": 0}, "epochs"), ({"lr": 0}, "lr"), ({"validation_fraction": 0.6}, "validation_fraction"),
     ({"max_train_examples": 0}, "max_train_examples"), ({"checkpoint_steps": 0}, "checkpoint_steps"),
     ({"lr": float("inf")}, "lr"), ({"batch_size": 1.5}, "batch_size"), ({"augment": "yes"}, "augment"),
     ({"epochs": 2, "warmup_epochs": 2}, "warmup_epochs")],
)  # fmt: skip
def test_config_ranges(kwargs, key):
    with pytest.raises(ValueError, match=f"{key}: must be"):
        TrainConfig(**kwargs)


def test_check_classes_names_classes_then_shape():
    with pytest.raises(ValueError, match="predicts 10 classes, the dataset toy has 3"):
        check_classes(build_model("ds_alexnet", (28, 28, 1), 10, width=0.25), INFO)
    with pytest.raises(ValueError, match=r"takes images of shape \(32, 32, 3\), the dataset toy has \(28, 28, 1\)"):
        check_classes(build_model("ds_alexnet", (32, 32, 3), 3, width=0.25), INFO)
    check_classes(build_model("ds_alexnet", (28, 28, 1), 3, width=0.25), INFO)  # Fits: no error.


def test_evaluate_classifier_matches_numpy():
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 1], np.int32)
    result = evaluate_classifier(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4), INFO)
    logits = np.asarray(model(x))
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    correct = logits.argmax(1) == y
    assert result["accuracy"] == pytest.approx(correct.mean())
    assert result["loss"] == pytest.approx(-log_probs[np.arange(6), y].mean(), rel=1e-5)
    assert result["per_class"] == {n: pytest.approx(correct[y == k].mean()) for k, n in enumerate("abc")}
    assert result["num_examples"] == 6


def test_optimizer_decays_to_zero_over_the_run():
    optimizer = make_optimizer(TrainConfig(epochs=2, lr=1e-3), steps_per_epoch=5)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "name, cls, options",
    [
        ("adam", "Adam", {}),
        ("adamw", "AdamW", {"weight_decay": 1e-4}),
        ("sgd", "SGD", {"momentum": 0.9, "nesterov": True}),
    ],
)
def test_optimizer_choice(name, cls, options):
    optimizer = make_optimizer(TrainConfig(optimizer=name, weight_decay=1e-4), steps_per_epoch=5)
    assert type(optimizer).__name__ == cls
    for key, value in options.items():
        assert getattr(optimizer, key) == pytest.approx(value)


def test_constant_schedule_keeps_the_rate():
    optimizer = make_optimizer(TrainConfig(schedule="constant", lr=3e-3), steps_per_epoch=5)
    assert float(optimizer.learning_rate) == pytest.approx(3e-3)


@pytest.mark.parametrize("key, value", [("optimizer", "lion"), ("schedule", "step"), ("weight_decay", -1.0)])
def test_bad_optimizer_settings_are_rejected(key, value):
    with pytest.raises(ValueError, match=f"{key}: must be"):
        TrainConfig(**{key: value})


def test_default_logdir_honours_kdkeras_runs_dir(monkeypatch, tmp_path):
    from kdkeras.training import default_logdir

    monkeypatch.setenv("KDKERAS_RUNS_DIR", str(tmp_path))
    assert os.path.dirname(default_logdir("train", "m")) == str(tmp_path)
    monkeypatch.delenv("KDKERAS_RUNS_DIR")
    assert os.path.dirname(default_logdir("train", "m")) == "runs"


class _CountImages(keras.layers.Layer):
    """Counts the images that pass through it (in a non-trainable variable, so graph steps count too)."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", dtype="int64", trainable=False, name="seen")

    def call(self, x):
        self.seen.assign_add(keras.ops.cast(keras.ops.shape(x)[0], "int64"))
        return x


def test_the_teacher_sees_the_validation_split_once_per_run(tmp_path):
    """Live teacher on the training steps, one pass over the validation images for the whole run; its validation
    accuracy is still reported, and is its real one."""
    from conftest import write_idx_folder

    from kdkeras.data import load_dataset
    from kdkeras.evaluation import evaluate_classifier
    from kdkeras.training import distill

    dataset = f"idx:{write_idx_folder(str(tmp_path / 'idx'), n_train=60, n_test=10, classes=3)}"
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    counter = _CountImages()
    body = build_model("ds_alexnet", (28, 28, 1), 3, width=0.25)
    teacher = keras.Model(inputs, body(counter(inputs)))
    config = TrainConfig(dataset=dataset, epochs=3, batch_size=12, verbose=0, validation_fraction=0.2)
    distiller, history, _, _ = distill(teacher, build_model("ds_alexnet", (28, 28, 1), 3, width=0.25), config)
    before = int(counter.seen.numpy())
    n_train, n_val = 48, 12
    assert before == 3 * n_train + n_val
    validation, info = load_dataset(dataset, "validation", 12, validation_fraction=0.2)
    expected = evaluate_classifier(teacher, validation, info)["accuracy"]
    assert history["val_teacher_accuracy"] == pytest.approx([expected] * 3)


def test_max_validation_examples_bounds_the_validation_split(tmp_path):
    from conftest import write_idx_folder

    from kdkeras.training import load_splits

    dataset = f"idx:{write_idx_folder(str(tmp_path / 'idx'), n_train=100, n_test=10, classes=3)}"
    _, validation, _ = load_splits(TrainConfig(dataset=dataset, batch_size=8, max_validation_examples=5))
    assert sum(len(labels) for _, labels in validation) == 5
    with pytest.raises(ValueError, match="max_validation_examples: must be"):
        TrainConfig(max_validation_examples=0)


@pytest.mark.parametrize("setting", [{"unlabeled_examples": 10}, {"mixed_fraction": 0.5}])
def test_images_without_labels_are_refused_for_training_alone(setting):
    """Transfer images and mixed images carry no label: only a teacher teaches on them, so `train` refuses them
    before anything is loaded; a share outside [0, 1] is refused when the config is made."""
    from kdkeras.training import train_classifier

    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name}: only a teacher can teach on images without labels"):
        train_classifier(build_model("ds_alexnet", (28, 28, 1), 10, width=0.25), TrainConfig(**setting))
    with pytest.raises(ValueError, match=r"mixed_fraction: must be a number in \[0, 1\], got 1.5"):
        TrainConfig(mixed_fraction=1.5)
