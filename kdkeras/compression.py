"""Pruning, quantization-aware training and weight clustering with tensorflow-model-optimization (tfmot).

tfmot works on tf_keras (Keras 2) models only, and importing it sets `TF_USE_LEGACY_KERAS=1`. This is the only
kdkeras module that imports it, and only inside functions: the rest of the package stays on Keras 3, which keeps
working in the same process (the `keras` module is already imported; only `tf.keras` changes meaning).

The Keras 3 student is rebuilt layer by layer in tf_keras from its own graph (`to_tf_keras`, weights copied, same
logits), wrapped by tfmot, fine-tuned while still distilling from the Keras 3 teacher's soft targets, stripped of
its wrappers and converted to TFLite.
"""

from __future__ import annotations

import inspect
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from kdkeras.adapters import on_images_of
from kdkeras.callbacks import StopOnNonFinite, StopOnSignal
from kdkeras.losses import soft_target_kl

METHODS = ("prune", "qat", "cluster")


def _tfmot():
    import tensorflow_model_optimization as tfmot  # Sets TF_USE_LEGACY_KERAS=1: keep it inside this module.

    return tfmot


def _tf_keras():
    import tf_keras

    return tf_keras


def _legacy_layer(layer):
    """The tf_keras twin of a Keras 3 layer: same class name, the config keys tf_keras understands.

    Initializers, regularizers and constraints are left at tf_keras' defaults: the weights are copied afterwards,
    and Keras 3 serializes initializers with arguments tf_keras does not take.
    """
    tf_keras = _tf_keras()
    cls = getattr(tf_keras.layers, type(layer).__name__, None)
    if cls is None:
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}) has no tf_keras equivalent")
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable"}
    config = {
        key: value
        for key, value in layer.get_config().items()
        if key in accepted and not key.endswith(("_initializer", "_regularizer", "_constraint"))
    }
    return cls(**config)


def to_tf_keras(model: keras.Model):
    """Rebuilds a Keras 3 functional model (standard layers, each used once) in tf_keras with the same weights.

    Returns:
        A `tf_keras.Model` computing the same logits.
    """
    tf_keras = _tf_keras()
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("to_tf_keras takes single-input, single-output functional models")
    tensors = {}
    inputs = tf_keras.Input(shape=tuple(model.inputs[0].shape[1:]), name=model.inputs[0].name)
    tensors[id(model.inputs[0])] = inputs
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        twin = _legacy_layer(layer)
        source = layer.input
        x = [tensors[id(t)] for t in source] if isinstance(source, (list, tuple)) else tensors[id(source)]
        tensors[id(layer.output)] = twin(x)
        twin.set_weights(layer.get_weights())
    return tf_keras.Model(inputs, tensors[id(model.outputs[0])], name=model.name)


def _kernels(model) -> dict[str, np.ndarray]:
    """Every convolution and dense kernel of a (stripped) tf_keras model, by layer name."""
    kernels = {}
    for layer in model.layers:
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in ("kernel", "depthwise_kernel"):
                kernels[f"{layer.name}/{short}"] = weight.numpy()
    return kernels


def kernel_sparsity(model) -> dict[str, float]:
    """Fraction of exact zeros in each kernel."""
    return {name: float(np.mean(k == 0)) for name, k in _kernels(model).items()}


def kernel_unique_values(model) -> dict[str, int]:
    """Number of distinct values in each kernel (at most the cluster count after clustering)."""
    return {name: int(np.unique(k).size) for name, k in _kernels(model).items()}


def _is_dense_or_conv(layers, layer) -> bool:
    return isinstance(layer, (layers.Conv2D, layers.Dense)) and not isinstance(layer, layers.DepthwiseConv2D)


def _wrap(model, method: str, total_steps: int, sparsity: float | None, clusters: int | None):
    """Applies tfmot's wrappers to the layers it supports; returns (wrapped model, extra training callbacks)."""
    tfmot, tf_keras = _tfmot(), _tf_keras()
    layers = tf_keras.layers
    if method == "prune":
        end_step = max(1, int(0.7 * total_steps))  # The last 30 % of the steps fine-tune at the target sparsity.
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step,
            frequency=max(1, end_step // 10),
        )  # fmt: skip

        def clone(layer):
            # Conv2D and Dense only: tfmot's registry does not prune DepthwiseConv2D kernels (see kernel_sparsity).
            if _is_dense_or_conv(layers, layer):
                return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
            return layer

        return tf_keras.models.clone_model(model, clone_function=clone), [tfmot.sparsity.keras.UpdatePruningStep()]
    if method == "cluster":
        init = tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS

        def clone(layer):
            # As with pruning, tfmot leaves DepthwiseConv2D kernels unclustered (seen: 144–432 distinct values
            # after clustering into 4), so they are not wrapped; kernel_unique_values reports every kernel.
            if _is_dense_or_conv(layers, layer):
                return tfmot.clustering.keras.cluster_weights(
                    layer, number_of_clusters=clusters, cluster_centroids_init=init
                )
            return layer

        return tf_keras.models.clone_model(model, clone_function=clone), []

    # QAT: quantize_model refuses Rescaling, so annotate every other layer and apply.
    def annotate(layer):
        if isinstance(layer, layers.Rescaling):
            return layer
        return tfmot.quantization.keras.quantize_annotate_layer(layer)

    with tfmot.quantization.keras.quantize_scope():
        annotated = tf_keras.models.clone_model(model, clone_function=annotate)
        return tfmot.quantization.keras.quantize_apply(annotated), []


def _strip(model, method: str):
    tfmot = _tfmot()
    if method == "prune":
        return tfmot.sparsity.keras.strip_pruning(model)
    if method == "cluster":
        return tfmot.clustering.keras.strip_clustering(model)
    return model  # QAT keeps its fake-quantization nodes: the converter turns them into int8 kernels.


def fine_tune(
    student: keras.Model,
    teacher: keras.Model,
    train_dataset,
    method: str,
    epochs: int = 2,
    lr: float = 1e-4,
    sparsity: float | None = None,
    clusters: int | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    backup_dir: str | None = None,
):
    """Compresses a Keras 3 student with tfmot, fine-tuning it on labels and the teacher's soft targets.

    Args:
        student: the trained Keras 3 student (not modified).
        teacher: the Keras 3 teacher whose softened logits the student keeps learning from.
        train_dataset: (images, labels) batches.
        method: `prune` (magnitude pruning, polynomial decay to `sparsity`), `qat` (quantization-aware training)
            or `cluster` (weight clustering into `clusters` centroids per kernel).
        epochs: fine-tuning epochs.
        lr: Adam learning rate of the fine-tuning.
        sparsity: target fraction of zero weights for `prune`, in (0, 1).
        clusters: number of clusters for `cluster`, >= 2.
        temperature, alpha, beta: the distillation loss α·CE + β·T²·KL.
        backup_dir: checkpoint folder (every epoch, and on SIGINT/SIGTERM at a step boundary): re-running the same
            compression resumes from it; removed when the fine-tuning ends normally. None for no checkpoints.

    Returns:
        `(stripped tf_keras model, report dict)`; the report has per-kernel sparsity and distinct values.
    """
    _check_arguments(method, epochs, sparsity, clusters)
    tf_keras = _tf_keras()
    steps_per_epoch = int(train_dataset.cardinality())
    wrapped, callbacks = _wrap(to_tf_keras(student), method, epochs * steps_per_epoch, sparsity, clusters)
    optimizer = tf_keras.optimizers.Adam(lr)
    teacher = on_images_of(teacher, student.inputs[0].shape[1:])  # A teacher of its own input size.

    @tf.function
    def train_step(images, labels):
        teacher_logits = teacher(images, training=False)
        with tf.GradientTape() as tape:
            logits = wrapped(images, training=True)
            ce = tf_keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            loss = tf.reduce_mean(alpha * ce + beta * soft_target_kl(teacher_logits, logits, temperature))
        grads = tape.gradient(loss, wrapped.trainable_variables)
        optimizer.apply_gradients(zip(grads, wrapped.trainable_variables, strict=True))
        return loss

    losses = _train_epochs(train_step, wrapped, optimizer, callbacks, train_dataset, epochs, backup_dir)
    losses = losses or [float("nan")]  # Resumed after the last epoch: nothing left to train.
    stripped = _strip(wrapped, method)
    report = {
        "method": method,
        "epochs": epochs,
        "lr": lr,
        "sparsity_target": sparsity,
        "clusters": clusters,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "kernel_sparsity": kernel_sparsity(stripped) if method != "qat" else None,
        "kernel_unique_values": kernel_unique_values(stripped) if method == "cluster" else None,
    }
    return stripped, report


def _check_arguments(method: str, epochs: int, sparsity: float | None, clusters: int | None) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown compression '{method}'; choose one of: {', '.join(METHODS)}")
    if method == "prune" and not (sparsity is not None and 0 < sparsity < 1):
        raise ValueError(f"pruning sparsity must be in (0, 1), got {sparsity}")
    if method == "cluster" and not (clusters is not None and clusters >= 2):
        raise ValueError(f"the number of clusters must be >= 2, got {clusters}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")


def _train_epochs(train_step, wrapped, optimizer, callbacks, train_dataset, epochs: int, backup_dir) -> list[float]:
    """The fine-tuning loop: resumes from `backup_dir`'s checkpoint, drives tfmot's callbacks, stops cleanly on a
    non-finite loss or a signal; returns the loss of every step it ran."""
    # The Keras callbacks cannot drive this custom tf_keras loop, so it checkpoints itself; the pruning step lives in
    # the wrappers' variables and resumes with the weights and the optimizer.
    checkpoint = tf.train.Checkpoint(model=wrapped, optimizer=optimizer, epoch=tf.Variable(0, dtype=tf.int64))
    saver = _CheckpointSaver(checkpoint, backup_dir) if backup_dir else None
    first_epoch = saver.restore() if saver else 0
    guard, stop = StopOnNonFinite(terms=("loss",), where=backup_dir), StopOnSignal(saver)
    stop.on_train_begin()
    for callback in callbacks:  # tfmot's pruning step must be driven by hand in a custom loop.
        callback.set_model(wrapped)
        callback.on_train_begin()
    losses = []
    try:
        for epoch in range(first_epoch, epochs):
            guard.on_epoch_begin(epoch)
            stop.on_epoch_begin(epoch)
            for step, (images, labels) in enumerate(train_dataset):
                for callback in callbacks:
                    callback.on_train_batch_begin(batch=step)
                losses.append(float(train_step(images, labels)))
                guard.on_train_batch_end(step, {"loss": losses[-1]})
                stop.on_train_batch_end(step)
            for callback in callbacks:
                callback.on_epoch_end(epoch)
            checkpoint.epoch.assign(epoch + 1)
            if saver:
                saver.save_now()
    finally:
        stop.on_train_end()
    if saver:
        shutil.rmtree(backup_dir, ignore_errors=True)
    return losses


class _CheckpointSaver:
    """Saves and restores the fine-tuning state with `tf.train.CheckpointManager` (the two newest kept).

    Has the `save_now()` and `backup_dir` that `StopOnSignal` uses.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, backup_dir: str):
        self.checkpoint = checkpoint
        self.backup_dir = backup_dir
        self.manager = tf.train.CheckpointManager(checkpoint, backup_dir, max_to_keep=2)

    def restore(self) -> int:
        """Restores the newest checkpoint, if any; returns the number of finished epochs."""
        if not self.manager.latest_checkpoint:
            return 0
        self.checkpoint.restore(self.manager.latest_checkpoint)
        done = int(self.checkpoint.epoch.numpy())
        print(f"Resuming from checkpoint in {self.backup_dir}: {done} epoch(s) done", flush=True)
        return done

    def save_now(self) -> None:
        os.makedirs(self.backup_dir, exist_ok=True)
        self.manager.save()


def tflite_from_tf_keras(model, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """Converts a (stripped) tf_keras model to TFLite; a QAT model is converted with its learned int8 ranges."""
    from kdkeras.export import configure_converter

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return configure_converter(converter, quantize, representative).convert()
