"""The TSKD distiller: a `keras.Model` that trains a student from the labels, the teacher's softened logits and the
teacher's intermediate features, and optionally updates the teacher too (collaborative mode)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from kdkeras.adapters import FeatureAdapter
from kdkeras.losses import FEATURE_LOSSES, soft_target_kl


def _tap(model: keras.Model, layer_names: Sequence[str], role: str) -> keras.Model:
    """A model sharing `model`'s layers that returns `[logits, *features of layer_names]` in one forward pass."""
    names = [layer.name for layer in model.layers]
    missing = [n for n in layer_names if n not in names]
    if missing:
        stages = [n for n in names if n.startswith("stage")] or names
        raise ValueError(
            f"{role} '{model.name}' has no layer {', '.join(map(repr, missing))}; "
            f"its stage layers are: {', '.join(stages)}"
        )
    outputs = [model.output] + [model.get_layer(n).output for n in layer_names]
    return keras.Model(model.input, outputs, name=f"{model.name}_taps")


def _as_list(outputs):
    """A functional model built with a one-element output list returns a bare tensor: make it a list again."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _in_multi_worker_mode(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def _per_example_ce(labels, logits):
    return keras.losses.sparse_categorical_crossentropy(labels, ops.cast(logits, "float32"), from_logits=True)


@keras.saving.register_keras_serializable(package="kdkeras")
class Distiller(keras.Model):
    """Teacher–student collaborative knowledge distillation (TSKD).

    The student minimises

        loss = α · CE(labels, student) + β · T²·KL(softmax(t/T) ‖ softmax(s/T)) + γ · Σ_pairs feature_loss

    where the feature loss compares teacher features with the student's, passed through a trainable
    `FeatureAdapter` per pair ("hint", Romero et al., "FitNets", 2015), or compares their spatial attention maps
    ("attention", Zagoruyko & Komodakis, "Paying More Attention to Attention", 2017). The soft-target term is
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.

    In the classic mode (default) the teacher is frozen. With `collaborative=True` the teacher is trained as well,
    by its own optimizer, on CE(labels, teacher) + β · T²·KL(softmax(s/T) ‖ softmax(t/T)), learning from the
    student's softened output as in deep mutual learning (Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning",
    2018). Each network's targets from the other are constants (no gradient flows across).

    Every per-example loss is averaged over the *global* batch (`tf.nn.compute_average_loss`), so a step under a
    `tf.distribute` strategy with N replicas gives the same update as one device with the same global batch.

    Args:
        teacher: a built functional `keras.Model` returning logits.
        student: a built functional `keras.Model` returning logits, same input shape and number of classes.
        feature_pairs: `[(teacher_layer, student_layer), ...]` of feature maps to match.
        temperature: T > 0 of the soft targets.
        alpha: weight of the cross-entropy with the labels.
        beta: weight of the soft-target term.
        gamma: weight of the feature term; default 1.0 when `feature_pairs` are given, else 0.
        feature_loss: `"hint"` or `"attention"`.
        collaborative: also train the teacher (mutual learning).
        synchronized_bn: adapters synchronize their batch statistics across replicas.
        name: model name.

    Example:
        >>> distiller = Distiller(teacher, student, feature_pairs=[("stage5", "stage5")], temperature=4.0)
        >>> distiller.compile(optimizer="adam")
        >>> distiller.fit(train_ds, validation_data=val_ds, epochs=10)
        >>> distiller.student.save("student.keras")
    """

    def __init__(
        self,
        teacher: keras.Model,
        student: keras.Model,
        feature_pairs: Sequence[Sequence[str]] = (),
        temperature: float = 4.0,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float | None = None,
        feature_loss: str = "hint",
        collaborative: bool = False,
        synchronized_bn: bool = False,
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.feature_pairs = [tuple(pair) for pair in feature_pairs]
        gamma = (1.0 if self.feature_pairs else 0.0) if gamma is None else gamma
        self._validate(teacher, student, temperature, alpha, beta, gamma, feature_loss)
        self.teacher = teacher
        self.student = student
        self.temperature = float(temperature)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.feature_loss = feature_loss
        self.collaborative = bool(collaborative)
        self.synchronized_bn = bool(synchronized_bn)
        # Frozen teacher: its variables leave `trainable_variables`, and its BN layers run in inference mode.
        self.teacher.trainable = self.collaborative

        # Feature taps and adapters are built here, eagerly, so that `load_weights` and Keras Tuner's reload find
        # every variable before the first step.
        teacher_layers = [t for t, _ in self.feature_pairs]
        student_layers = [s for _, s in self.feature_pairs]
        self._teacher_taps = _tap(teacher, teacher_layers, "teacher")
        self._student_taps = _tap(student, student_layers, "student")
        self.adapters = []
        if self.feature_loss == "hint":
            for t_name, s_name in self.feature_pairs:
                adapter = FeatureAdapter(
                    teacher.get_layer(t_name).output.shape[-1],
                    synchronized_bn=synchronized_bn,
                    name=f"adapter_{t_name}_{s_name}",
                )
                adapter.build(student.get_layer(s_name).output.shape)
                self.adapters.append(adapter)
        self._feature_fn = FEATURE_LOSSES[self.feature_loss]

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.kd_tracker = keras.metrics.Mean(name="kd")
        self.feature_tracker = keras.metrics.Mean(name="feature")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.teacher_accuracy = keras.metrics.SparseCategoricalAccuracy(name="teacher_accuracy")
        self.teacher_loss_tracker = keras.metrics.Mean(name="teacher_loss")
        self.teacher_optimizer = None
        self.built = True

    @staticmethod
    def _validate(teacher, student, temperature, alpha, beta, gamma, feature_loss):
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model) or not model.built or not getattr(model, "inputs", None):
                raise ValueError(f"the {role} must be a built functional keras.Model, got {type(model).__name__}")
        if teacher.output.shape[-1] != student.output.shape[-1]:
            raise ValueError(
                f"teacher has {teacher.output.shape[-1]} classes, student {student.output.shape[-1]}: "
                "they must be equal"
            )
        if tuple(teacher.inputs[0].shape[1:]) != tuple(student.inputs[0].shape[1:]):
            raise ValueError(
                f"teacher input {tuple(teacher.inputs[0].shape[1:])} differs from student input "
                f"{tuple(student.inputs[0].shape[1:])}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        weights = {"alpha": alpha, "beta": beta, "gamma": gamma}
        for key, value in weights.items():
            if not value >= 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if not any(weights.values()):
            raise ValueError("alpha, beta and gamma are all 0: nothing to learn from")
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"unknown feature_loss '{feature_loss}'; choose one of: {', '.join(FEATURE_LOSSES)}")

    def compile(self, optimizer="adam", teacher_optimizer=None, **kwargs):
        """Configures training.

        Args:
            optimizer: the student's (and adapters') optimizer.
            teacher_optimizer: the teacher's optimizer in collaborative mode; default a fresh copy of `optimizer`.
            **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`, `steps_per_execution`). Losses and
                metrics are the distiller's own, so `loss` and `metrics` are not taken.
        """
        for key in ("loss", "metrics"):
            if kwargs.get(key) is not None:
                raise ValueError(f"Distiller.compile takes no '{key}': the distiller defines its own")
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
        if self.optimizer is None:
            return None
        config = {"optimizer": keras.optimizers.serialize(self.optimizer)}
        if self.teacher_optimizer is not None:
            config["teacher_optimizer"] = keras.optimizers.serialize(self.teacher_optimizer)
        return config

    def compile_from_config(self, config):
        self.compile(
            optimizer=keras.optimizers.deserialize(config["optimizer"]),
            teacher_optimizer=(
                keras.optimizers.deserialize(config["teacher_optimizer"]) if "teacher_optimizer" in config else None
            ),
        )

    @property
    def _student_variables(self):
        return self.student.trainable_variables + [v for a in self.adapters for v in a.trainable_variables]

    @property
    def metrics(self):
        tracked = [self.loss_tracker, self.ce_tracker, self.kd_tracker]
        if self.feature_pairs:
            tracked.append(self.feature_tracker)
        tracked += [self.accuracy, self.teacher_accuracy]
        if self.collaborative:
            tracked.append(self.teacher_loss_tracker)
        return tracked

    def call(self, inputs, training=None):
        """The student's logits."""
        return self.student(inputs, training=training)

    def _forward(self, x, training: bool):
        teacher_out = _as_list(self._teacher_taps(x, training=training and self.collaborative))
        student_out = _as_list(self._student_taps(x, training=training))
        return teacher_out[0], teacher_out[1:], student_out[0], student_out[1:]

    def _student_terms(self, y, teacher_logits, teacher_feats, student_logits, student_feats, training):
        """Per-example loss terms of the student; teacher outputs are constants here."""
        teacher_logits = ops.stop_gradient(teacher_logits)
        terms = {
            "ce": _per_example_ce(y, student_logits),
            "kd": soft_target_kl(teacher_logits, student_logits, self.temperature),
        }
        if self.feature_pairs:
            per_pair = []
            for i, (t_feat, s_feat) in enumerate(zip(teacher_feats, student_feats, strict=True)):
                if self.adapters:
                    s_feat = self.adapters[i](s_feat, training=training)
                per_pair.append(self._feature_fn(ops.stop_gradient(t_feat), s_feat))
            terms["feature"] = ops.sum(ops.stack(per_pair), axis=0)
        total = self.alpha * terms["ce"] + self.beta * terms["kd"]
        if self.feature_pairs:
            total = total + self.gamma * terms["feature"]
        terms["loss"] = total
        return terms

    def _teacher_term(self, y, teacher_logits, student_logits):
        """Per-example loss of the teacher in collaborative mode; the student's logits are constants here."""
        soft = soft_target_kl(ops.stop_gradient(student_logits), teacher_logits, self.temperature)
        return _per_example_ce(y, teacher_logits) + self.beta * soft

    def _update_metrics(self, y, terms, teacher_logits, student_logits, sample_weight, teacher_loss=None):
        batch = ops.cast(ops.shape(y)[0], "float32")
        trackers = {"loss": self.loss_tracker, "ce": self.ce_tracker, "kd": self.kd_tracker}
        if self.feature_pairs:
            trackers["feature"] = self.feature_tracker
        for key, tracker in trackers.items():
            tracker.update_state(ops.mean(terms[key]), sample_weight=batch)
        if teacher_loss is not None:
            self.teacher_loss_tracker.update_state(ops.mean(teacher_loss), sample_weight=batch)
        self.accuracy.update_state(y, student_logits, sample_weight=sample_weight)
        self.teacher_accuracy.update_state(y, teacher_logits, sample_weight=sample_weight)
        logs = {m.name: m.result() for m in self.metrics}
        if _in_multi_worker_mode(self.distribute_strategy):
            # Workaround for keras-team/keras#20585 (open in Keras 3.15): across workers, Keras reduces each step's
            # logs with strategy.reduce("MEAN", value, axis=0), which fails on scalars ("Invalid reduction
            # dimension 0 for input with 0 dimensions"). Shape-[1] logs reduce to the scalars Keras expects.
            logs = {name: ops.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Workaround for keras-team/keras#20585 (open in Keras 3.15): before training, Keras takes the first batch
        # of a distributed dataset and reduces it across replicas with strategy.reduce("MEAN"), which fails under
        # MultiWorkerMirroredStrategy for a nested (images, labels) PerReplica batch. The build needs only shapes
        # and dtypes, so the first local replica's batch serves.
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(batches),
                )
                break
        super()._maybe_symbolic_build(data_batch=data_batch)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            teacher_logits, teacher_feats, student_logits, student_feats = self._forward(x, training=True)
            terms = self._student_terms(y, teacher_logits, teacher_feats, student_logits, student_feats, True)
            # Mean over the global batch: correct under tf.distribute, where gradients are summed over replicas.
            student_loss = tf.nn.compute_average_loss(terms["loss"], sample_weight=sample_weight)
            objective = self.optimizer.scale_loss(student_loss)
            teacher_loss = None
            if self.collaborative:
                teacher_loss = self._teacher_term(y, teacher_logits, student_logits)
                averaged = tf.nn.compute_average_loss(teacher_loss, sample_weight=sample_weight)
                # One backward pass for both: each loss sees the other network's outputs as constants, so the
                # sum's gradient is the student loss' for the student and the teacher loss' for the teacher.
                objective = objective + self.teacher_optimizer.scale_loss(averaged)
        student_vars = self._student_variables
        teacher_vars = self.teacher.trainable_variables if self.collaborative else []
        grads = tape.gradient(objective, student_vars + teacher_vars)
        self.optimizer.apply(grads[: len(student_vars)], student_vars)
        if self.collaborative:
            self.teacher_optimizer.apply(grads[len(student_vars) :], teacher_vars)
        return self._update_metrics(y, terms, teacher_logits, student_logits, sample_weight, teacher_loss)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_logits, teacher_feats, student_logits, student_feats = self._forward(x, training=False)
        terms = self._student_terms(y, teacher_logits, teacher_feats, student_logits, student_feats, False)
        teacher_loss = self._teacher_term(y, teacher_logits, student_logits) if self.collaborative else None
        return self._update_metrics(y, terms, teacher_logits, student_logits, sample_weight, teacher_loss)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    def get_config(self):
        return {
            **super().get_config(),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "feature_pairs": [list(pair) for pair in self.feature_pairs],
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "feature_loss": self.feature_loss,
            "collaborative": self.collaborative,
            "synchronized_bn": self.synchronized_bn,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)
