"""`kdkeras benchmark`: size and speed of Keras and TFLite models on this machine.

Latency is per image at batch 1, throughput is images per second at batch 32; both are the median of `runs` timed
repetitions after warm-up repetitions, with the stated number of threads.
"""

from __future__ import annotations

import gzip
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from kdkeras import artifacts
from kdkeras.export import TFLiteModel
from kdkeras.profiling import count_flops, count_params
from kdkeras.reporting import markdown_table


def _median_seconds(call, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _speed(run_batch, input_shape, runs: int) -> dict:
    rng = np.random.default_rng(0)
    one = rng.uniform(0, 255, (1, *input_shape)).astype(np.float32)
    many = rng.uniform(0, 255, (32, *input_shape)).astype(np.float32)
    latency = _median_seconds(lambda: run_batch(one), runs)
    batch_seconds = _median_seconds(lambda: run_batch(many), max(3, runs // 5))
    return {"latency_ms_batch1": 1000 * latency, "images_per_second_batch32": 32 / batch_seconds}


def benchmark_file(path: str, threads: int, runs: int = 50) -> dict:
    """Size and speed of one `.keras` or `.tflite` file.

    Returns:
        `{"file", "kind", "bytes", "gzip_bytes", "latency_ms_batch1", "images_per_second_batch32", "threads"}`,
        plus `params` and `flops` for Keras models.
    """
    with open(path, "rb") as f:
        content = f.read()
    row = {"file": path, "bytes": len(content), "gzip_bytes": len(gzip.compress(content, 9)), "threads": threads}
    if path.endswith(".keras"):
        model = artifacts.load_model(path)
        forward = tf.function(lambda x: model(x, training=False))
        row.update({"kind": "keras", "params": count_params(model), "flops": count_flops(model)})
        input_shape = tuple(model.inputs[0].shape[1:])
        row.update(_speed(lambda x: forward(x).numpy(), input_shape, runs))
    elif path.endswith(".tflite"):
        model = TFLiteModel(path, num_threads=threads)
        row.update({"kind": "tflite"})
        row.update(_speed(model.logits, model.input_shape, runs))
    else:
        raise ValueError(f"{path}: benchmark takes .keras and .tflite files")
    return row


def benchmark_cascade(folder: str, threads: int, runs: int = 50) -> list[dict]:
    """Per exit of an exported cascade (`kdkeras export --cascade`): the size of the segments up to it and the time
    an image takes to reach it, running those segments one after another as an app does (`kdkeras.cascade`).

    Returns:
        One `benchmark_file`-like row per exit, shallow to deep, with `exit` and the cumulative `flops`.
    """
    import json

    from kdkeras.cascade import MANIFEST

    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    paths = [os.path.join(folder, name) for name in manifest["segments"]]
    segments = [TFLiteModel(path, num_threads=threads) for path in paths]

    def up_to(k: int):
        def run(images):
            for segment in segments[: k + 1]:
                outputs = segment.run(images)
                images = outputs[-1]  # The stage's features feed the next segment.
            return outputs[0]

        return run

    rows = []
    for k, name in enumerate(manifest["exits"]):
        content = b"".join(open(path, "rb").read() for path in paths[: k + 1])
        rows.append({
            "file": f"{os.path.basename(os.path.normpath(folder))}:{name}", "kind": f"cascade {manifest['quantize']}",
            "exit": name, "flops": manifest["mflops"][k] * 1e6, "bytes": len(content),
            "gzip_bytes": len(gzip.compress(content, 9)), "threads": threads,
            **_speed(up_to(k), segments[0].input_shape, runs),
        })  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["file", "kind", "params", "MFLOPs", "size (KB)", "gzip (KB)", "latency b=1 (ms)", "images/s b=32",
              "threads"]  # fmt: skip
    cells = [
        [
            os.path.basename(r["file"]), r["kind"], f"{r['params']:,}" if "params" in r else "",
            f"{r['flops'] / 1e6:.1f}" if "flops" in r else "", f"{r['bytes'] / 1024:.0f}",
            f"{r['gzip_bytes'] / 1024:.0f}", f"{r['latency_ms_batch1']:.2f}", f"{r['images_per_second_batch32']:.0f}",
            r["threads"],
        ]
        for r in rows
    ]  # fmt: skip
    return markdown_table(header, cells, numeric=[False, False] + [True] * 7)
