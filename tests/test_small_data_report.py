"""experiments/small_data.py's report: the rows, the paired Δ with its tally of seeds, and the size of one test
image in points, from hand-made runs (no training)."""

import os
import sys

import numpy as np
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import small_data  # noqa: E402  (a script, not a package: imported from its folder)


def _run(model, seed, correct, method=None, test_examples=360):
    return {
        "model": model,
        "method": method,
        "seed": seed,
        "params": 1000,
        "test_accuracy": correct / test_examples,
        "test_examples": test_examples,
        "val_accuracy": [0.5, 0.9],
        "train_loss": [1.0, 0.5],
        "seconds": 1.0,
    }


def _state(runs):
    return {
        "dataset": "digits",
        "epochs": 2,
        "command": "python experiments/small_data.py",
        "machine": "m",
        "runs": runs,
    }


def test_the_report_counts_seeds_above_level_and_below_and_says_what_one_image_is_worth(tmp_path):
    scratch = {0: 350, 1: 352, 2: 351, 3: 349}
    distilled = {0: 352, 1: 351, 2: 351, 3: 353}  # +2, -1, 0, +4 images
    runs = [_run("ds_alexnet", s, c) for s, c in scratch.items()]
    runs += [_run("distilled", s, c, method="kd_t1") for s, c in distilled.items()]
    small_data.write_report(_state(runs), str(tmp_path / "report"))
    text = (tmp_path / "report.md").read_text()

    deltas = np.array([100 * (distilled[s] - scratch[s]) / 360 for s in range(4)])
    low, high = stats.t.interval(0.95, 3, loc=deltas.mean(), scale=stats.sem(deltas))
    assert "The test split has 360 images: one image is 0.28 points of accuracy." in text
    assert (
        f"paired by seed: {deltas.mean():+.2f} points, 95 % CI [{low:+.2f}, {high:+.2f}]; "
        "above on 2, level on 1, below on 1 of 4 seeds; per seed +0.56 (s0), -0.28 (s1), +0.00 (s2), +1.11 (s3)."
    ) in text
    assert "| ds_alexnet | 1,000 |" in text and "| distilled (kd_t1) | 1,000 |" in text
    assert os.path.exists(tmp_path / "report.png")


def test_runs_recorded_before_the_test_size_was_kept_leave_the_note_out():
    runs = [_run("ds_alexnet", 0, 350), _run("distilled", 0, 351, method="kd_t1")]
    del runs[0]["test_examples"], runs[1]["test_examples"]
    assert small_data._test_sample_note(runs) == []
    assert small_data._test_sample_note([_run("ds_alexnet", 0, 350), runs[1]]) == [
        "",
        "The test split has 360 images: one image is 0.28 points of accuracy.",
    ]
