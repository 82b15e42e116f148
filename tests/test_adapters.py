"""kdkeras.adapters: shape, trainability and serialization of the feature adapter."""

import keras
import numpy as np

from kdkeras.adapters import FeatureAdapter


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
