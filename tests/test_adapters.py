"""kdkeras.adapters: shape, trainability and serialization of the feature adapter; the teacher-input
conversion against numpy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdkeras.adapters import FeatureAdapter, ImageConversion, on_images_of


def test_adapter_maps_channels_and_keeps_spatial_size():
    adapter = FeatureAdapter(16)
    out = adapter(np.ones((2, 5, 3, 4), np.float32))
    assert out.shape == (2, 5, 3, 16)
    assert len(adapter.trainable_variables) == 3  # 1×1 kernel, BN gamma and beta.


def test_adapter_round_trips_through_config(tmp_path):
    adapter = FeatureAdapter(8, synchronized_bn=True, name="adapter")
    restored = FeatureAdapter.from_config(adapter.get_config())
    assert (restored.channels, restored.synchronized_bn, restored.name) == (8, True, "adapter")
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, FeatureAdapter(6)(inputs))
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(reloaded(x), model(x), rtol=1e-6)


def test_image_conversion_gray_to_rgb_repeats_the_resized_channel():
    x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32)
    out = np.array(ImageConversion((32, 32, 3))(x))
    resized = np.array(tf.image.resize(x, (32, 32), method="bilinear"))
    np.testing.assert_allclose(out, np.repeat(resized, 3, axis=-1), rtol=1e-5, atol=1e-3)


def test_image_conversion_rgb_to_gray_is_bt601_luma():
    x = np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    out = np.array(ImageConversion((8, 8, 1))(x))
    expected = 0.2989 * x[..., :1] + 0.5870 * x[..., 1:2] + 0.1140 * x[..., 2:]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(out, np.array(tf.image.rgb_to_grayscale(x)), rtol=1e-4)


def test_image_conversion_refuses_channel_counts_it_cannot_map():
    with pytest.raises(ValueError, match="cannot convert images of 4 channels to 3"):
        ImageConversion((8, 8, 3))(np.zeros((1, 8, 8, 4), np.float32))


def test_on_images_of_keeps_a_model_of_that_size_and_wraps_another(tmp_path):
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    assert on_images_of(model, (16, 16, 3)) is model
    wrapped = on_images_of(model, (12, 12, 1))
    x = np.random.default_rng(2).uniform(0, 255, (2, 12, 12, 1)).astype(np.float32)
    by_hand = model(np.repeat(np.array(tf.image.resize(x, (16, 16))), 3, axis=-1))
    np.testing.assert_allclose(wrapped(x), by_hand, rtol=1e-5, atol=1e-4)
    wrapped.save(tmp_path / "w.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "w.keras")(x), by_hand, rtol=1e-5, atol=1e-4)
