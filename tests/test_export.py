"""kdkeras.export: every format round-trips, the signature takes raw images, verification fails when it should."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import requires_fashion_mnist

from kdkeras import artifacts, cli
from kdkeras.data import load_dataset
from kdkeras.export import (
    QUANTIZATIONS,
    ExportVerificationError,
    TFLiteModel,
    configure_converter,
    export_model,
    representative_images,
    tflite_bytes,
    verify_path,
)
from kdkeras.models import build_model
from kdkeras.training import TrainConfig, train_classifier

# End-to-end exports: in `make test` (and CI), not in `make test-fast`.
pytestmark = [requires_fashion_mnist, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small student trained on 2000 Fashion-MNIST images; 126 steps, enough for batch-norm statistics."""
    keras.utils.set_random_seed(0)
    model = build_model("ds_alexnet", (28, 28, 1), 10, width=0.5)
    # Validation on 200 held-out images: the 6,000 of the full carve-out, scored twice, would double the fixture.
    config = TrainConfig(epochs=2, max_train_examples=2000, max_validation_examples=200, batch_size=32, verbose=0)
    train_classifier(model, config)
    path = str(tmp_path_factory.mktemp("export") / "student.keras")
    artifacts.save_model(model, path)
    test, info = load_dataset("fashion_mnist", "test", 128, max_examples=512)
    train, _ = load_dataset("fashion_mnist", "train", 128, shuffle=True)
    test_images, test_labels = next(iter(test))
    assert np.mean(np.argmax(model.predict_on_batch(test_images), -1) == test_labels.numpy()) > 0.6
    return model, path, test, info, representative_images(train, 100, info.input_shape)


@pytest.fixture(scope="module")
def tflite_exports(trained, tmp_path_factory):
    """The student exported (and verified) once per quantization, `{quantize: (path, record)}`: each conversion takes
    seconds, and the tests below read the same four files."""
    model, _, test, info, representative = trained
    folder = tmp_path_factory.mktemp("tflite")
    exports = {}
    for quantize in QUANTIZATIONS:
        out = str(folder / f"m_{quantize}.tflite")
        # A 2-epoch model has many near ties, so int8 moves its accuracy on 512 images by about a point, by how much
        # depends on the CPU's kernels (1.17 on one machine): the tests below check agreement with Keras, and the
        # 1-point gate has tests of its own (test_verification_fails_for_a_broken_model_and_writes_nothing).
        exports[quantize] = out, export_model(model, out, "tflite", test, info.class_names, quantize, representative,
                                              max_drop=3.0)  # fmt: skip
    return exports


@pytest.mark.parametrize(
    "quantize, min_agreement", [("none", 1.0), ("float16", 0.99), ("dynamic", 0.95), ("int8", 0.9)]
)
def test_tflite_round_trips_top1(trained, tflite_exports, quantize, min_agreement):
    model, _, test, _, _ = trained
    out, record = tflite_exports[quantize]
    assert record["passed"] and os.path.exists(out)
    assert json.loads(open(out + ".verify.json").read())["quantize"] == quantize
    images = next(iter(test))[0].numpy()
    interpreter = TFLiteModel(out)
    agreement = np.mean(interpreter.predict(images) == np.argmax(model.predict_on_batch(images), axis=-1))
    assert agreement >= min_agreement
    if quantize == "int8":
        assert interpreter.input["dtype"] == np.int8 and interpreter.output["dtype"] == np.int8


def test_quantized_files_are_smaller(tflite_exports):
    sizes = {quantize: os.path.getsize(path) for quantize, (path, _) in tflite_exports.items()}
    # A small model's file is partly graph structure, so the ratios are below the 2× and 4× of the weights.
    assert sizes["dynamic"] < sizes["float16"] < sizes["none"]
    assert sizes["int8"] < sizes["float16"]


def test_saved_model_signature_takes_uint8_of_any_batch_size(trained, tmp_path):
    model, _, test, info, _ = trained
    out = str(tmp_path / "saved")
    export_model(model, out, "saved_model", test, info.class_names)
    loaded = tf.saved_model.load(out)
    images = next(iter(test))[0].numpy()
    for batch in (1, 7):
        result = loaded.serve(tf.constant(images[:batch].astype(np.uint8)))
        assert result["probabilities"].shape == (batch, 10) and result["class_id"].shape == (batch,)
        np.testing.assert_allclose(result["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
        expected = np.argmax(model.predict_on_batch(images[:batch]), axis=-1)
        np.testing.assert_array_equal(result["class_id"].numpy(), expected)
        assert [n.decode() for n in result["class_name"].numpy()] == [info.class_names[i] for i in expected]
    with pytest.raises((ValueError, TypeError)):
        loaded.serve(tf.zeros((1, 28, 28, 1), tf.float32))  # The signature takes uint8 only.


def test_verification_fails_for_a_broken_model_and_writes_nothing(trained, tmp_path):
    model, _, test, info, _ = trained
    broken = build_model("ds_alexnet", (28, 28, 1), 10, width=0.5)  # Untrained: chance accuracy.
    out = str(tmp_path / "broken.tflite")
    with pytest.raises(ExportVerificationError, match="points below the Keras model's"):
        export_model(broken, out, "tflite", test, info.class_names, reference=model)
    assert not os.path.exists(out)
    assert json.loads(open(out + ".failed.verify.json").read())["passed"] is False
    assert sorted(os.listdir(tmp_path)) == ["broken.tflite.failed.verify.json"]  # No staging folder left.


def test_a_failed_export_keeps_the_previous_good_export_and_its_record(trained, tmp_path):
    model, _, test, info, _ = trained
    out = str(tmp_path / "student.tflite")
    export_model(model, out, "tflite", test, info.class_names)
    good, good_record = open(out, "rb").read(), open(out + ".verify.json").read()
    broken = build_model("ds_alexnet", (28, 28, 1), 10, width=0.5)
    with pytest.raises(ExportVerificationError, match=r"details in .*student.tflite.failed.verify.json"):
        export_model(broken, out, "tflite", test, info.class_names, reference=model)
    assert open(out, "rb").read() == good and open(out + ".verify.json").read() == good_record
    assert json.loads(open(out + ".failed.verify.json").read())["passed"] is False
    export_model(model, out, "tflite", test, info.class_names)  # A passing export clears the stale failure.
    assert not os.path.exists(out + ".failed.verify.json")


def test_representative_images_of_the_wrong_size_are_refused(trained):
    model, _, _, _, _ = trained
    cifar_like = [(np.zeros((4, 32, 32, 3), np.float32), np.zeros(4))]
    with pytest.raises(ValueError, match=r"representative images have shape \(32, 32, 3\), the model takes"):
        representative_images(cifar_like, 4, model.inputs[0].shape[1:])


def test_an_unknown_quantization_is_refused_by_both_converter_paths(trained):
    model, _, _, _, _ = trained
    message = "unknown quantization 'int4'; choose one of: none, float16, dynamic, int8"
    with pytest.raises(ValueError, match=message):
        tflite_bytes(model, quantize="int4")
    # The compression path configures its own converter: the same check guards it.
    with pytest.raises(ValueError, match=message):
        configure_converter(converter=None, quantize="int4")


def test_export_cli_and_its_bad_input(trained, tmp_path, capsys):
    _, path, _, _, _ = trained
    out = str(tmp_path / "s.tflite")
    assert (
        cli.main(["export", "--model", path, "--quantize", "dynamic", "--out", out, "--max-test-examples", "300"]) == 0
    )
    assert "exported" in capsys.readouterr().out and os.path.exists(out)
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("hello")
    idx_like = tmp_path / "rgb"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (idx_like / split / name).mkdir(parents=True)
            tf.keras.utils.save_img(str(idx_like / split / name / "0.png"), np.zeros((32, 32, 3)))
    cases = [
        (["export", "--model", str(not_a_model), "--out", out], "not a valid .keras file"),
        (["export", "--model", path, "--dataset", f"folder:{idx_like}", "--out", out],
         "predicts 10 classes, the dataset"),
        (["export", "--model", path, "--format", "saved_model", "--quantize", "int8", "--out", str(tmp_path / "sm")],
         "quantization applies to --format tflite only"),
    ]  # fmt: skip
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_tflite_model_refuses_wrong_input_and_bad_files(tflite_exports, tmp_path):
    path, _ = tflite_exports["none"]
    with pytest.raises(ValueError, match=r"the model takes \(28, 28, 1\)"):
        TFLiteModel(path).logits(np.zeros((1, 32, 32, 3), np.float32))
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="not a valid TFLite model"):
        TFLiteModel(str(bad))


def test_an_export_never_replaces_what_no_kdkeras_export_wrote(trained, tmp_path):
    """A user's folder or file at --out is refused and kept; an earlier kdkeras export there (file or SavedModel
    folder, recognized by its verify record) is replaced."""
    model, _, test, info, _ = trained
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "keep.txt").write_text("keep")
    for fmt in ("tflite", "saved_model"):
        with pytest.raises(ValueError, match=r"existing folder that no kdkeras export wrote"):
            export_model(model, str(folder), fmt, test, info.class_names)
    assert (folder / "sub" / "keep.txt").read_text() == "keep"
    plain = tmp_path / "notes.tflite"
    plain.write_text("mine")
    with pytest.raises(ValueError, match=r"existing file that no kdkeras export wrote"):
        export_model(model, str(plain), "tflite", test, info.class_names)
    assert plain.read_text() == "mine"

    out = str(tmp_path / "m.export")
    export_model(model, out, "tflite", test, info.class_names)
    record = export_model(model, out, "saved_model", test, info.class_names)  # Replaces its own earlier export.
    assert os.path.isdir(out) and record["passed"] and json.load(open(verify_path(out)))["file"] == out


def test_running_a_tflite_file_prints_no_litert_info_line(tflite_exports, capfd):
    from kdkeras.export import TFLiteModel

    capfd.readouterr()
    model = TFLiteModel(tflite_exports["none"][0])
    model.logits(np.zeros((3, *model.input_shape), np.float32))
    assert "XNNPACK" not in capfd.readouterr().err
