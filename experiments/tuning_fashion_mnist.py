"""A real Keras Tuner search on Fashion-MNIST, then the best hyperparameters against the defaults at a larger budget.

Run (after `make demo`, whose teacher it distils from):
    .venv/bin/python experiments/tuning_fashion_mnist.py --teacher saved_models/demo/teacher.keras

1. `kdkeras tune` (random search, `--trials` trials × `--trial-epochs` epochs on `--trial-examples` images);
2. `kdkeras distill` twice with the same larger budget (`--final-epochs` × `--final-examples`, same seed): once with
   the defaults (T=4, α=β=0.5, γ=1, hint, lr 1e-3), once with `--config best_hparams.json`.
Writes experiments/results/tuning.{json,md} and copies the search's trials table and plot beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from kdkeras import artifacts

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def run(argv: list[str]) -> float:
    print("$ " + " ".join(argv), flush=True)
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--trial-epochs", type=int, default=2)
    parser.add_argument("--trial-examples", type=int, default=5000)
    parser.add_argument("--final-epochs", type=int, default=5)
    parser.add_argument("--final-examples", type=int, default=20000)
    parser.add_argument("--work-dir", default=os.path.join("runs", "tuning_experiment"))
    args = parser.parse_args()
    kdkeras = [sys.executable, "-m", "kdkeras"]
    search_dir = os.path.join(args.work_dir, "search")
    search_seconds = run([
        *kdkeras, "tune", "--teacher", args.teacher, "--tuner", "random", "--max-trials", str(args.trials),
        "--epochs-per-trial", str(args.trial_epochs), "--max-train-examples", str(args.trial_examples),
        "--directory", search_dir, "--overwrite", "--verbose", "0",
    ])  # fmt: skip
    reports = os.path.join(search_dir, "tskd")
    best = json.loads(open(os.path.join(reports, "best_hparams.json")).read())
    trials = json.loads(open(os.path.join(reports, "trials.json")).read())["trials"]

    final = {}
    for label, extra in (("defaults", []), ("tuned", ["--config", os.path.join(reports, "best_hparams.json")])):
        out = os.path.join(args.work_dir, f"student_{label}.keras")
        seconds = run([
            *kdkeras, "distill", "--teacher", args.teacher, "--epochs", str(args.final_epochs),
            "--max-train-examples", str(args.final_examples), "--logdir", "none", "--verbose", "2",
            "--out", out, *extra,
        ])  # fmt: skip
        record = json.loads(open(artifacts.config_path(out)).read())
        final[label] = {
            "test_accuracy": record["test_accuracy"],
            "distillation": record["distillation"],
            "lr": record["train_config"]["lr"],
            "seconds": seconds,
        }

    accuracies = [t["val_accuracy"] for t in trials]
    command = "python experiments/tuning_fashion_mnist.py " + " ".join(sys.argv[1:])
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU"
    summary = {
        "command": command,
        "machine": machine,
        "search": {
            "trials": len(trials),
            "epochs_per_trial": args.trial_epochs,
            "train_examples": args.trial_examples,
            "wall_seconds": search_seconds,
            "best": best,
            "objective_min": min(accuracies),
            "objective_max": max(accuracies),
        },
        "final_budget": {"epochs": args.final_epochs, "train_examples": args.final_examples},
        "final": final,
    }
    os.makedirs(RESULTS, exist_ok=True)
    artifacts.write_json(os.path.join(RESULTS, "tuning.json"), summary)
    shutil.copy(os.path.join(reports, "trials.md"), os.path.join(RESULTS, "tuning_trials.md"))
    shutil.copy(os.path.join(reports, "objective.png"), os.path.join(RESULTS, "tuning_objective.png"))
    lines = [
        "# Tuning on Fashion-MNIST",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        f"Search: {len(trials)} random trials × {args.trial_epochs} epochs on {args.trial_examples} images, "
        f"{search_seconds / 60:.1f} min; student validation accuracy from {min(accuracies):.4f} to "
        f"{max(accuracies):.4f} (all trials: `tuning_trials.md`, plot: `tuning_objective.png`).",
        "",
        f"Best: {json.dumps(best)}",
        "",
        f"Larger budget ({args.final_epochs} epochs on {args.final_examples} images, seed 0), test accuracy:",
        "",
        "| hyperparameters | test accuracy | time (s) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v['test_accuracy']:.4f} | {v['seconds']:.0f} |" for k, v in final.items()]
    artifacts.write_text(os.path.join(RESULTS, "tuning.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
