"""kdkeras.distiller: which variables learn, the loss against an independent computation, feature pairs of other
shapes, validation, saving, and a short real distillation."""

import keras
import numpy as np
import pytest
from conftest import requires_fashion_mnist

from kdkeras import terms
from kdkeras.distiller import Distiller
from kdkeras.losses import attention_transfer_loss, hint_loss, soft_target_kl
from kdkeras.models import build_model

SHAPE = (28, 28, 1)
RNG = np.random.default_rng(0)
X = RNG.uniform(0, 255, (16, *SHAPE)).astype(np.float32)
Y = RNG.integers(0, 10, 16).astype(np.int32)


def small_pair(teacher_name="alexnet", **teacher_kwargs):
    keras.utils.set_random_seed(0)
    teacher = build_model(teacher_name, SHAPE, 10, width=0.25, **teacher_kwargs)
    # alexnet's head starts at zero; a trained teacher's is not (and a zero head passes no gradient to the body).
    head = teacher.get_layer("logits").kernel
    head.assign(RNG.normal(0, 0.1, head.shape).astype(np.float32))
    student = build_model("ds_alexnet", SHAPE, 10, width=0.25)
    return teacher, student


def classic(alpha=0.5, beta=0.5, gamma=None, temperature=4.0, pairs=(), feature_loss=None):
    """The classic TSKD sum α·ce + β·kd + γ·feature as a term list."""
    return terms.from_options(
        alpha=alpha, beta=beta, gamma=gamma, temperature=temperature, feature_pairs=list(pairs) or "none",
        feature_loss=feature_loss,
    )  # fmt: skip


def values(variables):
    return [np.array(v) for v in variables]


def changed(before, variables):
    return [not np.array_equal(b, np.array(v)) for b, v in zip(before, variables, strict=True)]


def test_classic_mode_trains_student_and_adapters_only():
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, classic(pairs=[("stage3", "stage3"), ("stage5", "stage5")]))
    distiller.compile(keras.optimizers.SGD(0.1))
    teacher_before, adapters_before = values(teacher.weights), values(distiller.adapters[0].trainable_variables)
    student_before = values(student.trainable_variables)
    distiller.train_on_batch(X, Y)
    assert not any(changed(teacher_before, teacher.weights))  # Weights and BN statistics alike.
    assert all(changed(student_before, student.trainable_variables))
    assert all(changed(adapters_before, distiller.adapters[0].trainable_variables))
    assert {id(v) for v in distiller.trainable_variables} == {id(v) for v in distiller._student_variables}


def test_collaborative_mode_trains_the_teacher_with_its_own_optimizer():
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, classic(pairs=[("stage5", "stage5")]), collaborative=True)
    distiller.compile(keras.optimizers.SGD(0.1), teacher_optimizer=keras.optimizers.SGD(0.01))
    teacher_before, student_before = values(teacher.trainable_variables), values(student.trainable_variables)
    logs = distiller.train_on_batch(X, Y, return_dict=True)
    assert all(changed(teacher_before, teacher.trainable_variables))
    assert all(changed(student_before, student.trainable_variables))
    assert distiller.teacher_optimizer.iterations.numpy() == 1 and distiller.optimizer.iterations.numpy() == 1
    assert "teacher_loss" in logs and np.isfinite(logs["teacher_loss"])


@pytest.mark.parametrize("pairs", [(), [("stage2", "stage1"), ("stage3", "stage4")]], ids=["logits", "with_hints"])
def test_collaborative_teacher_gradient_is_its_own_loss_only(pairs):
    """One SGD step of the teacher equals −lr · ∇[CE(y, t) + β·KL(s ‖ t)] computed independently; feature hints,
    when present, train the student and its adapters only, never the teacher."""
    keras.utils.set_random_seed(0)  # No dropout in either network, so both passes see the same function.
    teacher = build_model("resnet", SHAPE, 10, depth=8, width=0.25)
    student = build_model("ds_alexnet", SHAPE, 10, width=0.25, dropout=0.0)
    gamma = 5.0 if pairs else None
    distiller = Distiller(teacher, student, classic(temperature=3.0, beta=0.7, gamma=gamma, pairs=pairs),
                          collaborative=True, teacher_mimicry=1.0)  # fmt: skip
    distiller.compile(keras.optimizers.SGD(0.0), teacher_optimizer=keras.optimizers.SGD(0.5))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        t_logits = teacher(X, training=True)
        s_logits = tf.stop_gradient(student(X, training=True))
        ce = keras.losses.sparse_categorical_crossentropy(Y, t_logits, from_logits=True)
        expected_loss = tf.reduce_mean(ce + 0.7 * soft_target_kl(s_logits, t_logits, 3.0))
    grads = tape.gradient(expected_loss, teacher.trainable_variables)
    before = values(teacher.trainable_variables)
    distiller.train_on_batch(X, Y)
    for b, g, v in zip(before, grads, teacher.trainable_variables, strict=True):
        np.testing.assert_allclose(np.array(v), b - 0.5 * np.array(g), rtol=1e-3, atol=1e-5)


def test_test_step_loss_equals_independent_computation():
    teacher, student = small_pair()
    pairs = [("stage3", "stage3"), ("stage5", "stage5")]
    distiller = Distiller(teacher, student, classic(0.3, 0.6, 2.0, 2.5, pairs))
    distiller.compile("adam")
    logs = distiller.test_on_batch(X, Y, return_dict=True)

    t_logits, s_logits = np.array(teacher(X)), np.array(student(X))
    ce = np.array(keras.losses.sparse_categorical_crossentropy(Y, s_logits, from_logits=True))
    kd = np.array(soft_target_kl(t_logits, s_logits, 2.5))
    feature = 0.0
    for (t_name, s_name), adapter in zip(pairs, distiller.adapters, strict=True):
        t_feat = keras.Model(teacher.input, teacher.get_layer(t_name).output)(X)
        s_feat = keras.Model(student.input, student.get_layer(s_name).output)(X)
        feature = feature + np.array(hint_loss(t_feat, adapter(s_feat, training=False)))
    np.testing.assert_allclose(logs["ce"], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["kd"], kd.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["hint"], feature.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], (0.3 * ce + 0.6 * kd + 2.0 * feature).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], np.mean(s_logits.argmax(-1) == Y))
    np.testing.assert_allclose(logs["teacher_accuracy"], np.mean(t_logits.argmax(-1) == Y))


def _regularized_classifier(seed: int) -> keras.Model:
    """A user's own model with weight and activity regularizers (the built-in models have none)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", kernel_regularizer=keras.regularizers.L2(0.05))(x)
    x = keras.layers.ActivityRegularization(l1=0.01)(keras.layers.GlobalAveragePooling2D()(x))
    outputs = keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(0.05), name="logits")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("collaborative", [False, True], ids=["classic", "collaborative"])
def test_regularizers_count_as_in_keras_fit(collaborative):
    """With the labels alone, one distiller step moves a regularized student (and, collaborative with mimicry 0, a
    regularized teacher) exactly as `keras.Model.train_on_batch` moves a twin, and logs the same loss."""
    twins = {"student": _regularized_classifier(1)}
    student = _regularized_classifier(1)
    if collaborative:
        teacher, twins["teacher"] = _regularized_classifier(2), _regularized_classifier(2)
    else:
        teacher, _ = small_pair()
    keras_logs = {}
    for role, twin in twins.items():
        twin.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        keras_logs[role] = twin.train_on_batch(X, Y, return_dict=True)
    distiller = Distiller(teacher, student, ["ce"], collaborative=collaborative)
    distiller.compile(keras.optimizers.SGD(0.5), keras.optimizers.SGD(0.5) if collaborative else None)
    logs = distiller.train_on_batch(X, Y, return_dict=True)

    assert logs["loss"] > logs["ce"]  # The per-term log is the term alone; the loss adds the regularization.
    np.testing.assert_allclose(logs["loss"], keras_logs["student"]["loss"], rtol=1e-5)
    trained = {"student": student, "teacher": teacher}
    for role, twin in twins.items():
        for ours, theirs in zip(trained[role].weights, twin.weights, strict=True):
            np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-7, err_msg=role)


def test_feature_pairs_with_different_channels_and_spatial_sizes():
    teacher, student = small_pair("resnet", depth=8)  # stage3: 7×7×16; student stage5: 4×4×32.
    distiller = Distiller(teacher, student, classic(pairs=[("stage3", "stage5"), ("stage2", "stage3")]))
    assert [a.channels for a in distiller.adapters] == [16, 8]
    distiller.compile("adam")
    logs = distiller.train_on_batch(X, Y, return_dict=True)
    assert np.isfinite(logs["hint"]) and logs["hint"] > 0


def test_attention_transfer_needs_no_adapters_and_matches_its_loss():
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, [{"name": "attention", "pairs": [["stage3", "stage3"]]}])
    distiller.compile("adam")
    assert distiller.adapters == []
    logs = distiller.test_on_batch(X, Y, return_dict=True)
    t_feat = keras.Model(teacher.input, teacher.get_layer("stage3").output)(X)
    s_feat = keras.Model(student.input, student.get_layer("stage3").output)(X)
    np.testing.assert_allclose(logs["loss"], np.mean(attention_transfer_loss(t_feat, s_feat)), rtol=1e-5)


def test_fit_reports_every_term_and_the_teacher():
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, classic(pairs=[("stage5", "stage5")]))
    distiller.compile("adam")
    history = distiller.fit(X, Y, validation_data=(X, Y), epochs=1, batch_size=8, verbose=0)
    for key in ("loss", "ce", "kd", "hint", "accuracy", "teacher_accuracy"):
        assert key in history.history and f"val_{key}" in history.history
    assert distiller.predict(X[:3], verbose=0).shape == (3, 10)


@pytest.mark.parametrize(
    "specs, message",
    [
        ([{"name": "kd", "temperature": 0}], "term 'kd': temperature must be a finite number > 0"),
        ([{"name": "ce", "weight": -1}], "term 'ce': weight must be a finite number >= 0"),
        ([{"name": "kd", "temperature": float("inf")}], "temperature must be a finite number"),
        ([], "no terms"),
        (["nope"], "unknown term 'nope'; choose one of: attention, ce, dist, dkd, exit_ce, exit_kd, hint, kd"),
        ([{"name": "kd", "temprature": 2}], "term 'kd': .*temprature.*; it takes: weight, temperature, standardize"),
        (["ce", "ce"], "two terms report as ce"),
        ([{"name": "ce", "metric": "loss"}], "reserved for the distiller's own metrics"),
        ([{"name": "hint", "pairs": [["stage9", "stage5"]]}], "teacher 'alexnet' has no layer 'stage9'; its stage"),
        ([{"name": "hint", "pairs": [["stage5", "nope"]]}], "student 'ds_alexnet' has no layer 'nope'"),
        ([{"name": "hint", "pairs": [["stage5", "logits"]]}], "student layer 'logits' outputs shape .* not a"),
    ],
)
def test_invalid_terms_are_one_line_errors(specs, message):
    teacher, student = small_pair()
    with pytest.raises(ValueError, match=message):
        Distiller(teacher, student, specs)


def test_mismatched_models_are_refused():
    teacher, _ = small_pair()
    with pytest.raises(ValueError, match="teacher has 10 classes, student 3"):
        Distiller(teacher, build_model("ds_alexnet", SHAPE, 3, width=0.25))
    two_outputs = keras.Model(teacher.inputs, [teacher.output, teacher.output])
    with pytest.raises(ValueError, match="2 output"):
        Distiller(two_outputs, build_model("ds_alexnet", SHAPE, 10, width=0.25))
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="not built: start a Sequential model with keras.Input"):
        Distiller(teacher, unbuilt)
    with pytest.raises(ValueError, match="only used with collaborative=True"):
        Distiller(teacher, build_model("ds_alexnet", SHAPE, 10, width=0.25)).compile("adam", "adam")


def test_weights_and_whole_distiller_round_trip(tmp_path):
    teacher, student = small_pair()
    specs = classic(temperature=3.0, pairs=[("stage5", "stage5")])
    distiller = Distiller(teacher, student, specs, teacher_mimicry=0.5)
    distiller.compile("adam")
    distiller.train_on_batch(X, Y)
    distiller.save_weights(tmp_path / "d.weights.h5")
    fresh_teacher, fresh_student = small_pair()
    keras.utils.set_random_seed(1)
    fresh = Distiller(fresh_teacher, build_model("ds_alexnet", SHAPE, 10, width=0.25), specs)
    fresh.load_weights(tmp_path / "d.weights.h5")
    np.testing.assert_allclose(fresh.predict(X, verbose=0), distiller.predict(X, verbose=0), rtol=1e-5)
    np.testing.assert_allclose(fresh.adapters[0].conv.kernel, distiller.adapters[0].conv.kernel)

    distiller.save(tmp_path / "d.keras")
    reloaded = keras.saving.load_model(tmp_path / "d.keras")
    assert [terms.serialize(t) for t in reloaded.terms] == [terms.serialize(t) for t in distiller.terms]
    assert reloaded.terms[1].temperature == 3.0 and reloaded.terms[2].pairs == [("stage5", "stage5")]
    assert reloaded.teacher_mimicry == 0.5
    assert reloaded.optimizer is not None  # Compiled again from its compile config.
    np.testing.assert_allclose(reloaded.predict(X, verbose=0), distiller.predict(X, verbose=0), rtol=1e-5)


@pytest.mark.slow
@requires_fashion_mnist
def test_short_distillation_on_fashion_mnist_beats_chance():
    from kdkeras.evaluation import evaluate_classifier
    from kdkeras.training import TrainConfig, distill, train_classifier

    config = TrainConfig(epochs=2, max_train_examples=3000, max_validation_examples=200, batch_size=64, verbose=0)
    keras.utils.set_random_seed(0)
    teacher = build_model("alexnet", SHAPE, 10, width=0.25)  # The cheapest teacher that teaches something.
    train_classifier(teacher, config)
    student = build_model("ds_alexnet", SHAPE, 10, width=0.5)
    distiller, history, _, info = distill(teacher, student, config, terms=classic(pairs=[("stage5", "stage5")]))
    from kdkeras.data import load_dataset

    test, info = load_dataset("fashion_mnist", "test", 256, max_examples=2000)
    accuracy = evaluate_classifier(student, test, info)["accuracy"]
    assert accuracy > 0.6, accuracy  # Chance is 0.1.
    assert history["loss"][-1] < history["loss"][0]


def test_cached_teacher_logits_skip_the_teacher_and_give_the_same_losses():
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, ["ce", "kd", "dkd"])
    distiller.compile("adam")
    live = distiller.test_on_batch(X, Y, return_dict=True)
    cached_logits = np.array(teacher(X, training=False))
    cached = distiller.test_on_batch(X, {"labels": Y, "teacher_logits": cached_logits}, return_dict=True)
    for key in ("ce", "kd", "dkd", "loss", "teacher_accuracy"):
        np.testing.assert_allclose(cached[key], live[key], rtol=1e-5)
    # Logits that are not the teacher's change the losses: the cache really is what the terms read.
    other_logits = cached_logits + RNG.normal(0, 3, cached_logits.shape).astype(np.float32)
    other = distiller.test_on_batch(X, {"labels": Y, "teacher_logits": other_logits}, return_dict=True)
    assert abs(other["kd"] - live["kd"]) > 1e-2


def test_cached_teacher_logits_are_refused_where_features_or_collaboration_need_the_teacher():
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, ["ce", {"name": "hint", "pairs": [["stage5", "stage5"]]}])
    distiller.compile("adam")
    with pytest.raises(ValueError, match=r"cached teacher logits cannot serve .* \(stage5\): run the teacher live"):
        distiller.test_on_batch(X, {"labels": Y, "teacher_logits": np.zeros((16, 10), np.float32)})


@pytest.mark.parametrize("mimicry", [None, 0.25, 1.0])
def test_collaborative_teacher_learns_from_mirrored_terms_only(mimicry):
    """The teacher's loss: its CE + teacher_mimicry (default 0) · the kd term with the roles swapped; no hint."""
    teacher, student = small_pair()
    options = {} if mimicry is None else {"teacher_mimicry": mimicry}
    specs = ["ce", {"name": "kd", "weight": 0.8}, {"name": "hint", "pairs": [["stage5", "stage5"]]}]
    distiller = Distiller(teacher, student, specs, collaborative=True, **options)
    distiller.compile("adam")
    logs = distiller.test_on_batch(X, Y, return_dict=True)
    t_logits, s_logits = np.array(teacher(X)), np.array(student(X))
    ce = np.array(keras.losses.sparse_categorical_crossentropy(Y, t_logits, from_logits=True))
    factor = 0.0 if mimicry is None else mimicry
    expected = ce + factor * 0.8 * np.array(soft_target_kl(s_logits, t_logits, 4.0))
    np.testing.assert_allclose(logs["teacher_loss"], expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("mimicry", [-0.1, float("nan"), float("inf")])
def test_teacher_mimicry_must_be_a_finite_non_negative_number(mimicry):
    teacher, student = small_pair()
    with pytest.raises(ValueError, match="teacher_mimicry must be a finite number >= 0"):
        Distiller(teacher, student, ["ce", "kd"], collaborative=True, teacher_mimicry=mimicry)


def test_dkd_warmup_follows_the_epoch():
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, [{"name": "dkd", "warmup_epochs": 4}])
    distiller.compile("adam")
    full = Distiller(teacher, student, ["dkd"])
    full.compile("adam")
    reference = full.test_on_batch(X, Y, return_dict=True)["dkd"]
    for epoch, factor in ((0, 0.25), (2, 0.75), (5, 1.0)):
        distiller.epoch.assign(epoch)
        np.testing.assert_allclose(distiller.test_on_batch(X, Y, return_dict=True)["dkd"], factor * reference,
                                   rtol=1e-5)  # fmt: skip
    history = distiller.fit(X, Y, epochs=3, batch_size=16, verbose=0)
    assert int(distiller.epoch.numpy()) == 2 and len(history.history["dkd"]) == 3


def test_distilling_with_the_labels_alone_is_training_from_scratch(tmp_path):
    """The Distiller with only the `ce` term trains the student exactly as `train_classifier` does (same data
    order, augmentation, optimizer, schedule and batch-norm warm start), so any gain or loss of a distillation row
    comes from its terms, not from the distillation path itself."""
    from conftest import write_idx_folder

    from kdkeras.training import TrainConfig, distill, train_classifier

    folder = write_idx_folder(str(tmp_path / "idx"), n_train=200, n_test=20, classes=3)
    config = TrainConfig(dataset=f"idx:{folder}", epochs=2, batch_size=32, verbose=0, logdir=None, backup_dir=None)
    keras.utils.set_random_seed(0)
    teacher = _sequential(SHAPE, "teacher", classes=3)
    keras.utils.set_random_seed(1)
    scratch = _sequential(SHAPE, "scratch", classes=3, stateful=True)  # BN warm start and dropout masks compared.
    keras.utils.set_random_seed(1)
    student = _sequential(SHAPE, "student", classes=3, stateful=True)
    np.testing.assert_array_equal(values(scratch.weights)[0], values(student.weights)[0])
    keras.utils.set_random_seed(2)
    history, _, _ = train_classifier(scratch, config)
    keras.utils.set_random_seed(2)
    _, distilled_history, _, _ = distill(teacher, student, config, terms=[{"name": "ce"}])
    np.testing.assert_allclose(distilled_history["loss"], history["loss"], rtol=1e-4)
    for a, b in zip(values(scratch.weights), values(student.weights), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_collaborative_teacher_is_refined_at_a_hundredth_of_the_student_lr_by_default(tmp_path):
    """At lr/10 a trained teacher that imitates a fresh student through the mirrored terms collapses (ResNet-20:
    0.88 to 0.46 validation accuracy in one epoch, experiments/results/demo_scale.md); the default is lr/100."""
    from conftest import write_idx_folder

    from kdkeras.training import TrainConfig, distill

    folder = write_idx_folder(str(tmp_path / "idx"), n_train=64, n_test=8, classes=3)
    config = TrainConfig(dataset=f"idx:{folder}", epochs=1, batch_size=32, lr=2e-3, verbose=0, logdir=None,
                         backup_dir=None)  # fmt: skip
    teacher, student = _sequential(SHAPE, "teacher", classes=3), _sequential(SHAPE, "student", classes=3)
    distiller, _, _, _ = distill(teacher, student, config, collaborative=True)
    assert float(distiller.teacher_optimizer._learning_rate(0)) == pytest.approx(2e-5)
    assert float(distiller.optimizer._learning_rate(0)) == pytest.approx(2e-3)
    distiller, _, _, _ = distill(teacher, student, config, collaborative=True, teacher_lr=1e-4)
    assert float(distiller.teacher_optimizer._learning_rate(0)) == pytest.approx(1e-4)


def _sequential(shape, name, classes=10, stateful=False):
    """A one-convolution classifier: it traces in a fraction of ds_alexnet's time. `stateful` adds what a training
    path must handle like `fit` does, as ds_alexnet has: batch norm (its statistics) and dropout (its random masks)."""
    return keras.Sequential(
        [keras.Input(shape), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(6, 3, strides=2, name="stage1"),
         *([keras.layers.BatchNormalization()] if stateful else []), keras.layers.ReLU(),
         keras.layers.GlobalAveragePooling2D(), *([keras.layers.Dropout(0.3)] if stateful else []),
         keras.layers.Dense(classes, name="logits")],
        name=name,
    )  # fmt: skip


def test_a_teacher_of_another_size_sees_the_students_images_resized_and_converted():
    """A 32×32 RGB Sequential teacher, a 28×28 gray Sequential student, a feature term between them: the teacher's
    logits and features are those of the student's batch resized and repeated to RGB by hand."""
    keras.utils.set_random_seed(0)
    teacher, student = _sequential((32, 32, 3), "teacher"), _sequential(SHAPE, "student")
    distiller = Distiller(teacher, student, ["ce", "kd", {"name": "hint", "pairs": [["stage1", "stage1"]]}])
    labels, seen_by_teacher, _ = distiller._forward(X, Y, training=False)
    by_hand = np.repeat(np.array(keras.ops.image.resize(X, (32, 32))), 3, axis=-1)
    np.testing.assert_allclose(seen_by_teacher.logits, teacher(by_hand), rtol=1e-5, atol=1e-4)
    features = keras.Model(teacher.inputs[0], teacher.get_layer("stage1").output)(by_hand)
    np.testing.assert_allclose(seen_by_teacher["stage1"], features, rtol=1e-5, atol=1e-3)
    distiller.compile("adam")
    logs = distiller.train_on_batch(X, Y, return_dict=True)
    assert all(np.isfinite(logs[k]) for k in ("ce", "kd", "hint", "loss"))


def test_compile_metrics_are_the_students_and_reload_with_the_distiller(tmp_path):
    teacher, student = small_pair()
    distiller = Distiller(teacher, student)
    distiller.compile("adam", metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(3, name="top3")])
    logs = distiller.evaluate(X, Y, verbose=0, return_dict=True)
    top3 = np.mean([y in np.argsort(row)[-3:] for y, row in zip(Y, np.array(student(X)), strict=True)])
    np.testing.assert_allclose(logs["top3"], top3)
    assert "accuracy" in logs and sum(name.endswith("accuracy") for name in logs) == 2  # Not reported twice.
    distiller.save(tmp_path / "d.keras")
    assert [m.name for m in keras.saving.load_model(tmp_path / "d.keras").student_metrics] == ["top3"]
    with pytest.raises(ValueError, match="metric name.*teacher_accuracy.*taken"):
        distiller.compile("adam", metrics=[keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy")])
    with pytest.raises(ValueError, match="takes no 'loss'"):
        distiller.compile("adam", loss="mse")


def test_plain_numpy_fit_gives_the_losses_of_a_hand_written_step():
    """`fit(x, y)` on arrays: every step's loss is 0.4·CE + 0.6·KD(T 2) of that batch, and the update plain SGD on
    it, as a GradientTape loop written from the formula computes them (the regression check of the API)."""
    teacher, _ = small_pair()
    student = build_model("ds_alexnet", SHAPE, 10, width=0.25, dropout=0.0)  # A deterministic step.
    twin = keras.models.clone_model(student)
    twin.set_weights(student.get_weights())
    distiller = Distiller(teacher, student, [{"name": "ce", "weight": 0.4}, {"name": "kd", "weight": 0.6,
                                                                              "temperature": 2.0}])  # fmt: skip
    distiller.compile(keras.optimizers.SGD(0.05))
    history = distiller.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0).history

    import tensorflow as tf

    optimizer, expected = keras.optimizers.SGD(0.05), []
    for _ in range(2):
        losses = []
        for start in (0, 8):
            x, y = X[start : start + 8], Y[start : start + 8]
            t = np.array(teacher(x, training=False))
            with tf.GradientTape() as tape:
                s = twin(x, training=True)
                log_t, log_s = tf.nn.log_softmax(t / 2.0), tf.nn.log_softmax(s / 2.0)
                kd = 4.0 * tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1)
                ce = tf.keras.losses.sparse_categorical_crossentropy(y, s, from_logits=True)
                loss = tf.reduce_mean(0.4 * ce + 0.6 * kd)
            optimizer.apply(tape.gradient(loss, twin.trainable_variables), twin.trainable_variables)
            losses.append(float(loss))
        expected.append(np.mean(losses))
    np.testing.assert_allclose(history["loss"], expected, rtol=2e-4)
    np.testing.assert_allclose(distiller.predict(X, verbose=0), twin.predict(X, verbose=0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.where(np.arange(16) == 3, 15, Y), r"labels range from 0 to 15; expected class indices 0 … 9"),
        (np.where(np.arange(16) == 3, -1, Y), r"labels range from -1 to 9"),
        (Y + 0.5, r"labels must be integer class indices"),
        (np.eye(10)[Y], r"labels must be one class index per example.*one-hot"),
    ],
    ids=["too_large", "negative", "float", "one_hot"],
)
def test_bad_labels_are_a_value_error_before_any_step(labels, message):
    import tensorflow as tf

    teacher, student = small_pair()
    distiller = Distiller(teacher, student)
    distiller.compile("adam")
    with pytest.raises(ValueError, match=message):
        distiller.fit(X, labels, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="the first batch's " + message):
        distiller.fit(tf.data.Dataset.from_tensor_slices((X, labels)).batch(16), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=message):
        distiller.evaluate(X, labels, verbose=0)
    assert distiller.optimizer.iterations.numpy() == 0


def test_on_unlabeled_transfer_images_only_the_teacher_teaches():
    """With a labeled mask the label terms (ce, dkd) count only labeled examples, the teacher terms all of them,
    and the accuracies only the labeled ones."""
    teacher, student = small_pair()
    distiller = Distiller(teacher, student, [{"name": "ce", "weight": 0.3}, {"name": "kd", "weight": 0.7,
                                                                             "temperature": 2.0}, "dkd"])  # fmt: skip
    distiller.compile("adam")
    labeled = np.array([1.0] * 10 + [0.0] * 6, np.float32)
    logs = distiller.test_on_batch(X, {"labels": Y, "labeled": labeled}, return_dict=True)
    t_logits, s_logits = np.array(teacher(X)), np.array(student(X))
    ce = np.array(keras.losses.sparse_categorical_crossentropy(Y, s_logits, from_logits=True)) * labeled
    kd = np.array(soft_target_kl(t_logits, s_logits, 2.0))
    np.testing.assert_allclose(logs["ce"], ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["kd"], kd.mean(), rtol=1e-5)
    from kdkeras.losses import dkd

    np.testing.assert_allclose(logs["dkd"], (np.array(dkd(Y, t_logits, s_logits, 4.0, 1.0, 8.0)) * labeled).mean(),
                               rtol=1e-5)  # fmt: skip
    correct = s_logits.argmax(-1) == Y
    np.testing.assert_allclose(logs["accuracy"], correct[:10].mean())
    collaborative = Distiller(*small_pair(), collaborative=True)
    collaborative.compile("adam")
    with pytest.raises(ValueError, match="unlabeled transfer images cannot train a collaborative teacher"):
        collaborative.test_on_batch(X, {"labels": Y, "labeled": labeled})
