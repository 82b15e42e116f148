"""Cost and training throughput of the models and of the distiller step on this machine.

Run:
    .venv/bin/python experiments/throughput.py [--steps 30] [--batch-size 128]

Writes experiments/results/throughput.{json,md,png}. Throughput is images per second over `--steps` timed steps
after warm-up steps (graph tracing excluded), median of `--repeats` runs, on random 28×28×1 images (the speed of a
step does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kdkeras import artifacts  # noqa: E402
from kdkeras.distiller import Distiller  # noqa: E402
from kdkeras.models import build_model  # noqa: E402
from kdkeras.profiling import count_flops, count_params  # noqa: E402
from kdkeras.training import compile_classifier  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
SHAPE = (28, 28, 1)


def _images_per_second(step, batch, steps: int, repeats: int) -> float:
    for _ in range(3):  # Warm-up: tracing and first-call allocations.
        step(*batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            result = step(*batch)
        keras.ops.convert_to_numpy(tf.nest.flatten(result)[0])  # Wait for the last step to finish.
        rates.append(steps * len(batch[0]) / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(steps: int, batch_size: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch_size, *SHAPE)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, batch_size).astype(np.int32))
    rows = []

    def train_step_rate(model):
        return _images_per_second(model.train_on_batch, (x, y), steps, repeats)

    for name, kwargs in (("alexnet", {}), ("ds_alexnet", {}), ("ds_alexnet", {"width": 0.5}), ("resnet", {})):
        model = build_model(name, SHAPE, 10, **kwargs)
        compile_classifier(model, "adam")
        label = name + (f" (width {kwargs['width']})" if "width" in kwargs else "")
        forward = tf.function(lambda images, _, m=model: m(images, training=False))
        rows.append(
            {
                "what": f"{label}: train step",
                "params": count_params(model),
                "flops": count_flops(model),
                "images_per_second": train_step_rate(model),
            }
        )
        rows.append({"what": f"{label}: forward (inference)", "images_per_second": _images_per_second(
            forward, (x, y), steps, repeats)})  # fmt: skip

    teacher, student = build_model("alexnet", SHAPE, 10), build_model("ds_alexnet", SHAPE, 10)
    for label, pairs in (
        ("distiller step, logits only (alexnet → ds_alexnet)", []),
        ("distiller step, logits + stage5 hint", [["stage5", "stage5"]]),
        ("distiller step, logits + stage3/stage5 hints", [["stage3", "stage3"], ["stage5", "stage5"]]),
    ):
        distiller = Distiller(teacher, student, ["ce", "kd"] + ([{"name": "hint", "pairs": pairs}] if pairs else []))
        distiller.compile("adam")
        rows.append({"what": label, "images_per_second": train_step_rate(distiller)})
    collaborative = Distiller(teacher, student, ["ce", "kd", {"name": "hint", "pairs": [["stage5", "stage5"]]}],
                              collaborative=True)  # fmt: skip
    collaborative.compile("adam")
    rows.append({"what": "distiller step, collaborative + stage5 hint", "images_per_second": train_step_rate(
        collaborative)})  # fmt: skip
    return rows


def write_results(rows: list[dict], command: str, machine: str) -> None:
    lines = [
        "# Throughput on this machine",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        "| what | parameters | MFLOPs/image | images/s |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        params = f"{row['params']:,}" if "params" in row else ""
        flops = f"{row['flops'] / 1e6:.1f}" if "flops" in row else ""
        lines.append(f"| {row['what']} | {params} | {flops} | {row['images_per_second']:.0f} |")
    os.makedirs(RESULTS, exist_ok=True)
    artifacts.write_text(os.path.join(RESULTS, "throughput.md"), "\n".join(lines) + "\n")
    artifacts.write_json(
        os.path.join(RESULTS, "throughput.json"), {"command": command, "machine": machine, "rows": rows}
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [row["what"] for row in rows]
    ax.barh(labels, [row["images_per_second"] for row in rows], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("images / second")
    ax.set_title(f"kdkeras throughput ({machine})", fontsize=9)
    fig.tight_layout()
    artifacts.save_figure(fig, os.path.join(RESULTS, "throughput.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    machine = (
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, batch {args.batch_size}"
    )
    rows = measure(args.steps, args.batch_size, args.repeats)
    write_results(rows, "python " + " ".join(["experiments/throughput.py", *sys.argv[1:]]), machine)
    for row in rows:
        print(f"{row['what']:<55s} {row['images_per_second']:8.0f} images/s")


if __name__ == "__main__":
    main()
