"""Runs that survive, through the real command line in subprocesses: SIGKILL and SIGINT mid-run then resume,
a kill during a save, and seeded determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import idx_dataset_and_teacher

from kdkeras import artifacts
from kdkeras.models import build_model

pytestmark = pytest.mark.slow
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def kdkeras(*args):
    return [sys.executable, "-m", "kdkeras", *args]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    dataset, teacher = idx_dataset_and_teacher(str(root), n_train=1200, n_test=100, classes=10)
    return root, dataset, teacher


def distill_command(root, dataset, teacher, name):
    out = str(root / f"{name}.keras")
    argv = kdkeras(
        "distill", "--teacher", teacher, "--width", "0.25", "--dataset", dataset, "--epochs", "3", "--batch-size", "40",
        "--checkpoint-steps", "10", "--logdir", "none", "--verbose", "0", "--out", out,
    )  # fmt: skip
    return argv, out, out.removesuffix(".keras") + ".backup"


def wait_for_checkpoint(backup_dir, process, epoch, timeout=240):
    """Waits until a mid-epoch checkpoint of `epoch` (0-based count of finished epochs) is on disk."""
    metadata = os.path.join(backup_dir, "training_metadata.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            with open(metadata) as f:
                state = json.load(f)
            if state["epoch"] == epoch and state["batch"] > 0:
                return state
        except (OSError, ValueError):
            pass  # Not written yet, or being written.
        time.sleep(0.05)
    process.kill()
    pytest.fail("no checkpoint appeared in time")


def kill_then_rerun(process, argv, out):
    """SIGKILLs a run, checks that it published nothing, and runs the same command again to completion."""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not os.path.exists(out)
    rerun = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    return rerun


def test_sigint_stops_at_a_step_then_sigkill_mid_epoch_and_the_run_resumes_each_time(setup):
    """One run stopped twice: SIGINT after a step of epoch 1 (a clean stop, status 130, one line), then, resumed,
    SIGKILL mid-epoch 2 (nothing published); the same command again finishes it with the whole history."""
    root, dataset, teacher = setup
    argv, out, backup_dir = distill_command(root, dataset, teacher, "interrupted")
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(backup_dir, process, epoch=0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("kdkeras: interrupted: SIGINT: stopped at epoch 1, step ")
    assert last.endswith("Run the same command again to resume.")
    assert os.path.exists(os.path.join(backup_dir, "latest.weights.h5")) and not os.path.exists(out)

    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = wait_for_checkpoint(backup_dir, process, epoch=1)
    rerun = kill_then_rerun(process, argv, out)
    assert f"Resuming from checkpoint in {backup_dir}: {state['epoch']} epoch(s) done" in rerun.stdout
    history = json.loads(open(out.removesuffix(".keras") + ".config.json").read())["history"]
    assert len(history["loss"]) == 3  # The whole history, though no process trained all of it.
    assert artifacts.load_model(out).output.shape[-1] == 10
    assert not os.path.exists(backup_dir)


SAVE_LOOP = """
import sys, keras
from kdkeras import artifacts
from kdkeras.models import build_model
model = build_model("alexnet", (28, 28, 1), 10)
while True:
    artifacts.save_model(model, sys.argv[1])
    print("saved", flush=True)
"""


def test_sigkill_during_save_leaves_a_loadable_model(tmp_path):
    target = str(tmp_path / "model.keras")
    process = subprocess.Popen(
        [sys.executable, "-c", SAVE_LOOP, target], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "saved"
    time.sleep(0.3)  # Somewhere inside a later save (each takes ~0.1–0.3 s).
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    model = artifacts.load_model(target)  # The last complete save, never a truncated file.
    assert model.count_params() == build_model("alexnet", (28, 28, 1), 10).count_params()


def test_same_seed_gives_identical_weights_and_accuracy(setup):
    root, dataset, _ = setup
    outputs = []
    for run in ("a", "b"):
        out = str(root / f"seeded_{run}.keras")
        argv = kdkeras(
            "train", "--model", "ds_alexnet", "--width", "0.25", "--dataset", dataset, "--epochs", "1",
            "--max-train-examples", "200", "--seed", "7", "--logdir", "none", "--verbose", "0", "--out", out,
        )  # fmt: skip
        result = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs.append(out)
    first, second = (artifacts.load_model(path) for path in outputs)
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    accuracies = [json.loads(open(p.removesuffix(".keras") + ".config.json").read())["test_accuracy"] for p in outputs]
    assert accuracies[0] == accuracies[1]


def test_compress_fine_tuning_resumes_after_sigkill(setup):
    """Pruning to 0.5 through the command line, killed after its first epoch and resumed; the student has depthwise
    kernels, which tfmot leaves dense and the report shows (test_compression checks 0.8 in process)."""
    root, dataset, teacher = setup
    student = str(root / "to_compress.keras")
    keras.utils.set_random_seed(0)
    artifacts.save_model(build_model("ds_alexnet", (28, 28, 1), 10, width=0.25), student)
    out = str(root / "compressed.tflite")
    backup_dir = str(root / "compressed.backup")
    argv = kdkeras(
        "compress", "--model", student, "--teacher", teacher, "--dataset", dataset, "--prune", "0.5",
        "--epochs", "3", "--batch-size", "20", "--max-train-examples", "200", "--max-drop", "100", "--out", out,
    )  # fmt: skip
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not os.path.exists(os.path.join(backup_dir, "checkpoint")):  # Written after the first epoch.
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.05)
    rerun = kill_then_rerun(process, argv, out)
    assert f"Resuming from checkpoint in {backup_dir}: 1 epoch(s) done" in rerun.stdout
    assert os.path.exists(out) and not os.path.exists(backup_dir)
    report = json.loads(open(out + ".verify.json").read())["compression"]
    pruned = [v for k, v in report["kernel_sparsity"].items() if "depthwise" not in k]
    assert pruned and all(abs(v - 0.5) < 0.02 for v in pruned)  # The pruning schedule continued to its target.
    depthwise = [v for k, v in report["kernel_sparsity"].items() if "depthwise" in k]
    assert depthwise and all(v < 0.05 for v in depthwise)  # Not pruned by tfmot, and reported as such.
