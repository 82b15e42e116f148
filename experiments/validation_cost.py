"""Is the teacher's work on the validation split done once per run? Wall time of a cached distillation run against
the same student from scratch plus the cache's own precompute, alternating the two runs in one process.

Run (about 20 minutes on 2 cores with the defaults, the committed ResNet-56 teaching 2,000 images for 30 epochs):
    .venv/bin/python experiments/validation_cost.py [--epochs 30] [--max-train-examples 2000] [--rounds 1]

Target (the cost issue): the distillation run takes at most 1.5 × (scratch run + cache precompute). Before the
validation logits were computed once per run, the teacher predicted all 6,000 validation images again in every
epoch. Writes experiments/results/validation_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from kdkeras import artifacts  # noqa: E402
from kdkeras.models import build_model  # noqa: E402
from kdkeras.reporting import machine_text  # noqa: E402
from kdkeras.teacher_cache import TeacherCache  # noqa: E402
from kdkeras.training import TrainConfig, distill, set_seed, train_classifier  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TEACHER = os.path.join("saved_models", "experiments", "fashion_mnist", "full", "teacher-resnet56.keras")


def one_round(teacher, config: TrainConfig) -> dict:
    """Scratch, then the cache's precompute, then the cached distillation run (a fresh cache folder each round)."""
    set_seed(config.seed)
    start = time.perf_counter()
    train_classifier(build_model("ds_alexnet", (28, 28, 1), 10, width=0.5), config)
    scratch = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        TeacherCache.prepare(teacher, config, root, log=lambda _: None)
        precompute = time.perf_counter() - start
        set_seed(config.seed)
        start = time.perf_counter()
        distill(teacher, build_model("ds_alexnet", (28, 28, 1), 10, width=0.5), config, teacher_cache=root)
        distilled = time.perf_counter() - start  # The cache is found and reused: this is the run itself.
    return {"scratch_s": scratch, "precompute_s": precompute, "distill_s": distilled,
            "ratio": distilled / (scratch + precompute)}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-train-examples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--teacher", default=TEACHER)
    args = parser.parse_args(argv)
    teacher = artifacts.load_model(args.teacher)
    config = TrainConfig(epochs=args.epochs, max_train_examples=args.max_train_examples, verbose=0, seed=0)
    rounds = [one_round(teacher, config) for _ in range(args.rounds)]
    command = f"python experiments/validation_cost.py --epochs {args.epochs} --max-train-examples " \
              f"{args.max_train_examples} --rounds {args.rounds}"  # fmt: skip
    record = {"command": command, "machine": machine_text(), "config": dataclasses.asdict(config), "rounds": rounds,
              "teacher": args.teacher, "keras": keras.__version__}  # fmt: skip
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "validation_cost.json"), "w") as f:
        json.dump(record, f, indent=1)
    lines = [
        "# The teacher's validation work, once per run", "", f"`{command}` on {record['machine']}.", "",
        "| round | scratch (s) | cache precompute (s) | cached distillation (s) | ratio (target ≤ 1.5) |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {i} | {r['scratch_s']:.0f} | {r['precompute_s']:.0f} | {r['distill_s']:.0f} | {r['ratio']:.2f} |"
          for i, r in enumerate(rounds)),
    ]  # fmt: skip
    with open(os.path.join(RESULTS, "validation_cost.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
