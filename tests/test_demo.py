"""kdkeras.demo: the whole demo on a tiny budget writes its models, the int8 export and the table."""

import json
import os

import pytest
from conftest import requires_fashion_mnist

from kdkeras.demo import TEACHER, format_table, run_demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo's own teacher and regime, on a tiny budget: seconds, not minutes.
TINY = {"labeled_examples": 300, "unlabeled_examples": 300, "student_epochs": 1, "teacher": os.path.join(ROOT, TEACHER),
        "training": {"max_validation_examples": 300, "max_test_examples": 500}}  # fmt: skip


def test_format_table():
    rows = [
        {"model": "t", "params": 1234, "flops": 2.5e6, "test_accuracy": 0.91234, "file_kb": 10.2, "train_seconds": 3.4},
        {"model": "s", "params": 10, "flops": 1e5, "test_accuracy": 0.5, "file_kb": 1.0, "train_seconds": None},
    ]
    lines = format_table(rows).splitlines()
    assert lines[2] == "| t | 1,234 | 2.5 | 0.9123 | 10 | 3 |"
    assert lines[3] == "| s | 10 | 0.1 | 0.5000 | 1 | – |"


@pytest.mark.slow
@requires_fashion_mnist
def test_tiny_demo_writes_everything_and_a_second_run_reuses_it(tmp_path, capsys):
    rows = run_demo(str(tmp_path), **TINY)
    assert [row["model"].split(" (")[0] for row in rows] == [
        "teacher",
        "student from scratch",
        "distilled student",
        "distilled student, TFLite int8",
    ]
    for name in ("teacher.keras", "student_scratch.keras", "student_distilled.keras", "student_distilled_int8.tflite"):
        assert os.path.exists(tmp_path / name)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["rows"]) == 4 and "total wall time" in results["note"]
    assert {row["test_examples"] for row in rows} == {500} and "a seeded sample of 500 test images" in results["note"]
    assert "| distilled student, TFLite int8 |" in (tmp_path / "results.md").read_text()
    assert rows[0]["params"] > 8 * rows[2]["params"] and rows[0]["train_seconds"] is None  # Trained beforehand.
    distilled_record = json.loads((tmp_path / "demo" / "full" / "distilled-seed0.json").read_text())
    assert distilled_record["spec"]["train_config"]["unlabeled_examples"] == 300
    # The demo is an experiment: the runner's paired report is written too, and a second run trains nothing.
    report = json.loads((tmp_path / "demo.json").read_text())
    assert [row["name"] for row in report["rows"]] == ["teacher", "scratch", "distilled"]
    distilled = next(row for row in report["rows"] if row["name"] == "distilled")
    assert distilled["delta_mean"] == pytest.approx(rows[2]["test_accuracy"] - rows[1]["test_accuracy"])
    capsys.readouterr()
    again = run_demo(str(tmp_path), **TINY)
    out = capsys.readouterr().out
    assert "teacher: " in out and "evaluating" not in out and out.count("done already") == 2
    assert [row["test_accuracy"] for row in again] == [row["test_accuracy"] for row in rows]


def test_the_demo_says_where_its_teacher_should_be(tmp_path):
    with pytest.raises(ValueError, match="run the demo from the repository's root folder, or pass --teacher"):
        run_demo(str(tmp_path), teacher=str(tmp_path / "missing.keras"))


def test_the_demo_refuses_fewer_labeled_images_than_a_batch(tmp_path):
    with pytest.raises(ValueError, match="--labeled-examples must be at least the batch size, 128; got 3"):
        run_demo(str(tmp_path), labeled_examples=3)
