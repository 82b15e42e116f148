"""Does a multi-exit student's early exit hold on device? Its LiteRT cascade (float32 and int8) against Keras.

Run (after a multi-exit row of experiments/fashion_mnist.yaml has saved its student, e.g. `kdkeras experiment
experiments/fashion_mnist.yaml --budget full --rows tskd_exits_w1 --seeds 0`):
    .venv/bin/python experiments/cascade.py \\
        --model saved_models/experiments/fashion_mnist/full/tskd_exits_w1-seed0.keras --seed 0

The threshold is chosen on the run's validation split (the 10 % carve-out of its seed) as `kdkeras export --cascade`
chooses it: the cheapest whose accuracy there is within 0.3 points of the full student's. The cascade is exported
once per form (`kdkeras.cascade.export_cascade`; int8 calibrated on 200 training images, each segment on the
features the segments before it produce), run segment after segment in the LiteRT interpreter on the full test split
as an app would (`kdkeras.cascade.Cascade`), and compared with the Keras early exit at the same threshold. Latency:
the segments up to each exit, batch 1, 1 thread, median of 50 runs after warm-up (`kdkeras.benchmark`).
Writes experiments/results/cascade.{json,md,png}; the segments go to --work-dir.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kdkeras import artifacts  # noqa: E402
from kdkeras.benchmark import benchmark_cascade  # noqa: E402
from kdkeras.cascade import Cascade, export_cascade  # noqa: E402
from kdkeras.data import load_dataset  # noqa: E402
from kdkeras.early_exit import exit_report  # noqa: E402
from kdkeras.export import representative_images  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
FORM_NAMES = {"none": "float32", "int8": "int8"}


def run_form(model, folder: str, quantize: str, threshold: float, representative, test) -> dict:
    """Exports one form of the cascade, runs it on the test split and times each exit."""
    export_cascade(model, folder, threshold, quantize, representative if quantize == "int8" else None)
    return {
        "quantize": quantize,
        **Cascade(folder).evaluate(test),
        "exits": [
            {
                "exit": row["exit"],
                "mflops": row["flops"] / 1e6,
                "kb": row["bytes"] / 1024,
                "latency_ms": row["latency_ms_batch1"],
            }
            for row in benchmark_cascade(folder, threads=1, runs=50)
        ],
    }


def markdown(result: dict) -> str:
    keras_point = result["keras"]
    lines = [
        "# A multi-exit student on device: its LiteRT cascade against the Keras early exit",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}  ",
        f"Model: `{result['model']}`; threshold {result['threshold']:g}, chosen on the validation split of seed "
        f"{result['seed']}; accuracy on the full test split ({result['test_images']} images).",
        "",
        "| form | test accuracy | Δ vs Keras early exit (points) | mean MFLOPs per image | images leaving per exit |",
        "|---|---:|---:|---:|---|",
        f"| Keras, full student (final exit) | {result['keras_full_accuracy']:.4f} | | "
        f"{keras_point['full_mflops']:.2f} | |",
        f"| Keras early exit | {keras_point['accuracy']:.4f} | | {keras_point['mflops']:.2f} | |",
    ]
    for form in result["forms"]:
        delta = 100 * (form["accuracy"] - keras_point["accuracy"])
        lines.append(
            f"| LiteRT cascade, {FORM_NAMES[form['quantize']]} | {form['accuracy']:.4f} | {delta:+.2f} | "
            f"{form['mean_mflops']:.2f} | {' / '.join(map(str, form['leaving_at_each_exit']))} |"
        )
    forms = " | ".join(f"{FORM_NAMES[f['quantize']]}: ms, KB" for f in result["forms"])
    lines += ["", "Latency to reach each exit (the segments up to it, batch 1, 1 thread, median of 50 runs):", "",
              f"| exit | cumulative MFLOPs | {forms} |", "|---|---:|" + "---:|" * len(result["forms"])]  # fmt: skip
    for k, first in enumerate(result["forms"][0]["exits"]):
        cells = " | ".join(f"{f['exits'][k]['latency_ms']:.3f}, {f['exits'][k]['kb']:.0f}" for f in result["forms"])
        lines.append(f"| {first['exit']} | {first['mflops']:.2f} | {cells} |")
    return "\n".join([*lines, "", "![latency per exit](cascade.png)", ""])


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for form, marker in zip(result["forms"], "os", strict=False):
        axes.plot([e["mflops"] for e in form["exits"]], [e["latency_ms"] for e in form["exits"]], f"-{marker}",
                  label=f"{FORM_NAMES[form['quantize']]}: test accuracy {form['accuracy']:.4f}")  # fmt: skip
        for e in form["exits"]:
            axes.annotate(e["exit"], (e["mflops"], e["latency_ms"]), fontsize=7, textcoords="offset points",
                          xytext=(3, 3))  # fmt: skip
    axes.set_xlabel("cumulative MFLOPs to reach the exit")
    axes.set_ylabel("latency, batch 1, 1 thread (ms)")
    axes.set_title(f"LiteRT cascade, threshold {result['threshold']:g} ({result['machine']})", fontsize=8)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    artifacts.save_figure(figure, path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a multi-exit student (.keras)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed: its validation carve-out")
    parser.add_argument("--work-dir", default=os.path.join("saved_models", "cascade"))
    args = parser.parse_args()
    model = artifacts.load_model(args.model)
    test, info = load_dataset("fashion_mnist", "test", 256)
    validation, _ = load_dataset("fashion_mnist", "validation", 256, seed=args.seed)
    train, _ = load_dataset("fashion_mnist", "train", 256, seed=args.seed, shuffle=True)
    report = exit_report(model, test, validation)
    chosen = report["chosen"]
    representative = representative_images(train, 200, info.input_shape)
    forms = [run_form(model, os.path.join(args.work_dir, quantize), quantize, chosen["threshold"], representative, test)
             for quantize in ("none", "int8")]  # fmt: skip
    result = {
        "command": "python experiments/cascade.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU",
        "model": args.model, "seed": args.seed, "threshold": chosen["threshold"],
        "test_images": sum(forms[0]["leaving_at_each_exit"]),
        "keras": chosen, "keras_full_accuracy": report["exits"]["final"]["accuracy"], "keras_exits": report["exits"],
        "forms": forms,
    }  # fmt: skip
    artifacts.write_json(os.path.join(RESULTS, "cascade.json"), result)
    artifacts.write_text(os.path.join(RESULTS, "cascade.md"), markdown(result))
    plot(result, os.path.join(RESULTS, "cascade.png"))
    print(markdown(result))


if __name__ == "__main__":
    main()
