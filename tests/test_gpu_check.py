"""experiments/gpu_check.py: on a machine without a GPU it says so in one line, exits 0 and writes nothing; its
report and its mixed-precision check work on any device (run here on the CPU)."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "gpu_check.py")


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0
    assert done.stdout.strip().splitlines() == ["gpu_check: no GPU on this machine; nothing measured"]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_the_mixed_precision_check_and_the_table():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import gpu_check

    check = gpu_check.check_mixed_precision(steps=3, tolerance=10.0)
    assert set(check["final_loss"]) == {"float32", "mixed_float16"} and check["passed"]
    rows = [{"step": k, "batch": b, "policy": p, "jit": j, "images_per_s": 1000.0}
            for k in gpu_check.STEPS for b in (128, 1024) for p, j in gpu_check.SETTINGS]  # fmt: skip
    table = gpu_check._markdown("a device", rows, check, "python experiments/gpu_check.py", 1.0)
    assert table.count("| distill_cached |") == 2 and "1,000" in table and "passed" in table
