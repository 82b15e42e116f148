"""The demo's margin over seeds: `make demo`'s two students (from scratch on 1,000 labeled images; distilled with
the committed ResNet-20 on those and 9,000 unlabeled ones) for seeds 0, 1 and 2, paired by seed.

Run:
    .venv/bin/python experiments/demo_screen.py [--seeds 0 1 2]

Writes experiments/results/demo.{json,md} and plots (the experiment runner's report); the runs go to
saved_models/experiments/demo/ (git-ignored). A killed screen continues where it stopped.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kdkeras.demo import TEACHER, demo_config  # noqa: E402
from kdkeras.experiments import Experiment  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    config = demo_config(RESULTS, 1000, 9000, 10, 0.5, "fashion_mnist", TEACHER, args.seeds)
    config["models_dir"] = os.path.join("saved_models", "experiments")
    experiment = Experiment(config, "full", verbose=2)
    experiment.run()
    report = experiment.report("python experiments/demo_screen.py --seeds " + " ".join(map(str, args.seeds)))
    print(f"\n{report['table']}\n\nreport: {experiment.report_base}.md")


if __name__ == "__main__":
    main()
