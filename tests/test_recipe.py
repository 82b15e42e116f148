"""kdkeras.recipe and the top-level API: a user's script of the README's kind, on arrays and on tf.data, with
Sequential models and a teacher of another input size; bad input is a ValueError naming the problem."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kdkeras

# End-to-end runs: in `make test` (and CI), not in `make test-fast`.
pytestmark = pytest.mark.slow

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 3, 240)
# Learnable: each class has its own brightness.
X = (RNG.integers(0, 60, (240, 28, 28)) + 80 * Y[:, None, None]).astype(np.uint8)


def _rgb32(images):
    return np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1)


def _sequential(shape):
    return keras.Sequential(
        [keras.Input(shape), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(8, 3, strides=2),
         keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
         keras.layers.Dense(3)]
    )  # fmt: skip


def test_import_kdkeras_exposes_the_api_without_starting_tensorflow():
    code = "import sys, kdkeras; print('tensorflow' in sys.modules, sorted(kdkeras.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")
    for name in ("Distiller", "build_model", "load_dataset", "terms", "train", "distill"):
        assert name in out
    assert kdkeras.Distiller is __import__("kdkeras.distiller").distiller.Distiller


def test_a_users_script_a_32x32_rgb_sequential_teacher_teaches_a_28x28_gray_student():
    keras.utils.set_random_seed(0)
    teacher = _sequential((32, 32, 3))
    trained = kdkeras.train(
        teacher, (_rgb32(X), Y), epochs=3, batch_size=16, verbose=0, test_data=(_rgb32(X[:60]), Y[:60])
    )
    by_hand = np.mean(np.argmax(teacher.predict(_rgb32(X[:60]).astype("float32"), verbose=0), -1) == Y[:60])
    assert trained.record["test_accuracy"] == pytest.approx(by_hand) and len(trained.record["history"]["loss"]) == 3
    assert trained.record["history"]["loss"][-1] < trained.record["history"]["loss"][0]
    student = _sequential((28, 28, 1))
    result = kdkeras.distill(teacher, student, (X, Y), validation_data=(X[:60], Y[:60]), test_data=(X[:60], Y[:60]),
                             terms=["ce", "kd"], epochs=2, verbose=0)  # fmt: skip
    history = result.record["history"]
    assert set(history) >= {"ce", "kd", "val_teacher_accuracy", "val_accuracy"} and len(history["ce"]) == 2
    assert isinstance(result.distiller, kdkeras.Distiller) and result.distiller.student is student
    assert 0 <= result.record["test_accuracy"] <= 1 and result.record["test_examples"] == 60


def test_the_recipe_on_a_tf_data_pipeline_of_your_own():
    keras.utils.set_random_seed(0)
    teacher, student = _sequential((28, 28, 1)), _sequential((28, 28, 1))
    data = tf.data.Dataset.from_tensor_slices((X.astype("float32")[..., None], Y)).batch(32)
    result = kdkeras.distill(teacher, student, data, validation_data=data.take(2), epochs=2, verbose=0)
    assert len(result.record["history"]["val_loss"]) == 2 and "test_accuracy" not in result.record


def test_the_recipe_refuses_what_it_cannot_train_on_with_a_value_error():
    model = _sequential((28, 28, 1))
    with pytest.raises(ValueError, match=r"labels range from 0 to 7; expected class indices 0 … 2"):
        kdkeras.train(model, (X, np.where(Y == 2, 7, Y)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="unknown setting\\(s\\) epoch; the settings are"):
        kdkeras.train(model, (X, Y), epoch=1)
    unknown_length = tf.data.Dataset.from_tensor_slices((X[..., None], Y)).filter(lambda x, y: True).batch(8)
    with pytest.raises(ValueError, match="unknown number of batches"):
        kdkeras.train(model, unknown_length, epochs=1)
    with pytest.raises(ValueError, match="batched \\(images, labels\\) pairs"):
        kdkeras.train(model, tf.data.Dataset.from_tensor_slices((X[..., None], Y)), epochs=1)
    with pytest.raises(ValueError, match=r"takes images of shape \(28, 28, 1\), the data has \(32, 32, 3\)"):
        kdkeras.train(model, (_rgb32(X), Y), epochs=1)
    with pytest.raises(ValueError, match="data must be a dataset spec"):
        kdkeras.train(model, X, epochs=1)
    batches = tf.data.Dataset.from_tensor_slices((X[..., None], Y)).batch(8)
    with pytest.raises(ValueError, match="mixed_fraction applies to a dataset spec or arrays"):
        kdkeras.distill(model, _sequential((28, 28, 1)), batches, epochs=1, mixed_fraction=0.5)


def test_the_recipe_on_arrays_checkpoints_and_refuses_a_checkpoint_of_other_data(tmp_path):
    from kdkeras.callbacks import CheckpointMismatchError

    keras.utils.set_random_seed(0)
    backup = str(tmp_path / "backup")
    kdkeras.train(_sequential((28, 28, 1)), (X, Y), epochs=1, verbose=0, backup_dir=backup)
    with pytest.raises(CheckpointMismatchError, match="different dataset"):
        kdkeras.train(_sequential((28, 28, 1)), (X[::-1], Y[::-1]), epochs=1, verbose=0, backup_dir=backup)
