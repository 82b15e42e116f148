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
