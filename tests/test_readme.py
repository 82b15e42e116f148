"""README.md and docs/: every Python block runs as written (in a scratch folder that sees the committed teachers),
and every page the README links to exists."""

import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import requires_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
BLOCKS = [block for page in PAGES for block in re.findall(r"```python\n(.*?)```", open(page).read(), re.S)]


def test_the_readme_has_python_examples_and_its_links_exist():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert len(re.findall(r"```python\n", readme)) >= 2 and len(readme.splitlines()) <= 250
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert os.path.exists(os.path.join(ROOT, link)), link


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
