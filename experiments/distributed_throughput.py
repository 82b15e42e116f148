"""Distillation-step throughput under tf.distribute on this machine: one device, MirroredStrategy over two logical
CPU devices, and MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1.

Every configuration runs in its own process (logical devices and collectives must be configured before
TensorFlow starts). The distiller is alexnet → ds_alexnet with a stage5 hint, the global batch the same in all three.
Writes `experiments/results/distributed_throughput.{json,md,png}`.

    .venv/bin/python experiments/distributed_throughput.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODES = ("one_device", "mirrored_2_logical_cpus", "multiworker_2_processes")


def measure(mode: str, steps: int, warmup: int, batch_size: int) -> dict:
    """Runs `fit` for `warmup + steps` steps in this process and times the last `steps`."""
    import tensorflow as tf

    if mode == "mirrored_2_logical_cpus":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kdkeras.distribute import get_strategy, worker_role

    strategy = {
        "one_device": lambda: tf.distribute.get_strategy(),
        "mirrored_2_logical_cpus": lambda: get_strategy("mirrored", ["/cpu:0", "/cpu:1"]),
        "multiworker_2_processes": lambda: get_strategy("multiworker"),
    }[mode]()
    import keras
    import numpy as np

    from kdkeras.distiller import Distiller
    from kdkeras.distribute import auto_shard_data
    from kdkeras.models import build_model

    synchronized = strategy.num_replicas_in_sync > 1
    keras.utils.set_random_seed(0)
    with strategy.scope():
        teacher = build_model("alexnet", (28, 28, 1), 10)
        student = build_model("ds_alexnet", (28, 28, 1), 10, synchronized_bn=synchronized)
        distiller = Distiller(
            teacher,
            student,
            ["ce", "kd", {"name": "hint", "pairs": [["stage5", "stage5"]]}],
            synchronized_bn=synchronized,
        )
        distiller.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    n = batch_size * 8
    images = rng.integers(0, 256, (n, 28, 28, 1)).astype("uint8")
    labels = rng.integers(0, 10, n)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch_size, drop_remainder=True)
    data = auto_shard_data(data.map(lambda x, y: (tf.cast(x, "float32"), y)).prefetch(2))

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == warmup - 1:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    distiller.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
    return {
        "mode": mode,
        "replicas": int(strategy.num_replicas_in_sync),
        "chief": worker_role(strategy)[0],
        "global_batch": batch_size,
        "steps": steps,
        "seconds": clock.seconds,
        "images_per_second": steps * batch_size / clock.seconds,
    }


def run_mode(mode: str, args) -> dict:
    """Runs one configuration in fresh processes and returns the chief's measurement."""
    command = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--batch-size", str(args.batch_size)]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if mode != "multiworker_2_processes":
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=1800).stdout
        return json.loads(output.strip().splitlines()[-1])
    from kdkeras.distribute import local_tf_configs

    workers = [
        subprocess.Popen(command, env={**env, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE, text=True)
        for tf_config in local_tf_configs(2)
    ]
    try:
        outputs = [worker.communicate(timeout=1800)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    results = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    return next(r for r in results if r["chief"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.warmup, args.batch_size)))
        return
    rows = [run_mode(mode, args) for mode in MODES]
    for row in rows:
        print(f"{row['mode']}: {row['images_per_second']:.0f} images/s ({row['replicas']} replica(s))")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdkeras import artifacts
    from kdkeras.reporting import machine, machine_text

    command = f"python experiments/distributed_throughput.py --steps {args.steps} --batch-size {args.batch_size}"
    host = machine_text(machine())
    artifacts.write_json(
        os.path.join(RESULTS, "distributed_throughput.json"), {"command": command, "machine": host, "rows": rows}
    )
    table = ["| configuration | replicas | global batch | images/s |", "|---|---:|---:|---:|"]
    table += [f"| {r['mode']} | {r['replicas']} | {r['global_batch']} | {r['images_per_second']:.0f} |" for r in rows]
    note = (
        "Distiller step alexnet → ds_alexnet with a stage5 hint (synchronized BN with 2 replicas), one timing of "
        f"{args.steps} steps after {args.warmup} warm-up steps. All configurations share the same "
        "2 CPU cores: the two logical devices and the two worker processes split them, so this measures the "
        "overhead of the strategies here, not a speed-up (which needs more devices or hosts)."
    )
    artifacts.write_text(
        os.path.join(RESULTS, "distributed_throughput.md"),
        f"# Distillation step under tf.distribute\n\nCommand: `{command}`  \nMachine: {host}\n\n"
        + "\n".join(table) + f"\n\n{note}\n",
    )  # fmt: skip
    figure, axes = plt.subplots(figsize=(6, 3.2))
    axes.barh([r["mode"] for r in rows], [r["images_per_second"] for r in rows])
    axes.set_xlabel("images/s (distill step)")
    axes.set_title("tf.distribute on 2 CPU cores")
    figure.tight_layout()
    artifacts.save_figure(figure, os.path.join(RESULTS, "distributed_throughput.png"))


if __name__ == "__main__":
    main()
