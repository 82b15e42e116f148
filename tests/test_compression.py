"""kdkeras.compression: the tf_keras rebuild is exact, each tfmot method does what it says, and Keras 3 still
trains in the same process afterwards."""

import ast
import os

import keras
import numpy as np
import pytest
from conftest import write_idx_folder

from kdkeras import artifacts, cli, compression
from kdkeras.data import load_dataset
from kdkeras.export import TFLiteModel
from kdkeras.models import build_model

# End-to-end runs: in `make test` (and CI), not in `make test-fast`.
pytestmark = pytest.mark.slow

X = np.random.default_rng(0).uniform(0, 255, (6, 28, 28, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    keras.utils.set_random_seed(0)
    teacher = build_model("alexnet", (28, 28, 1), 3, width=0.25)
    student = build_model("ds_alexnet", (28, 28, 1), 3, width=0.25)
    dataset = f"idx:{write_idx_folder(str(root / 'idx'), n_train=220, n_test=60)}"
    train, _ = load_dataset(dataset, "train", 50, augment_images=True)
    return teacher, student, train, dataset, root


@pytest.mark.parametrize("name, kwargs", [("ds_alexnet", {}), ("alexnet", {}), ("resnet", {"depth": 8})])
def test_tf_keras_rebuild_gives_the_same_logits(name, kwargs):
    model = build_model(name, (28, 28, 1), 10, width=0.5, **kwargs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, np.arange(6), verbose=0)  # Non-trivial BN statistics.
    twin = compression.to_tf_keras(model)
    assert type(twin).__module__.startswith("tf_keras")
    np.testing.assert_allclose(twin(X, training=False).numpy(), model.predict_on_batch(X), rtol=1e-5, atol=1e-5)


def test_pruning_reaches_the_requested_sparsity(pair):
    """At 0.8 here; test_resume's compress run reaches 0.5 through the command line (each kernel, the depthwise
    ones left dense, the TFLite file verified), resumed after a kill."""
    teacher, student, train, _, _ = pair
    sparsity = 0.8
    stripped, report = compression.fine_tune(student, teacher, train, "prune", epochs=2, sparsity=sparsity)
    zeros = compression.kernel_sparsity(stripped)
    pruned = {k: v for k, v in zeros.items() if "depthwise" not in k}
    assert pruned and all(abs(v - sparsity) < 0.02 for v in pruned.values()), zeros
    # tfmot does not prune depthwise kernels; the report says so rather than hiding it.
    assert all(v < 0.05 for k, v in zeros.items() if "depthwise" in k)
    assert report["kernel_sparsity"] == zeros
    tflite = compression.tflite_from_tf_keras(stripped, "dynamic")
    assert len(tflite) > 0


def test_qat_and_clustering_give_valid_tflite(pair, tmp_path):
    teacher, student, train, _, _ = pair
    qat, report = compression.fine_tune(student, teacher, train, "qat", epochs=1)
    assert report["kernel_sparsity"] is None and np.isfinite(report["last_loss"])
    clustered, report = compression.fine_tune(student, teacher, train, "cluster", epochs=1, clusters=4)
    unique = report["kernel_unique_values"]
    assert all(n <= 4 for k, n in unique.items() if "depthwise" not in k), unique
    assert all(n > 4 for k, n in unique.items() if "depthwise" in k)  # tfmot does not cluster them: reported.
    int8_tensors = {}
    for name, model in (("qat", qat), ("cluster", clustered)):
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(compression.tflite_from_tf_keras(model, "dynamic" if name == "qat" else "none"))
        tflite = TFLiteModel(str(path))
        logits = tflite.logits(X)
        assert logits.shape == (6, 3) and np.all(np.isfinite(logits))
        int8_tensors[name] = _int8_tensor_count(tflite)
    # The converter's "Statistics for quantized inputs were expected" warning also shows when it silently leaves
    # a QAT model in float (tensorflow/tensorflow#57619). Dynamic-range conversion of the float student makes
    # only its weights int8; the QAT model's activations are int8 as well.
    path = tmp_path / "float_dynamic.tflite"
    path.write_bytes(compression.tflite_from_tf_keras(compression.to_tf_keras(student), "dynamic"))
    weights_only = _int8_tensor_count(TFLiteModel(str(path)))
    assert int8_tensors["cluster"] == 0 and 0 < weights_only < int8_tensors["qat"], (weights_only, int8_tensors)


def _int8_tensor_count(tflite: TFLiteModel) -> int:
    return sum(t["dtype"] == np.int8 for t in tflite.interpreter.get_tensor_details())


def test_keras3_training_still_works_after_compression(pair):
    import tensorflow_model_optimization  # noqa: F401  # Sets TF_USE_LEGACY_KERAS=1, as the other tests did.

    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    assert keras.__version__.startswith("3.")
    model = build_model("ds_alexnet", (28, 28, 1), 3, width=0.25)
    assert type(model).__module__.startswith("keras.src")
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _, _, train, _, _ = pair
    history = model.fit(train, epochs=3, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_compress_cli_and_bad_options(pair, capsys):
    teacher, student, _, dataset, root = pair
    teacher_path, student_path = str(root / "t.keras"), str(root / "s.keras")
    artifacts.save_model(teacher, teacher_path)
    artifacts.save_model(student, student_path)
    out = str(root / "c.tflite")
    argv = ["compress", "--model", student_path, "--teacher", teacher_path, "--dataset", dataset, "--epochs", "1"]
    assert cli.main([*argv, "--cluster", "4", "--out", out, "--max-drop", "100"]) == 0
    assert os.path.exists(out) and "distinct values" in capsys.readouterr().out
    for bad in (["--prune", "1.5"], ["--cluster", "1"], ["--prune", "0.5", "--qat"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, *bad, "--out", out])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "must be in (0, 1), got 1.5" in err and "must be >= 2, got 1" in err and "not allowed with" in err


def test_only_the_compression_module_imports_tfmot():
    package = os.path.join(os.path.dirname(os.path.dirname(__file__)), "kdkeras")
    importers = []
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                tree = ast.parse(open(path).read())
                for node in ast.walk(tree):
                    modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                        [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
                    if any(m.startswith("tensorflow_model_optimization") for m in modules):
                        importers.append(os.path.relpath(path, package))
    assert importers == ["compression.py"]
