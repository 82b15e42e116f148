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


# ------------------------------------------------------------------ DKD, logit standardization, DIST (numpy)

LABELS = RNG.integers(0, 10, 6)


def np_softmax(z):
    return np.exp(np_log_softmax(z))


def np_kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(axis=-1)


def np_dkd(labels, t, s, T, alpha, beta):
    """Zhao et al. 2022, eq. (1)–(5) read directly: b = [p_gt, 1 − p_gt]; p̂ = softmax over the other classes."""
    out = []
    for y, zt, zs in zip(labels, t.astype(np.float64), s.astype(np.float64), strict=True):
        pt, ps = np_softmax(zt / T), np_softmax(zs / T)
        bt, bs = np.array([pt[y], 1 - pt[y]]), np.array([ps[y], 1 - ps[y]])
        others = np.arange(len(zt)) != y
        hat_t, hat_s = np_softmax(zt[others] / T), np_softmax(zs[others] / T)
        out.append(T**2 * (alpha * np_kl(bt, bs) + beta * np_kl(hat_t, hat_s)))
    return np.array(out)


@pytest.mark.parametrize("temperature, alpha, beta", [(4.0, 1.0, 8.0), (1.0, 1.0, 1.0), (2.5, 0.5, 2.0)])
def test_dkd_matches_the_paper(temperature, alpha, beta):
    got = keras.ops.convert_to_numpy(losses.dkd(LABELS, TEACHER, STUDENT, temperature, alpha, beta))
    np.testing.assert_allclose(got, np_dkd(LABELS, TEACHER, STUDENT, temperature, alpha, beta), rtol=2e-5, atol=1e-6)


def test_dkd_with_alpha_one_and_beta_weighted_by_the_teacher_is_vanilla_kd():
    """The paper's decomposition: KD = TCKD + (1 − p_gt^t) · NCKD, per example."""
    T = 3.0
    tckd = np_dkd(LABELS, TEACHER, STUDENT, T, 1.0, 0.0)
    nckd = np_dkd(LABELS, TEACHER, STUDENT, T, 0.0, 1.0)
    p_gt = np_softmax(TEACHER.astype(np.float64) / T)[np.arange(6), LABELS]
    np.testing.assert_allclose(tckd + (1 - p_gt) * nckd, np_soft_target_kl(TEACHER, STUDENT, T), rtol=1e-5)


def np_standardize(z):
    """Sun et al. 2024: Z(z) = (z − mean) / std, with the authors' sample std (ddof 1) and ε = 1e-7."""
    z = z.astype(np.float64)
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


def test_standardize_logits_matches_numpy_and_is_shift_and_scale_invariant():
    got = keras.ops.convert_to_numpy(losses.standardize_logits(TEACHER))
    np.testing.assert_allclose(got, np_standardize(TEACHER), rtol=1e-5, atol=1e-6)
    moved = keras.ops.convert_to_numpy(losses.standardize_logits(3.0 * TEACHER + 7.0))
    np.testing.assert_allclose(moved, got, rtol=1e-4, atol=1e-5)
    constant = keras.ops.convert_to_numpy(losses.standardize_logits(np.full((2, 10), 5.0, np.float32)))
    assert np.all(constant == 0)  # ε keeps constant logits finite.


def np_pearson(a, b):
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-8)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_relations_match_the_paper(temperature):
    """Huang et al. 2022: inter = 1 − ρ(Y_s[i,:], Y_t[i,:]) per example; intra = 1 − mean_j ρ(Y_s[:,j], Y_t[:,j])."""
    ys, yt = np_softmax(STUDENT / temperature), np_softmax(TEACHER / temperature)
    inter = keras.ops.convert_to_numpy(losses.dist_inter(TEACHER, STUDENT, temperature))
    np.testing.assert_allclose(inter, temperature**2 * (1 - np_pearson(ys, yt)), rtol=1e-4, atol=1e-6)
    intra = keras.ops.convert_to_numpy(losses.dist_intra(TEACHER, STUDENT, temperature))
    np.testing.assert_allclose(intra, temperature**2 * (1 - np_pearson(ys.T, yt.T).mean()), rtol=1e-4, atol=1e-6)
    # A student whose probabilities are an affine image of the teacher's is perfectly correlated.
    same = keras.ops.convert_to_numpy(losses.dist_inter(TEACHER, TEACHER, temperature))
    np.testing.assert_allclose(same, 0, atol=1e-5)


@pytest.mark.parametrize(
    "loss",
    [
        lambda t, s: losses.dkd(LABELS[:2], t, s, 4.0),
        lambda t, s: losses.soft_target_kl(losses.standardize_logits(t), losses.standardize_logits(s), 2.0),
        lambda t, s: losses.dist_inter(t, s, 1.0),
        lambda t, s: losses.dist_intra(t, s, 1.0),
    ],
)
def test_new_losses_are_finite_on_extreme_logits(loss):
    extreme_t = np.array([[1e4, -1e4] + [0.0] * 8, [-3e4] * 9 + [3e4]], np.float32)
    extreme_s = np.array([[-1e4, 1e4] + [0.0] * 8, [5e3] * 10], np.float32)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(loss(extreme_t, extreme_s))))
