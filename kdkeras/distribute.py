"""Distribution strategies, mixed precision and the batch/learning-rate rule for `tf.distribute`.

One CPU, one host with several GPUs, or several hosts: the same training code runs under any of them. Create the
strategy first — before any other TensorFlow op, which `MultiWorkerMirroredStrategy` requires — then build the
models, the distiller, their optimizers and metrics inside `strategy.scope()`; Keras' `fit` distributes the dataset.

    strategy = get_strategy("auto")
    with strategy.scope():
        student = build_model("ds_alexnet", (28, 28, 1), 10, synchronized_bn=use_synchronized_bn(strategy))
        distiller = Distiller(teacher, student, ...)
        distiller.compile(optimizer=...)
    distiller.fit(dataset)  # batched with the *global* batch size

Strategy names:
    auto: `MirroredStrategy` over all GPUs when more than one is visible, else the default strategy (one device).
    mirrored: `MirroredStrategy` over all local GPUs (or the CPU when there is none).
    multiworker: `MultiWorkerMirroredStrategy` across the hosts named in the `TF_CONFIG` environment variable.
    onedevice: `OneDeviceStrategy` on the first GPU, else the CPU.
    tpu: `TPUStrategy` on the TPU the cluster resolver finds.
"""

from __future__ import annotations

import json
import os

STRATEGIES = ("auto", "mirrored", "multiworker", "onedevice", "tpu")
BATCH_SCALING = ("none", "linear")
PRECISIONS = ("auto", "mixed_float16", "mixed_bfloat16")


def parse_tf_config(text: str | None = None) -> dict:
    """Reads and checks `TF_CONFIG` (default: the environment variable).

    Returns:
        The parsed mapping, with a `cluster` of `chief`/`worker` address lists and the `task` of this process.

    Raises:
        ValueError: a one-line message for a missing, malformed or inconsistent `TF_CONFIG`.
    """
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ValueError(
            "--strategy multiworker needs the TF_CONFIG environment variable: "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG: invalid JSON ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError("TF_CONFIG: expected a JSON object with a 'cluster' mapping")
    cluster, task = config["cluster"], config.get("task")
    jobs = {job: hosts for job, hosts in cluster.items() if job in ("chief", "worker")}
    if not jobs:
        raise ValueError(f"TF_CONFIG: the cluster names no 'worker' or 'chief' job, got {sorted(cluster)}")
    for job, hosts in cluster.items():
        if not isinstance(hosts, list) or not all(isinstance(h, str) and ":" in h for h in hosts):
            raise ValueError(f"TF_CONFIG: cluster.{job} must be a list of 'host:port' strings, got {hosts!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"TF_CONFIG: at most one chief, got {len(cluster['chief'])}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f"TF_CONFIG: task.type must be one of the cluster's jobs {sorted(cluster)}, got {task!r}")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(
            f"TF_CONFIG: task.index {index!r} out of range for {len(cluster[task['type']])} {task['type']}(s)"
        )
    return config


def get_strategy(name: str = "auto", devices: list[str] | None = None):
    """The `tf.distribute` strategy called `name`.

    Args:
        name: one of `STRATEGIES`.
        devices: devices of a `mirrored` strategy (default: all GPUs, or the CPU); e.g. `["/cpu:0", "/cpu:1"]` for
            two logical CPU devices in tests.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown name, a bad `TF_CONFIG`, or no TPU.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}'; choose one of: {', '.join(STRATEGIES)}")
    import tensorflow as tf

    if name == "multiworker":
        parse_tf_config()  # A clear error before TensorFlow's own, which is a long traceback.
        # Collective ops must be configured before the runtime starts: nothing else may touch TensorFlow first.
        # RING collectives over gRPC work everywhere; for GPUs, AUTO picks NCCL.
        return tf.distribute.MultiWorkerMirroredStrategy()
    # Physical, not logical, devices: listing logical ones would start the runtime.
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "onedevice":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"--strategy tpu: no TPU found ({' '.join(str(error).split())[:200]})") from None
    return tf.distribute.TPUStrategy(resolver)


def num_replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def use_synchronized_bn(strategy, choice: str = "auto") -> bool:
    """Whether batch normalization should synchronize its statistics across replicas.

    Args:
        strategy: the run's strategy.
        choice: `"auto"` (on when the strategy has more than one replica), `"on"` or `"off"`.
    """
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"synchronized BN must be auto, on or off, got {choice!r}")
    return choice == "on" or (choice == "auto" and num_replicas(strategy) > 1)


def scale_batch_and_lr(batch_size: int, lr: float, replicas: int, rule: str = "none") -> tuple[int, float]:
    """The global batch size and peak learning rate for `replicas` replicas.

    Args:
        batch_size: `--batch-size` as given.
        lr: `--lr` as given.
        replicas: `strategy.num_replicas_in_sync`.
        rule: `"none"`: `batch_size` is the global batch and `lr` is kept, so N replicas compute the same updates as
            one device (each replica gets `batch_size / N` examples). `"linear"`: `batch_size` is the batch *per
            replica*; the global batch is `batch_size × N` and the learning rate `lr × N` (the linear scaling rule,
            Goyal et al., "Accurate, Large Minibatch SGD", 2017): N times fewer steps per epoch, a different but
            comparable optimization path.

    Returns:
        `(global batch size, learning rate)`.
    """
    if rule not in BATCH_SCALING:
        raise ValueError(f"unknown batch scaling '{rule}'; choose one of: {', '.join(BATCH_SCALING)}")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if rule == "linear":
        return batch_size * replicas, lr * replicas
    return batch_size, lr


def precision_policy(choice: str = "auto") -> str:
    """The Keras mixed-precision policy for `--mixed-precision`.

    Args:
        choice: `"auto"` (float16 on a GPU, bfloat16 on a CPU or TPU), or a policy name.

    Returns:
        `"mixed_float16"` or `"mixed_bfloat16"`.
    """
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision '{choice}'; choose one of: {', '.join(PRECISIONS)}")
    if choice != "auto":
        return choice
    import tensorflow as tf

    # float16 needs loss scaling but runs on every CUDA GPU's tensor cores; bfloat16 is the CPU's and TPU's format.
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def set_precision(choice: str | None) -> str:
    """Sets Keras' global dtype policy (`None`: float32) and returns its name. Set it before building models."""
    import keras

    policy = "float32" if choice is None else precision_policy(choice)
    keras.config.set_dtype_policy(policy)
    return policy


def worker_role(strategy) -> tuple[bool, int]:
    """`(is_chief, task index)` of this process; a single-host strategy is always the chief.

    The chief is the `chief` task if the cluster has one, else worker 0. Only the chief writes the outputs
    (models, reports, TensorBoard logs); every worker still runs the whole program, as collectives need them all.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, index = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and index == 0), index


def auto_shard_data(dataset):
    """Datasets built from in-memory arrays cannot be sharded by file: shard by data (each worker takes every N-th
    batch), instead of TensorFlow's default AUTO policy that tries files first and warns."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def local_tf_configs(num_workers: int) -> list[str]:
    """`TF_CONFIG` values for `num_workers` worker processes on this machine (127.0.0.1, free ports): try a
    multi-worker run on one host, as the tests and `experiments/distributed_throughput.py` do.

    Returns:
        One JSON string per worker; worker 0 is the chief.
    """
    import socket

    sockets = [socket.socket() for _ in range(num_workers)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        cluster = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:  # Released just before the workers bind them: a small race, acceptable on a test machine.
        for s in sockets:
            s.close()
    return [
        json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})
        for index in range(num_workers)
    ]
