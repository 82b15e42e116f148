"""Workarounds for open Keras issues, in one place, so the distiller's training step reads as the method does."""

from __future__ import annotations

import tensorflow as tf
from keras import ops


def in_multi_worker_mode(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


class MultiWorkerFit:
    """A `keras.Model` mixin that lets `fit` run under `MultiWorkerMirroredStrategy` (keras-team/keras#20585, open
    in Keras 3.15); a no-op under any other strategy."""

    def reducible_logs(self, logs: dict) -> dict:
        """Across workers, Keras reduces each step's logs with strategy.reduce("MEAN", value, axis=0), which fails
        on scalars ("Invalid reduction dimension 0 for input with 0 dimensions"): shape-[1] logs reduce to the
        scalars Keras expects."""
        if in_multi_worker_mode(self.distribute_strategy):
            return {name: ops.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Before training, Keras takes the first batch of a distributed dataset and reduces it across replicas with
        # strategy.reduce("MEAN"), which fails under MultiWorkerMirroredStrategy for a nested (images, labels)
        # PerReplica batch. The build needs only shapes and dtypes, so the first local replica's batch serves.
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
