"""kdkeras.losses against numpy references."""

import keras
import numpy as np
import pytest

from kdkeras import losses


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_soft_target_kl(t, s, T):
    log_pt, log_ps = np_log_softmax(t / T), np_log_softmax(s / T)
    return T**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1)


RNG = np.random.default_rng(0)
TEACHER = RNG.normal(0, 3, (6, 10)).astype(np.float32)
STUDENT = RNG.normal(0, 3, (6, 10)).astype(np.float32)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
def test_soft_target_kl_matches_numpy(temperature):
    got = keras.ops.convert_to_numpy(losses.soft_target_kl(TEACHER, STUDENT, temperature))
    np.testing.assert_allclose(got, np_soft_target_kl(TEACHER, STUDENT, temperature), rtol=1e-5, atol=1e-6)


def test_soft_target_kl_hand_computed():
    # Two classes, T = 2: p_t = softmax([1, 0]) and p_s = softmax([0, 0]) = [.5, .5].
    p_t = np.array([np.exp(1) / (np.exp(1) + 1), 1 / (np.exp(1) + 1)])
    expected = 4 * np.sum(p_t * np.log(p_t / 0.5))
    got = losses.soft_target_kl([[2.0, 0.0]], [[0.0, 0.0]], temperature=2.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), [expected], rtol=1e-6)


def test_soft_target_kl_is_zero_for_identical_logits_and_positive_otherwise():
    assert np.allclose(keras.ops.convert_to_numpy(losses.soft_target_kl(TEACHER, TEACHER, 3.0)), 0, atol=1e-6)
    assert np.all(keras.ops.convert_to_numpy(losses.soft_target_kl(TEACHER, STUDENT, 3.0)) > 0)


def test_soft_target_kl_extreme_logits_stay_finite():
    teacher = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 1e3]], np.float32)
    student = np.array([[-1e4, 1e4, 0.0], [3e4, -3e4, 0.0]], np.float32)
    got = keras.ops.convert_to_numpy(losses.soft_target_kl(teacher, student, 1.0))
    assert np.all(np.isfinite(got))
    # With one-hot teacher distributions the KL is the student's log-probability gap: 2e4 and 6e4.
    np.testing.assert_allclose(got, [2e4, 6e4], rtol=1e-4)


def test_soft_target_kl_equals_keras_logits_distillation():
    for temperature in (2.0, 4.0):
        # The KLDivergence class, not the default string: see the soft_target_kl docstring.
        keras_loss = keras.distillation.LogitsDistillation(temperature, loss=keras.losses.KLDivergence())
        expected = keras.ops.convert_to_numpy(keras_loss.compute_loss(TEACHER, STUDENT))
        ours = keras.ops.convert_to_numpy(losses.SoftTargetKL(temperature)(TEACHER, STUDENT))
        np.testing.assert_allclose(ours, expected, rtol=1e-4)


def test_soft_target_kl_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.soft_target_kl(TEACHER, STUDENT, 0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.SoftTargetKL(-1.0)


def test_hint_loss_matches_numpy_and_matches_spatial_sizes():
    t = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
    s = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32)
    got = keras.ops.convert_to_numpy(losses.hint_loss(t, s))
    np.testing.assert_allclose(got, ((t - s) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
    # An 8×8 student map of 2×2 constant blocks is averaged down to exactly the 4×4 map.
    s_big = np.repeat(np.repeat(s, 2, axis=1), 2, axis=2)
    got_big = keras.ops.convert_to_numpy(losses.hint_loss(t, s_big))
    np.testing.assert_allclose(got_big, got, rtol=1e-4)


def test_hint_loss_needs_equal_channels():
    with pytest.raises(ValueError, match="FeatureAdapter"):
        losses.hint_loss(np.zeros((1, 2, 2, 3), np.float32), np.zeros((1, 2, 2, 4), np.float32))


def np_attention(f, p=2):
    a = (np.abs(f) ** p).mean(axis=-1).reshape(len(f), -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_attention_transfer_matches_numpy_with_different_channels():
    t = RNG.normal(size=(3, 4, 4, 8)).astype(np.float32)
    s = RNG.normal(size=(3, 4, 4, 2)).astype(np.float32)
    expected = ((np_attention(t) - np_attention(s)) ** 2).sum(axis=1)
    got = keras.ops.convert_to_numpy(losses.attention_transfer_loss(t, s))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all((got >= 0) & (got <= 2))


def test_attention_transfer_is_zero_for_proportional_maps_of_other_size():
    t = np.abs(RNG.normal(size=(2, 4, 4, 5))).astype(np.float32)
    s = 3.0 * np.repeat(np.repeat(t, 2, axis=1), 2, axis=2)  # Same attention, twice the resolution.
    got = keras.ops.convert_to_numpy(losses.attention_transfer_loss(t, s))
    np.testing.assert_allclose(got, 0.0, atol=1e-5)


@pytest.mark.parametrize("loss", [losses.SoftTargetKL(3.0), losses.HintLoss(), losses.AttentionTransferLoss(p=1.0)])
def test_loss_classes_serialize(loss):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
