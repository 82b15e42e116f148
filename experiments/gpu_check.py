"""The GPU path, measured once on the first GPU: throughput of the student's train step and of the live and cached
distill steps in float32, `mixed_float16` and with XLA (`jit_compile`), at batch 128 and 1024, and whether a short
`mixed_float16` distillation reaches the float32 run's loss.

Run (about 5 minutes on one GPU; on a machine without a GPU it says so in one line and exits 0):
    .venv/bin/python experiments/gpu_check.py

Writes experiments/results/gpu.json and gpu.md. Images per second over timed steps after warm-up steps (tracing
and XLA compilation excluded), median of 3 repeats, on random 28×28×1 images held on the device: the step's cost
does not depend on the pixel values. The settings are measured one after another, alternating batch sizes, in one
process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPE = (28, 28, 1)
SETTINGS = (("float32", False), ("mixed_float16", False), ("float32", True), ("mixed_float16", True))
STEPS = ("student", "distill_live", "distill_cached")


def _rate(step, batch, steps: int) -> float:
    # throughput.py's measurement (warm-up steps for tracing and XLA compilation, then the median of 3 repeats).
    from throughput import _images_per_second

    return _images_per_second(step, batch, steps, repeats=3)


def _models(policy: str):
    import keras

    from kdkeras.models import build_model

    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    teacher = build_model("resnet", SHAPE, 10, depth=20)
    student = build_model("ds_alexnet", SHAPE, 10, width=0.5)
    return teacher, student


def _step(kind: str, policy: str, jit: bool, x, y, logits):
    """`(train_on_batch, batch)` for one kind of step under one setting."""
    import keras

    from kdkeras.distiller import Distiller
    from kdkeras.training import compile_classifier

    teacher, student = _models(policy)
    if kind == "student":
        compile_classifier(student, "adam")
        student.compile(student.optimizer, student.loss, jit_compile=jit)
        return student.train_on_batch, (x, y)
    distiller = Distiller(teacher, student, ["ce", "kd"])
    distiller.compile(keras.optimizers.Adam(2e-3), jit_compile=jit)
    if kind == "distill_cached":
        return distiller.train_on_batch, (x, {"labels": y, "teacher_logits": logits})
    return distiller.train_on_batch, (x, y)


def measure_throughput(steps: int) -> list[dict]:
    import numpy as np

    rows = []
    rng = np.random.default_rng(0)
    for batch_size in (128, 1024):
        x = tf.constant(rng.uniform(0, 255, (batch_size, *SHAPE)).astype(np.float32))
        y = tf.constant(rng.integers(0, 10, batch_size).astype(np.int32))
        logits = tf.constant(rng.normal(size=(batch_size, 10)).astype(np.float32))
        for policy, jit in SETTINGS:
            for kind in STEPS:
                step, batch = _step(kind, policy, jit, x, y, logits)
                rate = _rate(step, batch, steps)
                rows.append({"step": kind, "batch": batch_size, "policy": policy, "jit": jit, "images_per_s": rate})
                print(f"{kind:15s} batch {batch_size:4d} {policy:13s} jit={jit!s:5s} {rate:10.0f} images/s", flush=True)
    import keras

    keras.config.set_dtype_policy("float32")
    return rows


def check_mixed_precision(steps: int = 200, tolerance: float = 0.05) -> dict:
    """The same short distillation (same data, same initial weights) in float32 and mixed_float16: the final
    training losses (mean of the last 20 steps) agree within `tolerance`, relative."""
    import keras
    import numpy as np

    from kdkeras.distiller import Distiller

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 2048).astype(np.int32)
    # Learnable images: each class a brightness band plus noise.
    images = (rng.uniform(0, 80, (2048, *SHAPE)) + 17 * labels[:, None, None, None]).astype(np.float32)
    finals = {}
    for policy in ("float32", "mixed_float16"):
        teacher, student = _models(policy)
        distiller = Distiller(teacher, student, ["ce", "kd"])
        distiller.compile(keras.optimizers.Adam(1e-3))
        losses = []
        for step in range(steps):
            start = (step * 128) % 2048
            logs = distiller.train_on_batch(images[start : start + 128], labels[start : start + 128], return_dict=True)
            losses.append(float(logs["loss"]))
        finals[policy] = float(np.mean(losses[-20:]))
    keras.config.set_dtype_policy("float32")
    relative = abs(finals["mixed_float16"] - finals["float32"]) / abs(finals["float32"])
    return {"steps": steps, "final_loss": finals, "relative_difference": relative, "tolerance": tolerance,
            "passed": bool(relative <= tolerance)}  # fmt: skip


def _markdown(device: str, rows: list[dict], check: dict, command: str, seconds: float) -> str:
    lines = [
        "# The GPU path",
        "",
        f"`{command}` on {device}, {seconds:.0f} s. Images per second (median of 3 timed repeats after warm-up).",
        "",
        "| step | batch | float32 | mixed_float16 | float32 + XLA | mixed_float16 + XLA |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in STEPS:
        for batch in (128, 1024):
            cells = [
                next(r["images_per_s"] for r in rows if (r["step"], r["batch"], r["policy"], r["jit"]) == (
                    kind, batch, policy, jit))
                for policy, jit in SETTINGS
            ]  # fmt: skip
            lines.append(f"| {kind} | {batch} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    lines += [
        "",
        f"mixed_float16 against float32, {check['steps']} distill steps from the same weights: final loss "
        f"{check['final_loss']['mixed_float16']:.4f} against {check['final_loss']['float32']:.4f} "
        f"(relative difference {check['relative_difference']:.3f}, tolerance {check['tolerance']}): "
        f"{'passed' if check['passed'] else 'FAILED'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    parser.add_argument("--out", default=RESULTS, help="folder of gpu.json and gpu.md")
    args = parser.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("gpu_check: no GPU on this machine; nothing measured")
        return 0
    tf.config.set_visible_devices(gpus[0], "GPU")
    details = tf.config.experimental.get_device_details(gpus[0])
    device = details.get("device_name", gpus[0].name)
    start = time.perf_counter()
    rows = measure_throughput(args.steps)
    check = check_mixed_precision()
    seconds = time.perf_counter() - start
    command = "python experiments/gpu_check.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    record = {"device": device, "details": {k: str(v) for k, v in details.items()}, "tensorflow": tf.__version__,
              "rows": rows, "mixed_precision_check": check, "seconds": seconds, "command": command}  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(args.out, "gpu.md"), "w") as f:
        f.write(_markdown(device, rows, check, command, seconds))
    print(f"gpu_check: wrote {args.out}/gpu.json and gpu.md ({seconds:.0f} s)")
    return 0 if check["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
