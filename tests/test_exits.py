"""Multi-exit students (kdkeras.models.exits), their terms (kdkeras.terms.exits) against numpy, and early exit
(kdkeras.early_exit) against a hand computation."""

import keras
import numpy as np
import pytest

import kdkeras
from kdkeras.distiller import Distiller
from kdkeras.early_exit import FINAL, choose_threshold, early_exit_curve, ensemble_predictions, exit_costs
from kdkeras.models import build_model
from kdkeras.models.exits import exit_layers, exits_model, without_exits
from kdkeras.profiling import count_flops

SHAPE = (28, 28, 1)
RNG = np.random.default_rng(0)
X = RNG.uniform(0, 255, (16, *SHAPE)).astype(np.float32)
Y = RNG.integers(0, 10, 16).astype(np.int32)


def _student(**kwargs):
    keras.utils.set_random_seed(0)
    return build_model("ds_alexnet", SHAPE, 10, width=0.25, dropout=0.0, exits=["stage3", "stage4"], **kwargs)


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kd(t, s, temperature):
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), from Hinton et al.'s formula."""
    log_p, log_q = _np_log_softmax(t / temperature), _np_log_softmax(s / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)


def test_a_multi_exit_model_is_the_plain_model_plus_heads_that_save_and_reload(tmp_path):
    student = _student()
    assert exit_layers(student) == ["exit_stage3", "exit_stage4"] and len(student.outputs) == 1
    plain = without_exits(student)
    np.testing.assert_allclose(student(X), plain(X), rtol=1e-6)
    assert count_flops(plain) < count_flops(student) and not exit_layers(plain)
    student.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    for a, b in zip(exits_model(reloaded)(X), exits_model(student)(X), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    costs = exit_costs(student)
    assert list(costs) == ["exit_stage3", "exit_stage4", FINAL]
    assert costs["exit_stage3"] < costs["exit_stage4"] < costs[FINAL] == count_flops(student)
    with pytest.raises(ValueError, match="has exits already"):
        kdkeras.models.exits.add_exits(student, ["stage2"])


def test_exit_terms_equal_their_formulas():
    keras.utils.set_random_seed(1)
    teacher = build_model("resnet", SHAPE, 10, depth=8, width=0.25)
    student = _student()
    specs = [{"name": "exit_ce"}, {"name": "exit_kd", "temperature": 2.0}, {"name": "self_kd", "temperature": 3.0},
             {"name": "self_kd", "metric": "self_ens", "source": "ensemble", "temperature": 2.0}]  # fmt: skip
    distiller = Distiller(teacher, student, specs)
    distiller.compile("adam")
    logs = distiller.test_on_batch(X, Y, return_dict=True)
    *exit_outputs, final = (np.array(z) for z in exits_model(student)(X))
    t = np.array(teacher(X))
    ce = sum(np.array(keras.losses.sparse_categorical_crossentropy(Y, z, from_logits=True)) for z in exit_outputs)
    np.testing.assert_allclose(logs["exit_ce"], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["exit_kd"], sum(_np_kd(t, z, 2.0) for z in exit_outputs).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["self_kd"], sum(_np_kd(final, z, 3.0) for z in exit_outputs).mean(), rtol=1e-5)
    mean = np.mean([np.exp(_np_log_softmax(z / 2.0)) for z in [*exit_outputs, final]], axis=0)
    ens = sum((mean * (np.log(mean) - _np_log_softmax(z / 2.0))).sum(-1) * 4.0 for z in exit_outputs)
    np.testing.assert_allclose(logs["self_ens"], ens.mean(), rtol=1e-4)


def test_self_distillation_needs_no_teacher_and_trains_the_exits():
    student = _student()
    distiller = Distiller(None, student)
    assert [t.name for t in distiller.terms] == ["ce", "exit_ce", "self_kd"]
    distiller.compile(keras.optimizers.SGD(0.05))
    head = student.get_layer("exit_stage3").kernel
    before = np.array(head)
    logs = distiller.train_on_batch(X, Y, return_dict=True)
    assert "teacher_accuracy" not in logs and not np.array_equal(before, np.array(head))
    with pytest.raises(ValueError, match=r"term\(s\) kd learn from a teacher"):
        Distiller(None, student, ["ce", "kd"])
    with pytest.raises(ValueError, match="has no exits"):
        Distiller(None, build_model("ds_alexnet", SHAPE, 10, width=0.25), ["ce", "exit_ce"])


def test_with_a_teacher_a_multi_exit_student_defaults_to_tskd_with_self_teaching():
    teacher = build_model("resnet", SHAPE, 10, depth=8, width=0.25)
    assert [t.name for t in Distiller(teacher, _student()).terms] == ["ce", "kd", "exit_ce", "exit_kd", "self_kd"]


def test_early_exit_curve_ensemble_and_vote_by_hand():
    labels = np.array([0, 1, 2, 1])
    logits = {  # Two exits and the final output, confident to different degrees.
        "a": np.log(np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.34, 0.33, 0.33]])),
        "b": np.log(np.array([[0.8, 0.1, 0.1], [0.1, 0.85, 0.05], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1]])),
        FINAL: np.log(np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])),
    }
    costs = {"a": 1e6, "b": 2e6, FINAL: 4e6}
    (point,) = early_exit_curve(labels, logits, costs, thresholds=[0.8])
    # Image 0 leaves at a (0.9, right), 1 at b (0.85, right), 2 and 3 at the final output (0.8 right, 0.8 right).
    assert point["accuracy"] == 1.0 and point["mflops"] == pytest.approx((1 + 2 + 4 + 4) / 4)
    assert point["exits"] == {"a": 0.25, "b": 0.25, FINAL: 0.5}
    (low,) = early_exit_curve(labels, logits, costs, thresholds=[0.55])
    # Images 0-2 leave at a (image 1 wrongly: 0.6 for class 0), image 3 at b (0.7 for class 1).
    assert low["exits"] == {"a": 0.75, "b": 0.25, FINAL: 0.0} and low["accuracy"] == 0.75
    ensemble = ensemble_predictions(logits)
    np.testing.assert_array_equal(ensemble["mean"], [0, 1, 2, 1])
    np.testing.assert_array_equal(ensemble["vote"], [0, 1, 2, 1])
    curve = [{"threshold": 0.5, "accuracy": 0.90, "mflops": 1.0}, {"threshold": 0.9, "accuracy": 0.918, "mflops": 2.0},
             {"threshold": 0.99, "accuracy": 0.92, "mflops": 3.0}]  # fmt: skip
    assert choose_threshold(curve, 0.92)["threshold"] == 0.9  # The cheapest within 0.3 points.
    assert choose_threshold(curve, 0.99)["threshold"] == 0.99  # None within: the most accurate.


@pytest.mark.slow
def test_the_tflite_cascade_leaves_where_the_keras_model_leaves(tmp_path):
    """Float: every image leaves at the same exit with the same class as the Keras early exit at that threshold;
    int8: nearly every one. The threshold splits the images between the first exit and later ones."""
    import tensorflow as tf

    from kdkeras.cascade import Cascade, export_cascade
    from kdkeras.early_exit import early_exit_curve, exit_logits

    student = _student()
    images = np.random.default_rng(3).uniform(0, 255, (64, *SHAPE)).astype(np.float32)
    labels = np.arange(64) % 10
    _, logits = exit_logits(student, tf.data.Dataset.from_tensor_slices((images, labels)).batch(32))
    first = np.exp(logits["exit_stage3"]) / np.exp(logits["exit_stage3"]).sum(-1, keepdims=True)
    threshold = float(np.median(first.max(-1)))
    (point,) = early_exit_curve(labels, logits, exit_costs(student), thresholds=[threshold])
    keras_leaves = np.where(first.max(-1) >= threshold, 0, -1)
    manifest = export_cascade(student, str(tmp_path / "float"), threshold)
    assert manifest["exits"] == ["exit_stage3", "exit_stage4", FINAL] and len(manifest["segments"]) == 3
    classes, leaves = Cascade(str(tmp_path / "float")).predict(images)
    np.testing.assert_array_equal(leaves == 0, keras_leaves == 0)
    assert np.mean(classes == labels) == pytest.approx(point["accuracy"])
    assert 0 < np.mean(leaves == 0) < 1
    export_cascade(student, str(tmp_path / "int8"), threshold, "int8", images[:32])
    int8_classes, _ = Cascade(str(tmp_path / "int8")).predict(images)
    assert np.mean(int8_classes == classes) >= 0.8
    with pytest.raises(ValueError, match="no kdkeras cascade export wrote it"):
        (tmp_path / "mine").mkdir()
        export_cascade(student, str(tmp_path / "mine"), threshold)


@pytest.mark.slow
def test_the_cascade_experiment_reports_each_form_against_the_keras_early_exit(tmp_path):
    """experiments/cascade.py: the cascade's mean MFLOPs are the exits' costs weighted by where the images left,
    every exit gets a latency row, and the report's Δ is the form's accuracy minus the Keras early exit's."""
    import importlib.util
    import os

    import tensorflow as tf

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "cascade.py")
    spec = importlib.util.spec_from_file_location("cascade_experiment", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    student = _student()
    images = np.random.default_rng(4).uniform(0, 255, (48, *SHAPE)).astype(np.float32)
    labels = np.arange(48) % 10
    test = tf.data.Dataset.from_tensor_slices((images, labels)).batch(20)  # Batches of 20, 20 and 8.
    form = script.run_form(student, str(tmp_path / "none"), "none", 0.2, None, test)
    costs = exit_costs(student)
    mflops = [costs[name] / 1e6 for name in ("exit_stage3", "exit_stage4", FINAL)]
    assert sum(form["leaving_at_each_exit"]) == 48
    from kdkeras.cascade import Cascade

    classes, _ = Cascade(str(tmp_path / "none")).predict(images)  # All 48 at once: the same as batch by batch.
    assert form["accuracy"] == pytest.approx(np.mean(classes == labels))
    assert form["mean_mflops"] == pytest.approx(np.dot(form["leaving_at_each_exit"], mflops) / 48)
    assert [e["exit"] for e in form["exits"]] == ["exit_stage3", "exit_stage4", FINAL]
    assert [e["mflops"] for e in form["exits"]] == pytest.approx(mflops)
    assert all(e["latency_ms"] > 0 for e in form["exits"])
    keras_point = {"accuracy": form["accuracy"] - 0.002, "mflops": 2.0, "full_mflops": mflops[-1]}
    result = {"command": "c", "machine": "m", "model": "s.keras", "seed": 0, "threshold": 0.2, "test_images": 48,
              "keras": keras_point, "keras_full_accuracy": 0.5, "forms": [form]}  # fmt: skip
    report = script.markdown(result)
    assert f"| LiteRT cascade, float32 | {form['accuracy']:.4f} | +0.20 | {form['mean_mflops']:.2f} |" in report
    assert report.count("\n| exit_") == 2 and f"\n| {FINAL} | {mflops[-1]:.2f} | " in report
