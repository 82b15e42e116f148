"""Accuracy, size and speed of a teacher and a student in every deployment form, on Fashion-MNIST.

Run (after `make demo`, which trains the two models):
    .venv/bin/python experiments/deployment.py --teacher saved_models/demo/teacher.keras \\
        --student saved_models/demo/student_distilled.keras

For each model: Keras; TFLite float32, float16, dynamic-range int8, full int8; magnitude-pruned to 50 % and 80 %
(fine-tuned with distillation from the teacher, `--prune-epochs` on `--train-examples` images) then full int8.
Accuracy on the full test set; latency per image at batch 1 with 1 thread (median of 50 runs after warm-up).
Writes experiments/results/deployment.{json,md,png}; the exported files go to `--work-dir`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from kdkeras import artifacts, compression  # noqa: E402
from kdkeras.benchmark import benchmark_file  # noqa: E402
from kdkeras.data import load_dataset  # noqa: E402
from kdkeras.export import QUANTIZATIONS, TFLiteModel, accuracy_of, representative_images, tflite_bytes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def measure(label: str, path: str, predict, test) -> dict:
    row = benchmark_file(path, threads=1, runs=50)
    return {
        "model": label,
        "accuracy": accuracy_of(predict, test),
        "kb": row["bytes"] / 1024,
        "gzip_kb": row["gzip_bytes"] / 1024,
        "latency_ms": row["latency_ms_batch1"],
    }


def rows_for(role: str, path: str, teacher, test, train, representative, args) -> list[dict]:
    model = artifacts.load_model(path)
    rows = [measure(f"{role}: Keras", path, lambda x: np.argmax(model.predict_on_batch(x), -1), test)]
    for quantize in QUANTIZATIONS:
        out = os.path.join(args.work_dir, f"{role}_{quantize}.tflite")
        with artifacts.atomic_path(out) as tmp, open(tmp, "wb") as f:
            f.write(tflite_bytes(model, quantize, representative))
        name = {"none": "float32"}.get(quantize, quantize)
        rows.append(measure(f"{role}: TFLite {name}", out, TFLiteModel(out).predict, test))
    for sparsity in (0.5, 0.8):
        pruned, _ = compression.fine_tune(
            model, teacher, train, "prune", epochs=args.prune_epochs, lr=1e-4, sparsity=sparsity
        )
        out = os.path.join(args.work_dir, f"{role}_pruned{int(sparsity * 100)}_int8.tflite")
        with artifacts.atomic_path(out) as tmp, open(tmp, "wb") as f:
            f.write(compression.tflite_from_tf_keras(pruned, "int8", representative))
        rows.append(measure(f"{role}: pruned {int(sparsity * 100)} % + int8", out, TFLiteModel(out).predict, test))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--prune-epochs", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=10000)
    parser.add_argument("--work-dir", default=os.path.join("saved_models", "deployment"))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    test, info = load_dataset("fashion_mnist", "test", 256)
    train, _ = load_dataset("fashion_mnist", "train", 128, augment_images=True, max_examples=args.train_examples)
    representative = representative_images(train, 200, info.input_shape)
    teacher = artifacts.load_model(args.teacher)
    rows = rows_for("teacher", args.teacher, teacher, test, train, representative, args)
    rows += rows_for("student", args.student, teacher, test, train, representative, args)

    command = "python experiments/deployment.py " + " ".join(sys.argv[1:])
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU; latency with 1 thread, batch 1"
    lines = [
        "# Deployment forms on Fashion-MNIST",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Accuracy on the full test set ({info.num_examples} images).",
        "",
        "| model | test accuracy | size (KB) | gzip (KB) | latency (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['accuracy']:.4f} | {r['kb']:.0f} | {r['gzip_kb']:.0f} | {r['latency_ms']:.3f} |"
        )
    artifacts.write_text(os.path.join(RESULTS, "deployment.md"), "\n".join(lines) + "\n")
    artifacts.write_json(
        os.path.join(RESULTS, "deployment.json"), {"command": command, "machine": machine, "rows": rows}
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for role, marker in (("teacher", "o"), ("student", "s")):
        mine = [r for r in rows if r["model"].startswith(role)]
        ax.scatter([r["kb"] for r in mine], [100 * r["accuracy"] for r in mine], marker=marker, label=role)
        for r in mine:
            ax.annotate(r["model"].split(": ")[1], (r["kb"], 100 * r["accuracy"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("file size (KB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Deployment forms ({machine})", fontsize=8)
    ax.legend()
    fig.tight_layout()
    artifacts.save_figure(fig, os.path.join(RESULTS, "deployment.png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
