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
