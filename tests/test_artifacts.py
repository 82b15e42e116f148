"""kdkeras.artifacts: atomic writes keep the previous file; loading refuses broken files and code."""

import json
import os
import stat

import keras
import numpy as np
import pytest

from kdkeras import artifacts


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "result.json"
    artifacts.write_json(path, {"accuracy": 0.9})
    with pytest.raises(TypeError):
        with artifacts.atomic_path(path, ".json") as tmp, open(tmp, "w") as f:
            f.write('{"accuracy": 0.')  # A half-written file, then a failure.
            raise TypeError("killed")
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert os.listdir(tmp_path) == ["result.json"]  # No temporary left behind.


def test_failed_model_save_keeps_previous_model(tmp_path, monkeypatch):
    path = tmp_path / "m.keras"
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    artifacts.save_model(model, path)
    before = path.read_bytes()

    def broken_save(filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(model, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        artifacts.save_model(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.keras"]


def test_save_model_needs_keras_suffix(tmp_path):
    with pytest.raises(ValueError, match="end in .keras"):
        artifacts.save_model(None, tmp_path / "m.h5")


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        artifacts.load_model(tmp_path / "missing.keras")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="corrupt.keras: not a valid .keras file"):
        artifacts.load_model(corrupt)


def test_a_folder_that_is_no_saved_model_is_named_as_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a model: give a .keras file or a SavedModel folder"):
        artifacts.load_model(tmp_path)


def test_an_unknown_custom_class_is_named(tmp_path):
    @keras.saving.register_keras_serializable(package="elsewhere")
    class Doubling(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((3,))
    keras.Model(inputs, Doubling()(inputs)).save(tmp_path / "custom.keras")
    # Loaded where the class is not defined, as the CLI would be.
    del keras.saving.get_custom_objects()["elsewhere>Doubling"]
    with pytest.raises(ValueError, match="custom.keras: uses the class 'Doubling', which is neither Keras' nor"):
        artifacts.load_model(tmp_path / "custom.keras")


def test_a_saved_model_folder_loads_as_a_model_that_teaches(tmp_path):
    """A SavedModel (here Keras' `export`) loads as an inference-only Keras model with the same outputs, and serves
    as a teacher of the distiller's output terms."""
    from kdkeras import Distiller
    from kdkeras.models import build_model

    keras.utils.set_random_seed(0)
    original = build_model("ds_alexnet", (28, 28, 1), 3, width=0.25)
    original.export(str(tmp_path / "exported"), verbose=False)
    teacher = artifacts.load_model(tmp_path / "exported")
    images = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(teacher.predict(images, verbose=0), original.predict(images, verbose=0), atol=1e-5)
    assert teacher.output_shape == (None, 3) and not teacher.trainable_weights

    distiller = Distiller(teacher, build_model("ds_alexnet", (28, 28, 1), 3, width=0.25), ["ce", "kd"])
    distiller.compile("adam")
    history = distiller.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["kd"][0]) and history.history["kd"][0] > 0


def test_a_saved_model_with_two_outputs_is_refused(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.f = tf.function(lambda x: {"a": x, "b": x}, input_signature=[tf.TensorSpec((None, 4), tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "two"), signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="one image input and one logits output"):
        artifacts.load_model(tmp_path / "two")


def test_lambda_layer_is_refused(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="contains code"):
        artifacts.load_model(tmp_path / "lambda.keras")


def test_config_path():
    assert artifacts.config_path("saved_models/student.keras") == "saved_models/student.config.json"


def test_loaded_model_predicts_like_the_saved_one(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    artifacts.save_model(model, tmp_path / "m.keras")
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(artifacts.load_model(tmp_path / "m.keras")(x), model(x))


def test_saved_models_leave_the_optimizer_out_unless_asked(tmp_path):
    import zipfile

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(64)(keras.layers.Dense(64)(inputs)))
    model.compile("adam", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 64)), verbose=0)
    artifacts.save_model(model, tmp_path / "lean.keras")
    artifacts.save_model(model, tmp_path / "full.keras", include_optimizer=True)

    def weights_bytes(name):
        return zipfile.ZipFile(tmp_path / name).getinfo("model.weights.h5").file_size

    assert weights_bytes("full.keras") > 2 * weights_bytes("lean.keras")
    lean = artifacts.load_model(tmp_path / "lean.keras", compile=True)
    assert getattr(lean, "optimizer", None) is None
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(lean(x), model(x), rtol=1e-6)
    assert model.optimizer is not None  # The caller's model is untouched.


def test_written_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp (owner-only); the final file must be as readable as open() makes it."""
    umask = os.umask(0o022)
    try:
        artifacts.write_json(tmp_path / "a.json", {"x": 1})
        artifacts.write_text(tmp_path / "b.md", "text")
    finally:
        os.umask(umask)
    for name in ("a.json", "b.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_the_saving_layer_imports_nothing_above_it_yet_loads_a_saved_distiller(tmp_path):
    """`artifacts` imports no kdkeras module up front; loading a saved `Distiller` in a fresh process imports the
    modules the file names (kdkeras' own only), so the distiller, its terms and adapters come back."""
    import subprocess
    import sys

    from kdkeras.distiller import Distiller
    from kdkeras.models import build_model

    teacher = build_model("ds_alexnet", (28, 28, 1), 10, width=0.25)
    student = build_model("ds_alexnet", (28, 28, 1), 10, width=0.25)
    Distiller(teacher, student, [{"name": "ce"}, {"name": "hint", "pairs": [["stage5", "stage5"]]}]).save(
        tmp_path / "d.keras"
    )
    probe = (
        "import sys; from kdkeras import artifacts; "
        "above = sorted(m for m in sys.modules if m.startswith('kdkeras.') and m != 'kdkeras.artifacts'); "
        f"d = artifacts.load_model({str(tmp_path / 'd.keras')!r}); "
        "print(above, type(d).__name__, [t.name for t in d.terms], len(d.adapters))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[] Distiller ['ce', 'hint'] 1"


def test_the_architecture_digest_ignores_generated_names_but_not_structure():
    def built(classes=3, skip=False):
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(4)(inputs)
        return keras.Model(inputs, keras.layers.Dense(classes)(inputs if skip else hidden))

    first, again = built(), built()  # The second build's layers are dense_2, dense_3: other names, same network.
    assert [layer.name for layer in first.layers] != [layer.name for layer in again.layers]
    assert artifacts.architecture_digest(first) == artifacts.architecture_digest(again)
    assert artifacts.architecture_digest(built(classes=5)) != artifacts.architecture_digest(first)  # A shape.
    assert artifacts.architecture_digest(built(skip=True)) != artifacts.architecture_digest(first)  # The wiring.

    def sequential():  # Its input layer's generated name is in the config but not in `.layers`.
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])

    assert artifacts.architecture_digest(sequential()) == artifacts.architecture_digest(sequential())
