"""kdkeras.models: the registry, the architectures' shapes and stage names, and their relative cost."""

import keras
import numpy as np
import pytest

from kdkeras import artifacts
from kdkeras.models import MODELS, build_model, stage_layers
from kdkeras.profiling import count_flops, count_params
from kdkeras.training import compile_classifier


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3)])
def test_every_model_maps_images_to_logits(name, input_shape):
    model = build_model(name, input_shape, 7)
    out = model(np.zeros((2, *input_shape), np.float32))
    assert out.shape == (2, 7)
    assert model.get_layer("logits").activation is keras.activations.linear


def test_stage_layers_are_named_in_order():
    alex = stage_layers(build_model("alexnet", (28, 28, 1), 10))
    ds = stage_layers(build_model("ds_alexnet", (28, 28, 1), 10, width=0.5))
    res = stage_layers(build_model("resnet", (28, 28, 1), 10, depth=8))
    assert list(alex) == list(ds) == [f"stage{i}" for i in range(1, 6)]
    assert [shape[1:3] for shape in alex.values()] == [shape[1:3] for shape in ds.values()]
    assert alex["stage5"] == (None, 4, 4, 128) and ds["stage5"] == (None, 4, 4, 64)
    assert res == {"stage1": (None, 28, 28, 16), "stage2": (None, 14, 14, 32), "stage3": (None, 7, 7, 64)}


def test_student_is_at_least_8x_cheaper_than_teacher():
    teacher = build_model("alexnet", (28, 28, 1), 10)
    student = build_model("ds_alexnet", (28, 28, 1), 10)
    assert count_params(teacher) >= 8 * count_params(student)
    assert count_flops(teacher) >= 8 * count_flops(student)


def test_student_uses_depthwise_separable_convs_after_the_first():
    student = build_model("ds_alexnet", (28, 28, 1), 10)
    depthwise = [layer.name for layer in student.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    standard = [
        layer.name
        for layer in student.layers
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D)
    ]
    assert depthwise == ["conv2_dw", "conv3_dw", "conv4_dw", "conv5_dw"]
    assert standard == ["conv1_conv", "conv2_pw", "conv3_pw", "conv4_pw", "conv5_pw"]
    assert not any(isinstance(layer, keras.layers.Flatten) for layer in student.layers)


def test_width_multiplier_scales_channels():
    half = build_model("ds_alexnet", (28, 28, 1), 10, width=0.5)
    assert half.get_layer("conv3_pw").filters == 96
    assert count_params(half) < count_params(build_model("ds_alexnet", (28, 28, 1), 10)) / 2


def test_synchronized_bn_option():
    model = build_model("ds_alexnet", (28, 28, 1), 10, synchronized_bn=True)
    assert all(layer.synchronized for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of: alexnet, ds_alexnet, resnet"):
        build_model("vgg", (28, 28, 1), 10)
    with pytest.raises(ValueError, match="does not take these options"):
        build_model("alexnet", (28, 28, 1), 10, depth=20)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        build_model("resnet", (28, 28, 1), 10, depth=21)
    with pytest.raises(ValueError, match="width must be > 0"):
        build_model("ds_alexnet", (28, 28, 1), 10, width=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_saved_model_reloads_with_identical_predictions(tmp_path, name):
    model = build_model(name, (28, 28, 1), 10, **({"depth": 8} if name == "resnet" else {}))
    x = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 1)).astype(np.float32)
    compile_classifier(model, "adam")
    model.fit(x, np.arange(4), epochs=1, verbose=0)  # Moves weights and BN statistics off their initial values.
    path = tmp_path / f"{name}.keras"
    artifacts.save_model(model, path)
    restored = artifacts.load_model(path)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_width_that_cannot_fit_is_refused_before_building():
    with pytest.raises(ValueError, match=r"model 'alexnet' at width 1e\+06 would have about .* parameters, more than"):
        build_model("alexnet", (28, 28, 1), 10, width=1e6)
    assert build_model("ds_alexnet", (28, 28, 1), 10, width=2.0).count_params() > 0  # A real width still builds.


@pytest.mark.parametrize(
    "name, reference",
    [
        ("MobileNetV2", "mobilenet_v2"),  # scaled to [-1, 1]
        ("DenseNet121", "densenet"),  # [0, 1], then ImageNet mean and std
        ("ResNet50", "resnet"),  # Caffe: BGR, ImageNet mean removed
        ("MobileNetV3Small", "mobilenet_v3"),  # in the architecture itself: nothing in front
    ],
)
def test_an_application_scales_pixels_as_its_imagenet_weights_expect(name, reference):
    """What `applications:NAME` puts in front of the architecture equals keras.applications' own preprocess_input
    on the same RGB pixels (applied by hand, as a user of the raw architecture would)."""
    import importlib

    from kdkeras.models.applications import _preprocessing

    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    mine = images
    for layer in _preprocessing(name):
        mine = layer(mine)
    module = importlib.import_module(f"keras.applications.{reference}")
    np.testing.assert_allclose(np.asarray(mine), np.asarray(module.preprocess_input(images.copy())), rtol=1e-5,
                               atol=1e-4)  # fmt: skip


@pytest.mark.slow  # Builds MobileNetV3 twice and fits a distiller on it: end to end.
def test_an_application_teacher_takes_the_datasets_images_and_its_weights_file(tmp_path):
    """`applications:NAME` builds for 28×28 gray images (converted to the architecture's 32×32 RGB inside), saves and
    loads like any model, starts from a weights file of the architecture without its top, and refuses what it
    cannot build in one line."""
    from kdkeras import artifacts

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    base.save_weights(str(tmp_path / "notop.weights.h5"))
    model = build_model("applications:MobileNetV3Small", (28, 28, 1), 3, weights=str(tmp_path / "notop.weights.h5"))
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for mine, theirs in zip(inner.get_weights(), base.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    images = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32)
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 3)
    artifacts.save_model(model, tmp_path / "teacher.keras")
    teacher = artifacts.load_model(tmp_path / "teacher.keras")
    np.testing.assert_allclose(teacher.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    # It teaches like any classifier: the distiller's output terms read it.
    from kdkeras import Distiller

    distiller = Distiller(teacher, build_model("ds_alexnet", (28, 28, 1), 3, width=0.25), ["ce", "kd"])
    distiller.compile("adam")
    history = distiller.fit(images, np.array([0, 2]), batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(history["kd"][0]) and history["teacher_accuracy"][0] in (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="unknown Keras Application 'MobileNetV9'; choose one of: ConvNeXtBase"):
        build_model("applications:MobileNetV9", (28, 28, 1), 3)
    with pytest.raises(ValueError, match="weights must be none, imagenet or a weights file"):
        build_model("applications:MobileNetV3Small", (28, 28, 1), 3, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of: .* or applications:NAME"):
        build_model("vgg", (28, 28, 1), 3)


def test_imagenet_weights_that_cannot_be_downloaded_say_where_the_file_goes(monkeypatch):
    def offline(**kwargs):  # What Keras raises on a machine without internet.
        raise Exception("URL fetch failure on https://storage.example/weights_small_no_top.h5: None -- no network")

    monkeypatch.setattr(keras.applications, "MobileNetV3Small", offline)
    with pytest.raises(ValueError) as raised:
        build_model("applications:MobileNetV3Small", (28, 28, 1), 3, weights="imagenet")
    assert str(raised.value) == (
        "MobileNetV3Small: its ImageNet weights could not be downloaded (no internet?): put Keras' file "
        "weights_small_no_top.h5 into ~/.keras/models/, or pass a weights file as --weights"
    )
