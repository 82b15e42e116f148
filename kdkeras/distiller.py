"""The distiller: a `keras.Model` that trains a student on a weighted sum of distillation terms (labels, the
teacher's softened logits, its intermediate features, …) and optionally updates the teacher too (collaborative)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from kdkeras import terms as terms_lib
from kdkeras.adapters import on_images_of
from kdkeras.callbacks import SetEpoch
from kdkeras.data import EpochClock
from kdkeras.keras_fixes import MultiWorkerFit
from kdkeras.labels import check_fit_labels, labeled_mask, labeled_weight
from kdkeras.models import as_list, signature, tap
from kdkeras.student_metrics import student_metrics
from kdkeras.terms import Outputs, Term
from kdkeras.validation import check_number

# Metric names the distiller reports itself; a term may not take one of them.
_RESERVED_NAMES = ("loss", "accuracy", "teacher_accuracy", "teacher_loss")


def _per_example_ce(labels, logits):
    return keras.losses.sparse_categorical_crossentropy(labels, ops.cast(logits, "float32"), from_logits=True)


@keras.saving.register_keras_serializable(package="kdkeras")
class Distiller(MultiWorkerFit, keras.Model):
    """Knowledge distillation as a weighted sum of terms; teacher–student collaborative (TSKD) when asked.

    The student (with any adapters the terms own) minimises

        loss = Σ_terms weight · term(labels, teacher outputs, student outputs)

    where each term is a registered `kdkeras.terms.Term` (`kdkeras.terms.available()`): the labels, the teacher's
    output, its features through trainable adapters, the exits of a multi-exit student (`teacher=None` for
    self-distillation alone), or your own. Features are tapped by layer name once, here.

    In the classic mode (default) the teacher is frozen. With `collaborative=True` the teacher is trained as well,
    by its own optimizer, on CE(labels, teacher) + Σ over the *mirrored* terms (the logit terms: kd, dkd, dist) of
    weight · term with the roles swapped, learning from the student's output as in deep mutual learning (Zhang,
    Xiang, Hospedales & Lu, "Deep Mutual Learning", 2018), scaled by `teacher_mimicry`. Feature terms train only
    the student. Each network's targets from the other are constants (no gradient flows across).

    The teacher may take images of another size or channel count than the student (a 32×32 RGB teacher, a
    28×28 gray student): it is given the student's batch resized and converted (`kdkeras.adapters.ImageConversion`).
    Teacher and student may be functional or Sequential models (built, with one logits output).

    Teacher logits can come with the data instead of from a forward pass (a teacher-output cache, see
    `kdkeras.teacher_cache`): a batch `(images, {"labels": y, "teacher_logits": t})` skips the teacher. Terms that
    need teacher features, and collaborative mode, need the live teacher. A `"labeled"` entry (1.0 or 0.0 per
    example) marks unlabeled transfer images, on which the label terms are zeroed.

    Every per-example loss is averaged over the *global* batch (`tf.nn.compute_average_loss`), so a step under a
    `tf.distribute` strategy with N replicas gives the same update as one device with the same global batch.
    A student (or a trained teacher) built with weight or activity regularizers adds their losses, as
    `keras.Model.fit` would (scaled by `tf.nn.scale_regularization_loss` under a strategy); the logged `loss`
    includes them, the per-term logs do not.

    Args:
        teacher: a built `keras.Model` (functional or Sequential) returning logits, or None (self-distillation).
        student: a built `keras.Model` returning logits for as many classes; its input shape may differ from the
            teacher's.
        terms: `Term`s, registered names or dicts (`kdkeras.terms.get`); default `kdkeras.terms.default_terms`.
        collaborative: also train the teacher (mutual learning).
        teacher_mimicry: in collaborative mode, the factor on the mirrored terms in the teacher's loss: 0 (default)
            a teacher that keeps learning from the labels alone (a trained teacher that imitates a student that has
            just started loses what it knows), 1 deep mutual learning's symmetric loss.
        synchronized_bn: adapters synchronize their batch statistics across replicas.
        name: model name.

    Example:
        >>> distiller = Distiller(teacher, student, terms=[
        ...     {"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}, "hint"])
        >>> distiller.compile(optimizer="adam", metrics=[keras.metrics.SparseTopKCategoricalAccuracy(3)])
        >>> distiller.fit(train_ds, validation_data=val_ds, epochs=10)
        >>> distiller.student.save("student.keras")
    """

    def __init__(
        self,
        teacher: keras.Model | None,
        student: keras.Model,
        terms: Sequence[Term | str | dict] | None = None,
        collaborative: bool = False,
        synchronized_bn: bool = False,
        teacher_mimicry: float = 0.0,
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self._validate(teacher, student)
        self.teacher = teacher
        self.student = student
        self.collaborative = bool(collaborative)
        self.synchronized_bn = bool(synchronized_bn)
        self.teacher_mimicry = float(check_number(teacher_mimicry, "teacher_mimicry"))
        if teacher is None and self.collaborative:
            raise ValueError("collaborative mode trains a teacher: pass one")
        if teacher is not None:
            # Frozen teacher: its variables leave `trainable_variables`, and its BN layers run in inference mode.
            self.teacher.trainable = self.collaborative

        self.terms = terms_lib.get_list(terms_lib.default_terms(teacher, student) if terms is None else terms)
        reserved = [t.name for t in self.terms if t.name in _RESERVED_NAMES]
        if reserved:
            raise ValueError(f"term name(s) {', '.join(reserved)} are reserved for the distiller's own metrics")
        needing = [t.name for t in self.terms if t.needs_teacher]
        if teacher is None and needing:
            raise ValueError(f"term(s) {', '.join(needing)} learn from a teacher: pass one, or use self-distillation")
        # Variables of the terms (adapters) and the taps are built here, eagerly, so that `load_weights` and Keras
        # Tuner's reload find every variable before the first step.
        self.epoch = keras.Variable(0, dtype="int64", trainable=False, name="epoch")
        self.clock = EpochClock(self.epoch)  # Set by `fit` at every epoch's start.
        for term in self.terms:
            if hasattr(term, "synchronized_bn"):
                term.synchronized_bn = term.synchronized_bn or self.synchronized_bn
            term.build(teacher, student)
            term.epoch = self.epoch
        self.adapters = [layer for term in self.terms for layer in term.layers]
        self._teacher_layers = _unique(name for term in self.terms for name in term.teacher_layers)
        self._student_layers = _unique(name for term in self.terms for name in term.student_layers)
        # A teacher with its own input size sees the student's images converted to it, in the same forward pass.
        self._teacher_taps = None if teacher is None else on_images_of(
            tap(teacher, self._teacher_layers, "teacher"), student.inputs[0].shape[1:], f"{teacher.name}_taps"
        )  # fmt: skip
        self._student_taps = tap(student, self._student_layers, "student")

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=term.name) for term in self.terms]
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.teacher_accuracy = keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy")
        self.teacher_loss_tracker = keras.metrics.Mean(name="teacher_loss")
        self.student_metrics = []
        self.teacher_optimizer = None
        self.built = True

    @property
    def teacher_layers(self) -> list[str]:
        """The teacher layers the terms read (tapped once per step)."""
        return list(self._teacher_layers)

    @property
    def needs_teacher_features(self) -> bool:
        """Whether some term reads teacher feature maps (then cached teacher logits are not enough)."""
        return bool(self._teacher_layers)

    @property
    def loss_names(self) -> list[str]:
        """The log keys holding losses, terms before their sum (the non-finite guard reads them in this order)."""
        return [t.name for t in self.terms] + (["teacher_loss"] if self.collaborative else []) + ["loss"]

    @staticmethod
    def _validate(teacher, student):
        if teacher is None:
            signature(student, "student")
            return
        (_, teacher_classes), (_, student_classes) = signature(teacher, "teacher"), signature(student, "student")
        if teacher_classes != student_classes:
            raise ValueError(f"teacher has {teacher_classes} classes, student {student_classes}: they must be equal")

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, keeping the `epoch` that term schedules (DKD's warm-up) read up to date.

        Raises:
            ValueError: when the labels (all of them for arrays, the first batch's for a dataset) are not class
                indices 0 … classes − 1, before any step runs.
        """
        check_fit_labels(x, y, signature(self.student, "student")[1])
        return super().fit(x, y, *args, callbacks=[SetEpoch(self.clock), *(callbacks or [])], **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        check_fit_labels(x, y, signature(self.student, "student")[1])
        return super().evaluate(x, y, *args, **kwargs)

    def compile(self, optimizer="adam", teacher_optimizer=None, metrics=None, **kwargs):
        """Configures training.

        Args:
            optimizer: the student's (and adapters') optimizer.
            teacher_optimizer: the teacher's optimizer in collaborative mode; default a fresh copy of `optimizer`.
            metrics: more metrics of the student, as for `keras.Model.compile`: names or `keras.metrics.Metric`s,
                updated with `(labels, student logits)`. The student's accuracy (`accuracy`), the teacher's, the
                loss and each term are always reported.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`, `steps_per_execution`). The loss is
                the terms' sum, so `loss` is not taken.
        """
        if kwargs.get("loss") is not None:
            raise ValueError("Distiller.compile takes no 'loss': the loss is the weighted sum of the terms")
        self.student_metrics = student_metrics(metrics, {t.name for t in self.terms} | set(_RESERVED_NAMES))
        optimizer = keras.optimizers.get(optimizer)
        # Under a "mixed_float16" policy Keras wraps `optimizer` in a LossScaleOptimizer here.
        super().compile(optimizer=optimizer, **kwargs)
        # Built here, on exactly the variables each one updates, so Keras does not build them on everything.
        self.optimizer.build(self._student_variables)
        if self.collaborative:
            if teacher_optimizer is None:
                teacher_optimizer = optimizer.__class__.from_config(optimizer.get_config())
            teacher_optimizer = keras.optimizers.get(teacher_optimizer)
            if self.dtype_policy.name == "mixed_float16" and not isinstance(
                teacher_optimizer, keras.optimizers.LossScaleOptimizer
            ):
                # The teacher's float16 gradients need loss scaling as much as the student's.
                teacher_optimizer = keras.optimizers.LossScaleOptimizer(teacher_optimizer)
            self.teacher_optimizer = teacher_optimizer
            self.teacher_optimizer.build(self.teacher.trainable_variables)
        elif teacher_optimizer is not None:
            raise ValueError("teacher_optimizer is only used with collaborative=True")

    def get_compile_config(self):
        if getattr(self, "optimizer", None) is None:  # Not compiled yet: Keras sets `optimizer` in compile().
            return None
        config = {"optimizer": keras.optimizers.serialize(self.optimizer)}
        if getattr(self, "teacher_optimizer", None) is not None:
            config["teacher_optimizer"] = keras.optimizers.serialize(self.teacher_optimizer)
        if self.student_metrics:
            config["metrics"] = [keras.metrics.serialize(metric) for metric in self.student_metrics]
        return config

    def compile_from_config(self, config):
        self.compile(
            optimizer=keras.optimizers.deserialize(config["optimizer"]),
            teacher_optimizer=(
                keras.optimizers.deserialize(config["teacher_optimizer"]) if "teacher_optimizer" in config else None
            ),
            metrics=[keras.metrics.deserialize(metric) for metric in config.get("metrics", [])] or None,
        )

    @property
    def _student_variables(self):
        return self.student.trainable_variables + [v for a in self.adapters for v in a.trainable_variables]

    @property
    def metrics(self):
        tracked = [self.loss_tracker, *self.term_trackers, self.accuracy]
        if self.teacher is not None:
            tracked.append(self.teacher_accuracy)
        tracked += getattr(self, "student_metrics", [])
        if self.collaborative:
            tracked.append(self.teacher_loss_tracker)
        return tracked

    def call(self, inputs, training=None):
        """The student's logits."""
        return self.student(inputs, training=training)

    def _forward(self, x, y, training: bool):
        """`(labels, teacher Outputs, student Outputs)`; the teacher's logits come from `y` when it carries them."""
        labels = y["labels"] if isinstance(y, dict) else y
        if isinstance(y, dict) and "labeled" in y and self.collaborative:
            raise ValueError("unlabeled transfer images cannot train a collaborative teacher (it learns from labels)")
        if isinstance(y, dict) and "teacher_logits" in y:
            if self.collaborative or self.needs_teacher_features:
                raise ValueError(
                    "cached teacher logits cannot serve collaborative mode or terms that read teacher features "
                    f"({', '.join(self._teacher_layers) or 'collaborative'}): run the teacher live"
                )
            teacher = Outputs(y["teacher_logits"])
        elif self._teacher_taps is None:  # Self-distillation: no teacher.
            teacher = Outputs(None)
        else:
            out = as_list(self._teacher_taps(x, training=training and self.collaborative))
            teacher = Outputs(out[0], dict(zip(self._teacher_layers, out[1:], strict=True)))
        out = as_list(self._student_taps(x, training=training))
        student = Outputs(out[0], dict(zip(self._student_layers, out[1:], strict=True)))
        return labels, teacher, student

    def _regularization(self, *layers) -> tf.Tensor | None:
        """The sum of the regularization losses (weight regularizers, `add_loss`) of `layers`, or None if there are
        none: the built-in models have none, and their training graph stays exactly the one without this sum."""
        losses = [ops.cast(ops.sum(loss), "float32") for layer in layers for loss in layer.losses]
        return ops.sum(ops.stack(losses)) if losses else None

    def _student_losses(self, labels, teacher: Outputs, student: Outputs, training: bool, labeled=None) -> dict:
        """Per-example values of every term and of their weighted sum (`"loss"`); the teacher is a constant.

        `labeled` (1.0 or 0.0 per example) zeroes the terms that read the labels on unlabeled transfer images."""
        if teacher.logits is not None:
            teacher = Outputs(ops.stop_gradient(teacher.logits), teacher.features)
        values = {}
        for term in self.terms:
            value = term(labels, teacher, student, training=training)
            values[term.name] = value * labeled if labeled is not None and term.uses_labels else value
        values["loss"] = sum(term.weight * values[term.name] for term in self.terms)
        return values

    def _teacher_loss(self, labels, teacher: Outputs, student: Outputs):
        """Per-example loss of the teacher in collaborative mode: its CE plus the mirrored terms, roles swapped,
        scaled by `teacher_mimicry`."""
        target = Outputs(ops.stop_gradient(student.logits))
        loss = _per_example_ce(labels, teacher.logits)
        for term in self.terms:
            if term.mirrored and self.teacher_mimicry:
                mimicry = self.teacher_mimicry * term.weight
                loss = loss + mimicry * term(labels, target, Outputs(teacher.logits), training=True)
        return loss

    def _update_metrics(
        self, labels, values, teacher_logits, student_logits, sample_weight, teacher_loss=None, regularization=None
    ):
        batch = ops.cast(ops.shape(labels)[0], "float32")
        loss = ops.mean(values["loss"])
        self.loss_tracker.update_state(loss if regularization is None else loss + regularization, sample_weight=batch)
        for term, tracker in zip(self.terms, self.term_trackers, strict=True):
            tracker.update_state(ops.mean(values[term.name]), sample_weight=batch)
        if teacher_loss is not None:
            self.teacher_loss_tracker.update_state(ops.mean(teacher_loss), sample_weight=batch)
        self.accuracy.update_state(labels, student_logits, sample_weight=sample_weight)
        for metric in self.student_metrics:
            metric.update_state(labels, student_logits, sample_weight=sample_weight)
        if self.teacher is not None:
            self.teacher_accuracy.update_state(labels, teacher_logits, sample_weight=sample_weight)
        return self.reducible_logs({m.name: m.result() for m in self.metrics})

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labeled = labeled_mask(y)
        with tf.GradientTape() as tape:
            labels, teacher, student = self._forward(x, y, training=True)
            values = self._student_losses(labels, teacher, student, training=True, labeled=labeled)
            # Mean over the global batch: correct under tf.distribute, where gradients are summed over replicas.
            student_loss = tf.nn.compute_average_loss(values["loss"], sample_weight=sample_weight)
            regularization = self._regularization(self.student, *self.adapters)
            if regularization is not None:
                # Each replica adds 1/N of it, so the summed gradients hold it once.
                student_loss = student_loss + tf.nn.scale_regularization_loss(regularization)
            objective = self.optimizer.scale_loss(student_loss)
            teacher_loss = None
            if self.collaborative:
                teacher_loss = self._teacher_loss(labels, teacher, student)
                averaged = tf.nn.compute_average_loss(teacher_loss, sample_weight=sample_weight)
                teacher_regularization = self._regularization(self.teacher)
                if teacher_regularization is not None:
                    averaged = averaged + tf.nn.scale_regularization_loss(teacher_regularization)
                # One backward pass for both: each loss sees the other network's outputs as constants, so the
                # sum's gradient is the student loss' for the student and the teacher loss' for the teacher.
                objective = objective + self.teacher_optimizer.scale_loss(averaged)
        student_vars = self._student_variables
        teacher_vars = self.teacher.trainable_variables if self.collaborative else []
        grads = tape.gradient(objective, student_vars + teacher_vars)
        self.optimizer.apply(grads[: len(student_vars)], student_vars)
        if self.collaborative:
            self.teacher_optimizer.apply(grads[len(student_vars) :], teacher_vars)
        return self._update_metrics(labels, values, teacher.logits, student.logits, labeled_weight(sample_weight,
                                    labeled), teacher_loss, regularization)  # fmt: skip

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labeled = labeled_mask(y)
        labels, teacher, student = self._forward(x, y, training=False)
        values = self._student_losses(labels, teacher, student, training=False, labeled=labeled)
        teacher_loss = self._teacher_loss(labels, teacher, student) if self.collaborative else None
        regularization = self._regularization(self.student, *self.adapters)
        return self._update_metrics(labels, values, teacher.logits, student.logits, labeled_weight(sample_weight,
                                    labeled), teacher_loss, regularization)  # fmt: skip

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    def get_config(self):
        return {
            **super().get_config(),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "terms": [terms_lib.serialize(term) for term in self.terms],
            "collaborative": self.collaborative,
            "synchronized_bn": self.synchronized_bn,
            "teacher_mimicry": self.teacher_mimicry,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)


def _unique(names) -> list[str]:
    """The names in first-seen order, without repeats (two terms may read the same layer: tap it once)."""
    return list(dict.fromkeys(names))
