"""Terms on the networks' outputs: the labels (`ce`), soft targets (`kd`, optionally on standardized logits),
decoupled KD (`dkd`) and DIST's relations (`dist`)."""

from __future__ import annotations

import keras
from keras import ops

from kdkeras import losses
from kdkeras.terms.base import Term, _check_number, register


@register("ce")
class CrossEntropy(Term):
    """Cross-entropy with the labels: the student's own task loss."""

    uses_labels = True
    needs_teacher = False

    def __call__(self, labels, teacher, student, training=False):
        return keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(student.logits, "float32"), from_logits=True
        )


@register("kd")
class KD(Term):
    """Soft targets: T² · KL(softmax(t/T) ‖ softmax(s/T)), optionally on standardized logits.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015; with `standardize=True` both
    networks' logits are Z-scored first (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).
    The same number as `keras.distillation.LogitsDistillation(temperature, loss=keras.losses.KLDivergence())`.

    Args:
        temperature: T > 0.
        standardize: Z-score the logits per example before the softmax (`losses.standardize_logits`).
    """

    mirrored = True
    search_space = {"weight": (0.1, 1.0, "linear"), "temperature": (1.0, 8.0, "log")}

    def __init__(self, weight: float = 1.0, temperature: float = 4.0, standardize: bool = False, name=None):
        super().__init__(weight, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)
        if not isinstance(standardize, bool):
            raise ValueError(f"term '{self.name}': standardize must be true or false, got {standardize!r}")
        self.standardize = standardize

    def __call__(self, labels, teacher, student, training=False):
        t, s = teacher.logits, student.logits
        if self.standardize:
            t, s = losses.standardize_logits(t), losses.standardize_logits(s)
        return losses.soft_target_kl(t, s, self.temperature)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "standardize": self.standardize}


@register("dkd")
class DKD(Term):
    """Decoupled KD: T² · (α · TCKD + β · NCKD), with an optional linear warm-up of the term.

    Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022 (see `losses.dkd`). As in the
    authors' code, the term is scaled by min(epoch / warmup_epochs, 1), epochs counted from 1.

    Args:
        temperature: T > 0.
        alpha: weight of the target-class part (TCKD).
        beta: weight of the non-target part (NCKD); the paper uses 8 on CIFAR-100.
        warmup_epochs: epochs over which the term ramps up linearly; 0 for none.
        standardize: Z-score the logits first (Sun et al., 2024).
    """

    mirrored = True
    uses_labels = True  # Its target/non-target split.
    search_space = {"temperature": (1.0, 8.0, "log"), "beta": (1.0, 8.0, "log")}

    def __init__(self, weight=1.0, temperature=4.0, alpha=1.0, beta=8.0, warmup_epochs=0, standardize=False,
                 name=None):  # fmt: skip
        super().__init__(weight, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)
        self.alpha = _check_number(self.name, "alpha", alpha)
        self.beta = _check_number(self.name, "beta", beta)
        self.warmup_epochs = _check_number(self.name, "warmup_epochs", warmup_epochs)
        self.standardize = bool(standardize)

    def __call__(self, labels, teacher, student, training=False):
        t, s = teacher.logits, student.logits
        if self.standardize:
            t, s = losses.standardize_logits(t), losses.standardize_logits(s)
        loss = losses.dkd(labels, t, s, self.temperature, self.alpha, self.beta)
        if self.warmup_epochs and self.epoch is not None:
            loss = loss * ops.minimum((ops.cast(self.epoch, "float32") + 1.0) / self.warmup_epochs, 1.0)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
            "warmup_epochs": self.warmup_epochs,
            "standardize": self.standardize,
        }


@register("dist")
class DIST(Term):
    """DIST: β · inter-class relation (per example) + γ · intra-class relation (a batch statistic).

    Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 (see
    `losses.dist_inter`, `losses.dist_intra`).

    Reduction under `tf.distribute`: the intra-class relation is computed on each replica's own batch and given
    to each of its examples, so the global-batch mean of the per-example values is the mean of the replicas'
    statistics, weighted by their batch sizes. On one device that is exactly the paper's loss; with N replicas it
    is the mean over N sub-batches rather than the statistic of the whole global batch (correlations are not
    additive; gathering the batch across replicas would cost a collective per step).

    Args:
        temperature: τ of the softmax (the paper: 1 on ImageNet, 4 on CIFAR).
        beta: weight of the inter-class relation.
        gamma: weight of the intra-class relation.
    """

    mirrored = True
    search_space = {"temperature": (1.0, 8.0, "log"), "gamma": (0.5, 4.0, "log")}

    def __init__(self, weight=1.0, temperature=1.0, beta=1.0, gamma=1.0, name=None):
        super().__init__(weight, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)
        self.beta = _check_number(self.name, "beta", beta)
        self.gamma = _check_number(self.name, "gamma", gamma)

    def __call__(self, labels, teacher, student, training=False):
        inter = losses.dist_inter(teacher.logits, student.logits, self.temperature)
        intra = losses.dist_intra(teacher.logits, student.logits, self.temperature)
        return self.beta * inter + self.gamma * intra

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "beta": self.beta, "gamma": self.gamma}
