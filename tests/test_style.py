"""The code passes ruff's lint and format checks (configured in ruff.toml), so CI keeps the style."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUFF = os.path.join(os.path.dirname(sys.executable), "ruff")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    if not os.path.exists(RUFF):
        pytest.fail(f"ruff not installed beside {sys.executable}: run make install")
    result = subprocess.run(
        [RUFF, *command, "kdkeras", "tests", "experiments"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
