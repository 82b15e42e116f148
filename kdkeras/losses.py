"""Distillation losses: a plain function per loss (per-example values) and a serializable `keras.losses.Loss`.

The functions return one value per example so that the distiller can average over the *global* batch with
`tf.nn.compute_average_loss` under `tf.distribute`; the `Loss` classes reduce over the batch (mean by default)
for use anywhere else in Keras. All computations run in float32, also under mixed precision.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def _float32(*tensors):
    return [ops.cast(t, "float32") for t in tensors]


def soft_target_kl(teacher_logits, student_logits, temperature: float = 4.0):
    """Hinton's soft-target loss, per example: T² · KL(softmax(t/T) ‖ softmax(s/T)).

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015. The T² factor keeps the
    gradient scale independent of T. Computed with log-softmax, so extreme logits give no NaN or Inf.

    Args:
        teacher_logits: `(batch, classes)`; the target distribution (no gradient is stopped here).
        student_logits: `(batch, classes)`.
        temperature: T > 0.

    Returns:
        `(batch,)` float32 losses; their mean is what
        `keras.distillation.LogitsDistillation(temperature, loss=keras.losses.KLDivergence())` returns. (Keras
        3.15's default `loss="kl_divergence"` resolves to a function, not the class, and then skips the softmax
        and the T² factor: pass the class.)

    Example:
        >>> soft_target_kl([[2.0, 0.0]], [[2.0, 0.0]], temperature=2.0)  # identical logits: 0
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    log_p_teacher = ops.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = ops.log_softmax(student_logits / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return (temperature**2) * kl


def standardize_logits(logits, epsilon: float = 1e-7):
    """Z-score of each example's logits: (z − mean(z)) / (std(z) + ε), over the classes.

    Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024. Applied to both
    networks' logits before the temperature softmax, it lets the student match the teacher's logit *relations*
    instead of their range. As in the authors' code, `std` is the sample standard deviation (divisor K − 1 over K
    classes); the paper writes the population one, a constant factor √(K/(K−1)) that the temperature absorbs.

    Args:
        logits: `(batch, classes)`, at least 2 classes.
        epsilon: added to the standard deviation, so constant logits give zeros instead of NaN.

    Returns:
        `(batch, classes)` float32 standardized logits.
    """
    (logits,) = _float32(logits)
    classes = logits.shape[-1]
    if classes is not None and classes < 2:
        raise ValueError(f"logit standardization needs at least 2 classes, got {classes}")
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / (ops.cast(ops.shape(logits)[-1], "float32") - 1)
    return centred / (ops.sqrt(variance) + epsilon)


def _kl_rows(log_p, log_q, mask=None):
    """Σ_k p_k (log p_k − log q_k) per row, over the classes where `mask` is true (all by default)."""
    terms = ops.exp(log_p) * (log_p - log_q)
    if mask is not None:
        terms = ops.where(mask, terms, 0.0)
    return ops.sum(terms, axis=-1)


def dkd(labels, teacher_logits, student_logits, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0):
    """Decoupled knowledge distillation, per example: T² · (α · TCKD + β · NCKD).

    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022. With p = softmax(z/T):

        TCKD = KL(b_t ‖ b_s),  b = (p_gt, 1 − p_gt), the binary target-vs-rest distribution;
        NCKD = KL(p̂_t ‖ p̂_s),  p̂ = the softmax over the non-target classes only.

    Vanilla KD equals TCKD + (1 − p_gt^t) · NCKD; decoupling lets NCKD ("dark knowledge") weigh β regardless of
    how confident the teacher is. Every probability is taken in log space (log-softmax, log-sum-exp), so the loss
    stays finite for extreme logits, where the reference code's `log(softmax)` gives −inf.

    Args:
        labels: `(batch,)` integer class labels.
        teacher_logits, student_logits: `(batch, classes)`.
        temperature: T > 0.
        alpha: weight of TCKD.
        beta: weight of NCKD.

    Returns:
        `(batch,)` float32 losses.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    target = ops.one_hot(ops.cast(ops.reshape(labels, [-1]), "int32"), ops.shape(student_logits)[-1]) > 0.5

    def binary_and_rest(logits):
        scaled = logits / temperature
        log_p = ops.log_softmax(scaled, axis=-1)
        log_p_target = ops.sum(ops.where(target, log_p, 0.0), axis=-1)
        # log(1 − p_gt) = logsumexp(non-target logits) − logsumexp(all logits), without forming 1 − p_gt.
        rest = ops.where(target, ops.full_like(scaled, -1e30), scaled)
        log_p_rest = ops.logsumexp(rest, axis=-1) - ops.logsumexp(scaled, axis=-1)
        log_binary = ops.stack([log_p_target, log_p_rest], axis=-1)
        return log_binary, ops.log_softmax(rest, axis=-1)

    teacher_binary, teacher_rest = binary_and_rest(teacher_logits)
    student_binary, student_rest = binary_and_rest(student_logits)
    tckd = _kl_rows(teacher_binary, student_binary)
    nckd = _kl_rows(teacher_rest, student_rest, mask=ops.logical_not(target))
    return (temperature**2) * (alpha * tckd + beta * nckd)


def _pearson_rows(a, b, epsilon: float = 1e-8):
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - ops.mean(a, axis=-1, keepdims=True)
    b = b - ops.mean(b, axis=-1, keepdims=True)
    norms = ops.sqrt(ops.sum(ops.square(a), axis=-1)) * ops.sqrt(ops.sum(ops.square(b), axis=-1))
    return ops.sum(a * b, axis=-1) / (norms + epsilon)


def dist_inter(teacher_logits, student_logits, temperature: float = 1.0):
    """DIST's inter-class relation, per example: T² · (1 − ρ(softmax(s/T), softmax(t/T))) over the classes.

    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022: the
    student matches the *ranking* of the teacher's class probabilities (Pearson correlation), not their values,
    which tolerates the larger gap to a strong teacher.

    Returns:
        `(batch,)` float32 losses in [0, 2·T²].
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    p_teacher = ops.softmax(teacher_logits / temperature, axis=-1)
    p_student = ops.softmax(student_logits / temperature, axis=-1)
    return (temperature**2) * (1.0 - _pearson_rows(p_student, p_teacher))


def dist_intra(teacher_logits, student_logits, temperature: float = 1.0):
    """DIST's intra-class relation: T² · (1 − mean over classes of ρ over the batch). A *batch statistic*.

    For each class, the correlation between the teacher's and the student's probabilities of that class across
    the examples of the batch (Huang et al., 2022; see `dist_inter`). It is one number for the whole batch, so it
    needs a batch of at least 2 examples and depends on the batch: under `tf.distribute` each replica computes it
    on its own part of the batch (see `kdkeras.terms.DIST` for how it is then reduced).

    Returns:
        A float32 scalar in [0, 2·T²].
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher_logits, student_logits = _float32(teacher_logits, student_logits)
    p_teacher = ops.softmax(teacher_logits / temperature, axis=-1)
    p_student = ops.softmax(student_logits / temperature, axis=-1)
    per_class = _pearson_rows(ops.transpose(p_student), ops.transpose(p_teacher))
    return (temperature**2) * (1.0 - ops.mean(per_class))


def match_spatial(teacher_features, student_features):
    """Resizes the larger of two `(batch, H, W, C)` maps to the other's height and width.

    Downsampling averages over area (for an integer factor, exactly the mean of each block), so every position of
    the larger map counts. Maps of equal size are returned as they are.
    """
    t_size, s_size = tuple(teacher_features.shape[1:3]), tuple(student_features.shape[1:3])
    if t_size == s_size:
        return teacher_features, student_features
    target = (min(t_size[0], s_size[0]), min(t_size[1], s_size[1]))

    def resize(x, size):
        # keras.ops.image.resize has no area method; this module runs on the TensorFlow backend only.
        return x if tuple(x.shape[1:3]) == target else tf.image.resize(x, target, method="area")

    return resize(teacher_features, t_size), resize(student_features, s_size)


def hint_loss(teacher_features, student_features):
    """FitNets hint loss, per example: the mean squared difference of two feature maps.

    Romero et al., "FitNets: Hints for Thin Deep Nets", 2015. The student's map is expected to have passed
    through an adapter (`kdkeras.adapters.FeatureAdapter`) that gives it the teacher's channel count; spatial sizes
    are matched here (`match_spatial`).

    Args:
        teacher_features: `(batch, H, W, C)`.
        student_features: `(batch, H', W', C)`.

    Returns:
        `(batch,)` float32 losses.
    """
    teacher_features, student_features = _float32(teacher_features, student_features)
    if teacher_features.shape[-1] != student_features.shape[-1]:
        raise ValueError(
            f"hint loss needs equal channels, got teacher {teacher_features.shape[-1]} and student "
            f"{student_features.shape[-1]}: pass the student features through a FeatureAdapter"
        )
    teacher_features, student_features = match_spatial(teacher_features, student_features)
    return ops.mean(ops.square(teacher_features - student_features), axis=(1, 2, 3))


def attention_map(features, p: float = 2.0):
    """Spatial attention of a `(batch, H, W, C)` map: mean over channels of |F|^p, L2-normalized per example.

    Returns:
        `(batch, H, W, 1)` float32 maps whose flattened values have unit L2 norm.
    """
    (features,) = _float32(features)
    attention = ops.mean(ops.power(ops.abs(features), p), axis=-1, keepdims=True)
    norm = ops.sqrt(ops.sum(ops.square(attention), axis=(1, 2, 3), keepdims=True))
    return attention / ops.maximum(norm, 1e-12)


def attention_transfer_loss(teacher_features, student_features, p: float = 2.0):
    """Attention transfer, per example: ‖Q_s/‖Q_s‖ − Q_t/‖Q_t‖‖² over the spatial positions.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017. The channel counts may differ (the
    attention map averages over channels); spatial sizes are matched. Unlike the authors' code, which averages the
    squared difference over positions and weights it by β/2 = 500, this sums over positions so that the weight
    does not depend on the map size (their setting on an 8×8 map is a weight of about 8 here).

    Args:
        teacher_features: `(batch, H, W, C)`.
        student_features: `(batch, H', W', C')`.
        p: exponent of the attention map.

    Returns:
        `(batch,)` float32 losses, each in [0, 2].
    """
    teacher_attention = attention_map(teacher_features, p)
    student_attention = attention_map(student_features, p)
    teacher_attention, student_attention = match_spatial(teacher_attention, student_attention)
    # Resizing changes the norm a little: normalize again.
    teacher_attention = attention_map(teacher_attention, 1.0)
    student_attention = attention_map(student_attention, 1.0)
    return ops.sum(ops.square(teacher_attention - student_attention), axis=(1, 2, 3))


FEATURE_LOSSES = {"hint": hint_loss, "attention": attention_transfer_loss}


@keras.saving.register_keras_serializable(package="kdkeras")
class SoftTargetKL(keras.losses.Loss):
    """`soft_target_kl` as a Keras loss: `loss(teacher_logits, student_logits)`, batch mean by default.

    Example:
        >>> SoftTargetKL(temperature=4.0)(teacher_logits, student_logits)
    """

    def __init__(self, temperature: float = 4.0, reduction="sum_over_batch_size", name="soft_target_kl", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        return soft_target_kl(y_true, y_pred, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="kdkeras")
class HintLoss(keras.losses.Loss):
    """`hint_loss` as a Keras loss: `loss(teacher_features, adapted_student_features)`."""

    def __init__(self, reduction="sum_over_batch_size", name="hint_loss", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)

    def call(self, y_true, y_pred):
        return hint_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="kdkeras")
class AttentionTransferLoss(keras.losses.Loss):
    """`attention_transfer_loss` as a Keras loss: `loss(teacher_features, student_features)`."""

    def __init__(self, p: float = 2.0, reduction="sum_over_batch_size", name="attention_transfer", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.p = float(p)

    def call(self, y_true, y_pred):
        return attention_transfer_loss(y_true, y_pred, self.p)

    def get_config(self):
        return {**super().get_config(), "p": self.p}
