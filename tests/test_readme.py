"""README.md: every Python block runs as written (in a scratch folder that sees the committed teacher)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCKS = re.findall(r"```python\n(.*?)```", open(os.path.join(ROOT, "README.md")).read(), re.S)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@requires_fashion_mnist
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_python_block_runs_as_written(index, tmp_path):
    os.makedirs(tmp_path / "saved_models")
    os.symlink(os.path.join(ROOT, "saved_models", "experiments"), tmp_path / "saved_models" / "experiments")
    script = tmp_path / "example.py"
    script.write_text(BLOCKS[index])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
