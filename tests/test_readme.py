"""README.md and docs/: every Python block runs as written (in a scratch folder that sees the committed teachers),
every kdkeras command of a bash block parses (options and values as the CLI takes them), and every page the README
links to exists."""

import glob
import os
import re
import shlex
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


def bash_commands() -> list[tuple[str, list[str]]]:
    """`(page, kdkeras arguments)` of every `kdkeras …` and `python -m kdkeras.experiments …` line of the bash blocks
    of README.md, docs/ and experiments/README.md (continuation lines joined, comments dropped)."""
    pages = [*PAGES, os.path.join(ROOT, "experiments", "README.md")]
    commands = []
    for page in pages:
        for block in re.findall(r"```bash\n(.*?)```", open(page).read(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] in (["kdkeras"], [".venv/bin/kdkeras"]):
                    commands.append((os.path.basename(page), words[1:]))
                elif words[1:3] == ["-m", "kdkeras.experiments"]:
                    commands.append((os.path.basename(page), ["experiment", *words[3:]]))
    return commands


def test_every_documented_command_parses():
    from kdkeras.cli import build_parser

    commands = bash_commands()
    assert len(commands) >= 20 and {words[0] for _, words in commands} >= {"train", "distill", "export", "experiment"}
    parser = build_parser()
    for page, words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{page}: `kdkeras {shlex.join(words)}` does not parse")
