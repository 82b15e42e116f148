"""Tests for kdkeras.experiments: config validation, running rows, skipping finished ones, the report."""

import copy
import json
import os
import shutil

import keras
import numpy as np
import pytest
import yaml
from conftest import write_idx_folder

from kdkeras import cli, terms
from kdkeras.evaluation import decode_classes, encode_classes
from kdkeras.experiments import Experiment, check_config, load_config, paired_delta, paired_examples
from kdkeras.experiments.config import distills
from kdkeras.experiments.report import (
    _baseline,
    _plot,
    _summary,
    _table,
    _teacher_label,
    _val_curve_panels,
    reaches_target,
    rows_reaching_target,
)
from kdkeras.reporting import distinct_styles

# End-to-end runs: in `make test` (and CI), not in `make test-fast`.
pytestmark = pytest.mark.slow


def tiny_config(root, **overrides) -> dict:
    """Two rows on a generated 3-class dataset with small models: seconds per row."""
    dataset = f"idx:{write_idx_folder(os.path.join(root, 'idx'), n_train=80, n_test=30, classes=3)}"
    config = {
        "name": "tiny",
        "dataset": dataset,
        "seeds": [0],
        "results_dir": os.path.join(root, "results"),
        "models_dir": os.path.join(root, "models"),
        "teacher": {"model": "alexnet", "options": {"width": 0.25}},
        "student": {"model": "ds_alexnet", "options": {"width": 0.25}},
        "training": {"batch_size": 16, "augment": False},
        "budgets": {"quick": {"epochs": 1, "teacher_epochs": 1}, "full": {"epochs": 2, "teacher_epochs": 2}},
        "rows": [
            {"name": "scratch", "method": "scratch"},
            {"name": "tskd", "method": "tskd", "temperature": 2.0},
        ],
    }
    config.update(overrides)
    return config


def write_config(root, config) -> str:
    path = os.path.join(root, "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def run(path, *extra):
    return cli.main(["experiment", path, "--budget", "quick", "--verbose", "0", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny experiment (teacher, scratch, tskd) run once for the module; a test that starts from a finished
    experiment takes a copy (`copy_of`) rather than training the same three models again."""
    root = tmp_path_factory.mktemp("finished")
    config = tiny_config(str(root), target_delta=0.008)
    assert run(write_config(str(root), config)) == 0
    return root, config


def copy_of(finished, tmp_path, **overrides) -> dict:
    """The finished experiment's results and models copied under `tmp_path`, and its config pointing there. The
    dataset stays where it is: a row's settings name it, so the copied rows count as done."""
    root, config = finished
    for kind in ("results", "models"):
        shutil.copytree(root / kind, tmp_path / kind)
    copied = {**copy.deepcopy(config), "results_dir": str(tmp_path / "results"), "models_dir": str(tmp_path / "models")}
    return {**copied, **overrides}


def test_runner_writes_row_jsons_and_the_report_then_skips_finished_rows(finished, tmp_path, capsys):
    root, config = finished  # Run by the fixture, from nothing.
    rows_dir = root / "results" / "tiny" / "quick"
    records = {name: json.loads((rows_dir / f"{name}.json").read_text()) for name in ("teacher", "scratch-seed0")}
    records["tskd-seed0"] = json.loads((rows_dir / "tskd-seed0.json").read_text())
    for record in records.values():
        assert len(record["history"]["loss"]) == 1 and len(record["history"]["val_accuracy"]) == 1
        assert 0.0 <= record["test_accuracy"] <= 1.0 and record["test_examples"] == 30
        assert record["params"] > 0 and record["flops"] > 0 and record["train_seconds"] > 0
        assert record["machine"]["cpu_cores"] == os.cpu_count()
    assert [t["name"] for t in records["tskd-seed0"]["spec"]["row"]["terms"]] == ["ce", "dist", "hint"]
    assert records["scratch-seed0"]["model"] == records["tskd-seed0"]["model"]

    # The saved student is the one the JSON describes: its test accuracy is recomputed here.
    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.evaluation import evaluate_classifier

    student = artifacts.load_model(root / "models" / "tiny" / "quick" / "tskd-seed0.keras")
    test, info = load_dataset(config["dataset"], "test", 256)
    assert evaluate_classifier(student, test, info)["accuracy"] == pytest.approx(records["tskd-seed0"]["test_accuracy"])

    report = json.loads((root / "results" / "tiny-quick.json").read_text())
    assert [row["name"] for row in report["rows"]] == ["teacher", "scratch", "tskd"]
    assert report["missing"] == []
    by_name = {row["name"]: row for row in report["rows"]}
    assert by_name["tskd"]["accuracy_mean"] == pytest.approx(records["tskd-seed0"]["test_accuracy"])
    assert by_name["tskd"]["baseline"] == "scratch" and by_name["tskd"]["delta_ci95"] is None  # One seed: no CI.
    assert by_name["tskd"]["delta_mean"] == pytest.approx(
        records["tskd-seed0"]["test_accuracy"] - records["scratch-seed0"]["test_accuracy"]
    )
    assert report["target_delta"] == 0.008
    assert report["reach_target"] == (["tskd"] if by_name["tskd"]["delta_mean"] >= 0.008 else [])
    markdown = (root / "results" / "tiny-quick.md").read_text()
    assert "| tskd | ds_alexnet |" in markdown and "python -m kdkeras.experiments" in markdown
    reached = "reached by tskd" if report["reach_target"] else "reached by no row"
    assert (
        f"Target: Δ vs scratch ≥ +0.80 points in the mean and on every seed, all seeds finished: {reached}." in markdown
    )
    for plot in ("accuracy_vs_params", "val_curves"):
        assert (root / "results" / f"tiny-quick-{plot}.png").stat().st_size > 1000

    # Re-running (a copy) skips everything; nothing is rewritten.
    path = write_config(str(tmp_path), copy_of(finished, tmp_path))
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    mtimes = {p: p.stat().st_mtime_ns for p in rows_dir.iterdir()}
    capsys.readouterr()
    assert run(path) == 0
    out = capsys.readouterr().out
    assert "teacher: reusing" in out and out.count("skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in rows_dir.iterdir()} == mtimes


def test_changing_a_row_reruns_only_that_row(finished, tmp_path, capsys):
    config = copy_of(finished, tmp_path)
    config["rows"][1]["temperature"] = 3.0
    config["rows"][0]["label"] = "renamed only"  # A label is not a setting: no re-run.
    path = write_config(str(tmp_path), config)
    capsys.readouterr()
    assert run(path) == 0
    out = capsys.readouterr().out
    assert "scratch seed 0: done already" in out
    assert "tskd seed 0: tskd ds_alexnet" in out
    record = json.loads((tmp_path / "results" / "tiny" / "quick" / "tskd-seed0.json").read_text())
    assert record["spec"]["row"]["terms"][1]["temperature"] == 3.0


def test_rows_recorded_with_a_later_schema_key_at_its_default_still_count(finished, tmp_path, capsys):
    """`teacher_row` came after rows were recorded: a spec with or without `teacher_row: null` is the same spec."""
    config = copy_of(finished, tmp_path)
    json_path = tmp_path / "results" / "tiny" / "quick" / "tskd-seed0.json"
    record = json.loads(json_path.read_text())
    assert "teacher_row" not in record["spec"]["row"]
    record["spec"]["row"]["teacher_row"] = None
    json_path.write_text(json.dumps(record))
    config["rows"][1]["seeds"] = [0]  # Which seeds a row runs does not change its seed-0 result either.
    path = write_config(str(tmp_path), config)
    capsys.readouterr()
    assert run(path, "--rows", "tskd") == 0
    assert "tskd seed 0: done already" in capsys.readouterr().out


def test_a_row_reads_the_teacher_cache_unless_it_asks_for_the_live_teacher(finished, tmp_path, capsys):
    """A logits-only row fills and reads the teacher-output cache; `teacher_cache: false` runs the teacher each step
    (nothing cached, nothing to refill when the row resumes on another machine), and the spec says which."""
    config = copy_of(finished, tmp_path, rows=[{"name": "dist", "method": "dist"}])  # The trained teacher.
    path = write_config(str(tmp_path), config)
    assert run(path) == 0
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    cache_root = tmp_path / "models" / "tiny" / "quick" / "teacher_cache"
    cached = json.loads((rows_dir / "dist-seed0.json").read_text())
    assert cached["spec"]["teacher_logits"] == "cache" and "teacher_cache" not in cached["spec"]["row"]
    (fill,) = os.listdir(cache_root)
    shutil.rmtree(cache_root / fill)

    config["rows"][0]["teacher_cache"] = False  # A setting: the row runs again, now with the live teacher.
    write_config(str(tmp_path), config)
    capsys.readouterr()
    assert run(path) == 0
    assert "dist seed 0: dist ds_alexnet" in capsys.readouterr().out
    live = json.loads((rows_dir / "dist-seed0.json").read_text())
    assert live["spec"]["teacher_logits"] == "live" and live["spec"]["row"]["teacher_cache"] is False
    assert os.listdir(cache_root) == []

    # Back to the default, written out: the cached row again, and the same spec as leaving the key unset.
    config["rows"][0]["teacher_cache"] = True
    write_config(str(tmp_path), config)
    assert run(path) == 0
    again = json.loads((rows_dir / "dist-seed0.json").read_text())
    assert again["spec"]["teacher_logits"] == "cache" and len(os.listdir(cache_root)) == 1
    del config["rows"][0]["teacher_cache"]
    write_config(str(tmp_path), config)
    capsys.readouterr()
    assert run(path) == 0
    assert "dist seed 0: done already" in capsys.readouterr().out


def test_rows_option_runs_only_the_named_rows(tmp_path):
    path = write_config(str(tmp_path), tiny_config(str(tmp_path)))
    assert run(path, "--rows", "scratch") == 0
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    # Only the scratch row: no teacher is trained for rows that do not use one.
    assert sorted(p.name for p in rows_dir.iterdir()) == ["scratch-seed0.json"]
    report = json.loads((tmp_path / "results" / "tiny-quick.json").read_text())
    assert report["missing"] == ["tskd"]


def test_seeds_option_narrows_what_runs_not_what_the_report_covers(tmp_path):
    path = write_config(str(tmp_path), tiny_config(str(tmp_path), seeds=[0, 1]))
    assert run(path, "--rows", "scratch", "--seeds", "0") == 0
    assert run(path, "--rows", "scratch", "--seeds", "1") == 0
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    assert sorted(p.name for p in rows_dir.iterdir()) == ["scratch-seed0.json", "scratch-seed1.json"]
    # The second command's report is the whole table: both seeds, not only the one it ran.
    report = json.loads((tmp_path / "results" / "tiny-quick.json").read_text())
    assert [row["seeds"] for row in report["rows"] if row["name"] == "scratch"] == [[0, 1]]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(epoch=3), "unknown key(s) epoch"),
        (lambda c: c["rows"][1].update(temprature=2.0), "rows[1]: unknown key(s) temprature"),
        (lambda c: c["rows"][1].update(temperature=-1), "row 'tskd'.temperature: must be a finite number > 0"),
        (lambda c: c["rows"][1].update(temperature=float("inf")), "row 'tskd'.temperature: must be a finite number"),
        (lambda c: c["rows"][0].update(method="magic"), "row 'scratch'.method: must be one of"),
        (lambda c: c["rows"][0].update(temperature=2.0), "row 'scratch': temperature only apply to distillation rows"),
        (lambda c: c["rows"][1].update(mixed_fraction=2), "row 'tskd'.mixed_fraction: must be at most 1, got 2"),
        (lambda c: c["rows"][0].update(mixed_fraction=0.5), "mixed_fraction only apply to distillation rows"),
        (lambda c: c["rows"][1].update(method="distill"), "method 'distill' needs a 'terms' list"),
        (lambda c: c["rows"][1].update(terms=["ce"]), "a preset method (tskd) takes no term list"),
        (
            lambda c: c["rows"][1].update(method="distill", terms=[{"name": "kd", "temprature": 2}]),
            "row 'tskd': term 'kd':",
        ),
        (lambda c: c["teacher"].update(model="vgg"), "teacher.model: unknown model 'vgg'"),
        (lambda c: c["training"].update(optimizer="lion"), "training.optimizer: must be one of adam, adamw, sgd"),
        (lambda c: c["budgets"]["full"].pop("epochs"), "budgets.full: missing 'epochs'"),
        (lambda c: c.update(budgets={}), "budgets: define at least one of quick, full"),
        (lambda c: c["budgets"]["quick"].update(epochs=0), "budgets.quick.epochs: must be an integer >= 1"),
        (lambda c: c.update(seeds="0"), "seeds: must be a non-empty list of integers"),
        (lambda c: c["rows"].append({"name": "scratch", "method": "scratch"}), "duplicate or reserved row name(s)"),
        (lambda c: c["rows"][1].update(pairs=[["stage5"]]), "each pair must be [teacher_layer, student_layer]"),
        (lambda c: c["training"].update(warmup_epochs=-1), "training.warmup_epochs: must be a number >= 0"),
        (lambda c: c["teacher"].update(training={"optimizer": "lion"}), "teacher.training.optimizer: must be one"),
        (lambda c: c["rows"][1].update(teacher_row="later"), "row 'tskd'.teacher_row: 'later' is not the name of an"),
        (lambda c: c["rows"][0].update(teacher_row="tskd"), "row 'scratch': teacher_row only apply to distillation"),
        (lambda c: c["rows"][1].update(teacher_mimicry=-1), "row 'tskd'.teacher_mimicry: must be a finite number >= 0"),
        (lambda c: c["rows"][1].update(teacher_lr=float("inf")), "row 'tskd'.teacher_lr: must be a finite number > 0"),
        (lambda c: c["rows"][1].update(teacher_mimicry=float("nan")), "row 'tskd'.teacher_mimicry: must be a finite"),
        (lambda c: c["rows"][1].update(teacher_cache="no"), "row 'tskd'.teacher_cache: must be true or false"),
        (lambda c: c["rows"][0].update(teacher_cache=False), "row 'scratch': teacher_cache only apply to distillation"),
        (lambda c: c["rows"][1].update(teacher="big"), "row 'tskd'.teacher: 'big' is not one of the config's teachers"),
        (lambda c: c["rows"][0].update(teacher="big"), "row 'scratch': teacher only apply to distillation rows"),
        (lambda c: c["rows"][1].update(teacher="big", teacher_row="scratch"), "give either teacher (one of the"),
        (lambda c: c.update(teachers={"big": {"model": "vgg"}}), "teachers.big.model: unknown model 'vgg'"),
        (lambda c: c.update(teachers={"big": {"model": "alexnet", "seed": 0.5}}), "teachers.big.seed: must be an"),
        (lambda c: c.update(teachers={"a/b": {"model": "alexnet"}}), "teachers: must be a name of letters, digits"),
        (lambda c: c.update(teachers=["big"]), "teachers: must be a mapping of name: teacher"),
        (lambda c: c.update(target_delta=0), "target_delta: must be a finite number > 0"),
        (lambda c: c.update(target_delta=0.8 * 100), "target_delta: must be a fraction of accuracy below 1"),
        (
            lambda c: c.update(teachers={"big": {"model": "alexnet"}}, rows=[{"name": "teacher-big", "method": "kd"}]),
            "duplicate or reserved row name(s) teacher-big",
        ),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(tmp_path, capsys, change, message):
    config = tiny_config(str(tmp_path))
    change(config)
    path = write_config(str(tmp_path), config)
    assert run(path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdkeras: error: ") and "\n" not in err
    assert path in err and message in err
    assert not (tmp_path / "results").exists()  # Nothing trained, nothing written.


def test_a_config_needs_only_the_budget_it_is_run_with(tmp_path, capsys):
    config = tiny_config(str(tmp_path))
    del config["budgets"]["full"]
    path = write_config(str(tmp_path), config)
    assert run(path, "--rows", "scratch") == 0
    assert (tmp_path / "results" / "tiny" / "quick" / "scratch-seed0.json").exists()
    capsys.readouterr()
    assert cli.main(["experiment", path, "--budget", "full", "--verbose", "0"]) == 2
    assert capsys.readouterr().err.strip() == "kdkeras: error: tiny: the config has no 'full' budget (it has: quick)"


def test_unknown_row_name_fails_before_training(tmp_path, capsys):
    path = write_config(str(tmp_path), tiny_config(str(tmp_path)))
    assert run(path, "--rows", "scratch,nope") == 2
    assert "unknown row(s) nope; the config has: teacher, scratch, tskd" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_shipped_config_is_valid():
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "experiments", "fashion_mnist.yaml"))
    rows = {row["name"]: row for row in config["rows"]}
    assert {"scratch", "kd", "kd_std", "dkd", "dist", "tskd", "tskd_collab"} <= set(rows)
    assert [name for name, row in rows.items() if row.get("collaborative")] == ["tskd_collab"]
    assert config["student"] == {"model": "ds_alexnet", "options": {"width": 0.5}}
    assert config["budgets"]["full"]["seeds"] == [0, 1, 2]
    # The width-1.0 block compares like with like: its DIST row's baseline is its own scratch row.
    assert rows["scratch_w1"]["options"] == rows["dist_w1"]["options"] == {"width": 1.0}
    assert rows["scratch_w1_4x"]["options"] == rows["dist_w1_4x"]["options"] == {"width": 1.0}
    assert rows["scratch_w1_4x"]["epochs_multiplier"] == rows["dist_w1_4x"]["epochs_multiplier"] == 4
    # The kd_t1 rows measure the kd_t1 preset that `--method kd_t1` runs, term for term.
    assert rows["kd_t1"]["terms"] == rows["kd_t1_2x"]["terms"] == rows["kd_t1_4x"]["terms"] == terms.preset("kd_t1")
    assert rows["dist_2x"]["epochs_multiplier"] == rows["kd_t1_2x"]["epochs_multiplier"] == 2


def test_a_row_taught_by_another_rows_model_trains_that_row_first(tmp_path, capsys):
    """A teacher assistant: `teacher_row` names an earlier row whose model (same seed) is the teacher. Running the
    assistant row alone trains its teacher row first; the distillation then sees exactly that model."""
    config = tiny_config(str(tmp_path))
    config["rows"] = [
        {"name": "wide", "method": "scratch", "options": {"width": 0.5}},
        {"name": "assisted", "method": "kd", "teacher_row": "wide"},
    ]
    path = write_config(str(tmp_path), config)
    assert run(path, "--rows", "assisted") == 0
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    assert sorted(p.name for p in rows_dir.iterdir()) == ["assisted-seed0.json", "wide-seed0.json"]
    wide, assisted = (json.loads((rows_dir / f"{n}-seed0.json").read_text()) for n in ("wide", "assisted"))
    # The frozen teacher's validation accuracy in the assisted run is the wide row's final one: the same model.
    assert assisted["history"]["val_teacher_accuracy"][0] == pytest.approx(wide["history"]["val_accuracy"][-1])
    # The report names the row as the assistant's teacher, with its size against the student's.
    report = {row["name"]: row for row in json.loads((tmp_path / "results" / "tiny-quick.json").read_text())["rows"]}
    assert report["assisted"]["teacher"] == "wide"
    assert report["assisted"]["teacher_ratio"]["params"] == pytest.approx(wide["params"] / assisted["params"])
    assert report["assisted"]["teacher_ratio"]["params"] > 1
    capsys.readouterr()
    assert run(path, "--rows", "assisted") == 0
    assert "assisted seed 0: done already" in capsys.readouterr().out
    config["rows"][0]["options"] = {"width": 0.75}  # Its teacher row changes: both run again.
    write_config(str(tmp_path), config)
    assert run(path, "--rows", "assisted") == 0
    out = capsys.readouterr().out
    assert "wide seed 0: scratch" in out and "assisted seed 0: kd" in out


def test_a_row_learns_from_a_named_teacher_trained_once_beside_the_experiments(finished, tmp_path, capsys):
    """`teachers` names more teachers; a row with `teacher: NAME` learns from that one, trained first (and only
    when a selected row needs it or `--rows teacher-NAME` asks), listed in the report beside the experiment's."""
    from kdkeras import artifacts

    config = copy_of(finished, tmp_path)
    config["teachers"] = {"big": {"model": "alexnet", "options": {"width": 0.5}}}
    config["rows"].append({"name": "kd_big", "method": "kd", "teacher": "big"})
    path = write_config(str(tmp_path), config)
    rows_dir, models_dir = (tmp_path / kind / "tiny" / "quick" for kind in ("results", "models"))
    before = {p.name for p in rows_dir.iterdir()}
    capsys.readouterr()
    assert run(path, "--rows", "kd_big") == 0
    # The named teacher and the row only: the experiment's teacher is not needed by this row, not even looked at.
    assert {p.name for p in rows_dir.iterdir()} - before == {"kd_big-seed0.json", "teacher-big.json"}
    assert "] teacher:" not in capsys.readouterr().out
    big, kd_big = (json.loads((rows_dir / name).read_text()) for name in ("teacher-big.json", "kd_big-seed0.json"))
    assert big["spec"]["options"] == {"width": 0.5}
    assert (
        big["weights"]
        == kd_big["teacher_weights"]
        == artifacts.weights_digest(artifacts.load_model(models_dir / "teacher-big.keras"))
    )
    # The frozen teacher's validation accuracy in the row is the named teacher's final one: the same model.
    assert kd_big["history"]["val_teacher_accuracy"][0] == pytest.approx(big["history"]["val_accuracy"][-1])

    capsys.readouterr()
    assert run(path) == 0
    out = capsys.readouterr().out
    assert "teacher-big: reusing" in out and "kd_big seed 0: done already" in out and "] teacher: reusing" in out
    report_path = tmp_path / "results" / "tiny-quick.json"
    report = json.loads(report_path.read_text())
    assert [row["name"] for row in report["rows"]] == ["teacher", "teacher-big", "scratch", "tskd", "kd_big"]
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["teacher-big"]["label"] == f"teacher 'big' ({big['model']})"
    assert rows["teacher-big"]["params"] == big["params"] > rows["teacher"]["params"]
    assert rows["teacher-big"]["baseline"] is None and rows["kd_big"]["baseline"] == "scratch"
    # Each distilling row names its own teacher and how many times the student's size it is; scratch has none.
    assert (rows["kd_big"]["teacher"], rows["tskd"]["teacher"], rows["scratch"]["teacher"]) == (
        "teacher-big",
        "teacher",
        None,
    )
    for name, teacher in (("kd_big", "teacher-big"), ("tskd", "teacher")):
        ratio = rows[name]["teacher_ratio"]
        assert ratio["params"] == pytest.approx(rows[teacher]["params"] / rows[name]["params"])
        assert ratio["flops"] == pytest.approx(rows[teacher]["flops"] / rows[name]["flops"])
    assert rows["kd_big"]["teacher_ratio"]["params"] > rows["tskd"]["teacher_ratio"]["params"] > 1
    ratio = rows["kd_big"]["teacher_ratio"]
    markdown = (tmp_path / "results" / "tiny-quick.md").read_text()
    assert f"| teacher-big ({ratio['params']:.1f}×, {ratio['flops']:.1f}×) |" in markdown
    assert report["earlier_teacher"] == {}

    # Another training of the named teacher in the table flags the row that learned from it, and only that one.
    (rows_dir / "teacher-big.json").write_text(json.dumps({**big, "weights": "0" * 64}))
    assert run(path, "--report-only") == 0
    assert json.loads(report_path.read_text())["earlier_teacher"] == {"kd_big": [0]}

    # New settings for the named teacher: `--rows teacher-big` retrains it alone; then only its row runs again.
    config["teachers"]["big"]["options"] = {"width": 0.75}
    write_config(str(tmp_path), config)
    capsys.readouterr()
    assert run(path, "--rows", "teacher-big") == 0
    out = capsys.readouterr().out
    assert "teacher-big: the saved one was trained from other settings; training it again" in out
    assert "teacher:" not in out and "seed 0" not in out
    assert run(path) == 0
    out = capsys.readouterr().out
    assert "kd_big seed 0: kd" in out and "tskd seed 0: done already" in out and "teacher: reusing" in out


def test_rows_are_compared_with_the_scratch_row_of_their_own_length(tmp_path):
    """A 2x-epochs method row pairs with the 2x scratch row; a longer scratch row with the longest shorter one (the
    convergence check: 4x with 2x, 2x with 1x); the standard rows with the standard scratch row; a row of another
    student width with none of them. (The rule alone: the end-to-end runner tests check that reports carry it.)"""
    config = tiny_config(str(tmp_path))
    config["rows"] = [
        {"name": "scratch", "method": "scratch"},
        {"name": "kd", "method": "kd"},
        {"name": "scratch_2x", "method": "scratch", "epochs_multiplier": 2},
        {"name": "kd_2x", "method": "kd", "epochs_multiplier": 2},
        {"name": "scratch_4x", "method": "scratch", "epochs_multiplier": 4},
        {"name": "kd_wide", "method": "kd", "options": {"width": 0.5}},
        # A multi-exit student pairs with its backbone trained alone; another width's backbone pairs with none.
        {"name": "tskd_exits", "method": "tskd_exits", "options": {"exits": ["stage3", "stage4"]}},
        {"name": "byot_wide", "method": "byot", "options": {"width": 0.5, "exits": ["stage4"]}},
    ]
    experiment = Experiment(load_config(write_config(str(tmp_path), config)), "quick", verbose=0)
    rows = experiment.config["rows"]
    scratch_rows = [row for row in rows if row["method"] == "scratch"]
    baselines = {row["name"]: (_baseline(experiment, row, scratch_rows) or {}).get("name") for row in rows}
    expected = {"scratch": None, "kd": "scratch", "scratch_2x": "scratch", "kd_2x": "scratch_2x"}
    expected.update(scratch_4x="scratch_2x", kd_wide=None, tskd_exits="scratch", byot_wide=None)
    assert baselines == expected
    # Which rows learn from a teacher: not scratch, not a student teaching itself (byot's terms read no teacher).
    assert {row["name"] for row in rows if distills(row)} == {"kd", "kd_2x", "kd_wide", "tskd_exits"}


def test_a_multi_exit_row_teaches_itself_without_a_teacher_and_records_every_exit(tmp_path):
    """A `byot` row trains no teacher, is paired with the scratch row of its backbone, and its record holds each
    exit's accuracy and cumulative MFLOPs, the ensemble and the vote, and the early exit chosen on validation."""
    config = tiny_config(str(tmp_path))
    config["rows"] = [
        {"name": "scratch", "method": "scratch"},
        {"name": "byot", "method": "byot", "options": {"exits": ["stage3", "stage4"]}},
    ]
    # Named rows: only the teachers they need are trained (without a selection the table's teacher always is).
    assert run(write_config(str(tmp_path), config), "--rows", "scratch,byot") == 0
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    assert sorted(p.name for p in rows_dir.iterdir()) == ["byot-seed0.json", "scratch-seed0.json"]  # No teacher.
    record = json.loads((rows_dir / "byot-seed0.json").read_text())
    exits = record["exits"]
    assert list(exits["exits"]) == ["exit_stage3", "exit_stage4", "final"]
    costs = [entry["mflops"] for entry in exits["exits"].values()]
    assert costs == sorted(costs) and costs[-1] == pytest.approx(record["flops"] / 1e6, rel=0.05)
    assert exits["exits"]["final"]["accuracy"] == pytest.approx(record["test_accuracy"])
    assert 0.0 <= exits["ensemble_accuracy"] <= 1.0 and 0.0 <= exits["vote_accuracy"] <= 1.0
    assert exits["chosen"]["threshold"] in [point["threshold"] for point in exits["curve"]]
    report = json.loads((tmp_path / "results" / "tiny-quick.json").read_text())
    by_name = {row["name"]: row for row in report["rows"]}
    assert by_name["byot"]["baseline"] == "scratch" and by_name["byot"]["teacher"] is None
    assert by_name["byot"]["delta_mean"] == pytest.approx(
        record["test_accuracy"] - json.loads((rows_dir / "scratch-seed0.json").read_text())["test_accuracy"]
    )
    summary = by_name["byot"]["exit_summary"]
    assert summary["ensemble_accuracy"] == pytest.approx(exits["ensemble_accuracy"])
    assert by_name["scratch"]["exit_summary"] is None
    markdown = (tmp_path / "results" / "tiny-quick.md").read_text()
    assert "Multi-exit students" in markdown and "| byot | 1 | exit_stage3 " in markdown
    assert "- byot (1 seed), against the single-exit students from scratch: scratch " in markdown
    assert (tmp_path / "results" / "tiny-quick-early_exit.png").stat().st_size > 1000


def test_the_exit_summary_is_the_mean_over_seeds():
    from kdkeras.experiments.exit_rows import exit_summary

    def record(final, ensemble, chosen_accuracy, threshold):
        curve = [{"threshold": 0.5, "accuracy": final - 0.01, "mflops": 3.0}, {"threshold": 0.9, "accuracy": final,
                                                                                "mflops": 4.0}]  # fmt: skip
        chosen = {"threshold": threshold, "accuracy": chosen_accuracy, "mflops": 3.0, "full_mflops": 4.0}
        exits = {"exit_stage3": {"accuracy": final - 0.05, "mflops": 2.0}, "final": {"accuracy": final, "mflops": 4.0}}
        return {"exits": {"exits": exits, "ensemble_accuracy": ensemble, "vote_accuracy": ensemble - 0.001,
                          "curve": curve, "chosen": chosen}}  # fmt: skip

    summary = exit_summary([record(0.90, 0.91, 0.89, 0.5), record(0.92, 0.93, 0.91, 0.9)])
    assert summary["exits"]["final"]["accuracy"] == pytest.approx(0.91)
    assert summary["exits"]["exit_stage3"] == {"accuracy": pytest.approx(0.86), "mflops": 2.0}
    assert summary["ensemble_accuracy"] == pytest.approx(0.92) and summary["vote_accuracy"] == pytest.approx(0.919)
    assert summary["curve"][0] == {"threshold": 0.5, "accuracy": pytest.approx(0.90), "mflops": 3.0}
    assert summary["chosen"] == {"thresholds": [0.5, 0.9], "accuracy": pytest.approx(0.90), "mflops": 3.0,
                                 "full_mflops": 4.0}  # fmt: skip
    assert summary["ensemble_accuracies"] == [0.91, 0.93] and summary["vote_accuracies"] == [0.909, 0.929]
    assert exit_summary([{"test_accuracy": 0.9}]) is None
    assert exit_summary([record(0.9, 0.9, 0.9, 0.5), {"test_accuracy": 0.9}]) is None  # Not every seed has exits.


def test_the_early_exit_curve_is_compared_with_each_width_at_its_own_cost():
    from kdkeras.experiments.exit_rows import against_curve, family_lines, width_family

    # Listed out of order: the comparison sorts by cost. Between (2, 0.88) and (4, 0.90), at 3 MFLOPs: 0.89.
    curve = [{"threshold": 0.9, "accuracy": 0.90, "mflops": 4.0}, {"threshold": 0.5, "accuracy": 0.88, "mflops": 2.0}]
    assert against_curve(curve, 3.0, 0.885) == pytest.approx(0.5)  # 100 * (0.89 - 0.885)
    assert against_curve(curve, 4.0, 0.91) == pytest.approx(-1.0)
    assert against_curve(curve, 1.0, 0.80) is None and against_curve(curve, 5.0, 0.95) is None

    def row(name, method, flops, accuracy, epochs=20, model="ds_alexnet", summary=None):
        return {"name": name, "label": name, "method": method, "model": model, "flops": flops, "epochs": epochs,
                "accuracy_mean": accuracy, "params": 1000, "exit_summary": summary,
                "seeds": [0] if name == "scratch_w075" else [0, 1, 2]}  # fmt: skip

    # The report adds the thresholds' extremes to the curve: all images at the first exit, or all at the last.
    exits = {"exit_stage3": {"accuracy": 0.87, "mflops": 1.5}, "final": {"accuracy": 0.905, "mflops": 5.0}}
    multi = row("tskd_exits", "tskd_exits", 5e6, 0.905, summary={"curve": curve, "exits": exits})
    rows = [row("scratch_w1", "scratch", 13e6, 0.92), row("scratch", "scratch", 3e6, 0.885), multi,
            row("dist", "dist", 3e6, 0.89), row("scratch_4x", "scratch", 3e6, 0.92, epochs=80),
            row("resnet", "scratch", 1e6, 0.8, model="resnet"),
            row("scratch_w075", "scratch", 4.5e6, 0.90)]  # fmt: skip
    # Only students from scratch of the same model and schedule, cheapest first.
    assert [r["name"] for r in width_family(rows, multi)] == ["scratch", "scratch_w075", "scratch_w1"]
    # At 4.5 MFLOPs, between (4, 0.90) and the final exit's (5, 0.905): 0.9025.
    assert family_lines(rows) == [
        "- tskd_exits (3 seeds), against the single-exit students from scratch: scratch 0.8850 (3 seeds) at 3.00 "
        "MFLOPs (the curve +0.50 points there); scratch_w075 0.9000 (1 seed) at 4.50 MFLOPs (the curve +0.25 points "
        "there); scratch_w1 0.9200 (3 seeds) at 13.00 MFLOPs (outside the curve's MFLOPs)."
    ]


def test_a_multi_exit_row_is_compared_seed_by_seed_with_scratch_and_the_best_single_exit_distillation():
    from kdkeras.experiments.exit_rows import best_single_exit, comparison_lines

    def row(name, accuracies, seeds=(0, 1, 2), teacher=None, baseline="scratch", summary=None):
        return {"name": name, "label": name, "seeds": list(seeds), "accuracies": accuracies, "teacher": teacher,
                "baseline": baseline, "exit_summary": summary}  # fmt: skip

    summary = {"ensemble_accuracies": [0.905, 0.915], "vote_accuracies": [0.900, 0.910]}
    multi = row("tskd_exits", [0.902, 0.912], seeds=(0, 1), teacher="teacher", summary=summary)
    rows = [
        row("scratch", [0.900, 0.910, 0.920], baseline=None), multi,
        row("dist", [0.903, 0.909, 0.990], teacher="teacher"),  # Best over all seeds, not over seeds 0 and 1.
        row("kd", [0.904, 0.911, 0.900], teacher="teacher"),  # Best over the multi-exit row's seeds: 0.9075.
        row("dkd", [0.990, 0.990], seeds=(0, 2), teacher="teacher"),  # Lacks seed 1: no paired comparison.
        row("kd_2x", [0.990, 0.990, 0.990], teacher="teacher", baseline="scratch_2x"),  # Another budget.
        row("byot", [0.95, 0.95], seeds=(0, 1), baseline="scratch", summary=summary),  # Multi-exit: no rival.
    ]  # fmt: skip
    assert best_single_exit(rows, multi)["name"] == "kd"
    # Final exit: 0.902 - 0.900, 0.912 - 0.910; ensemble +0.5, +0.5; vote 0.0, 0.0 (points). Against kd: -0.2, +0.1.
    assert comparison_lines(rows)[0] == (
        "- tskd_exits (2 seeds), paired by seed, against scratch (0.9050 on the same seeds): final exit +0.20 "
        "(+0.20, +0.20); ensemble +0.50 (+0.50, +0.50); vote +0.00 (+0.00, +0.00), against the best single-exit "
        "distillation of this student and budget, kd (0.9075 on the same seeds): final exit -0.05 (-0.20, +0.10); "
        "ensemble +0.25 (+0.10, +0.40); vote -0.25 (-0.40, -0.10)."
    )
    assert best_single_exit(rows[:2], multi) is None  # Only scratch: the sentence has no second comparison.
    assert comparison_lines(rows[:2]) == [comparison_lines(rows)[0].split(", against the best")[0] + "."]


def test_the_early_exit_plot_has_a_panel_per_budget(tmp_path, monkeypatch):
    from kdkeras import artifacts
    from kdkeras.experiments.exit_rows import plot_early_exit

    summary = {
        "curve": [{"threshold": 0.5, "accuracy": 0.88, "mflops": 2.0}],
        "exits": {"exit_stage3": {"accuracy": 0.87, "mflops": 1.5}, "final": {"accuracy": 0.9, "mflops": 4.0}},
    }

    def row(name, method, epochs, summary=None):
        return {"name": name, "label": name, "method": method, "model": "ds_alexnet", "flops": 4e6, "params": 30000,
                "epochs": epochs, "accuracy_mean": 0.9, "accuracy_std": None, "exit_summary": summary}  # fmt: skip

    rows = [row("scratch", "scratch", 20), row("scratch_2x", "scratch", 40), row("dist", "dist", 20),
            row("dist_4x", "dist", 80), row("tskd", "tskd_exits", 20, summary),
            row("tskd_2x", "tskd_exits", 40, summary)]  # fmt: skip
    saved = []
    monkeypatch.setattr(artifacts, "save_figure", lambda figure, path: saved.append(figure))
    assert plot_early_exit(rows, str(tmp_path / "early_exit.png"))
    panels = saved[0].axes
    assert [axes.get_title() for axes in panels] == ["20 epochs", "40 epochs"]
    labels = [axes.get_legend_handles_labels()[1] for axes in panels]
    # The 80-epoch row has no multi-exit row of its budget: it is in no panel.
    assert "dist (single exit)" in labels[0] and not any("dist_4x" in label for label in sum(labels, []))
    assert "tskd_2x: early exit" in labels[1] and "tskd: early exit" not in labels[1]
    # A curve and a point never share a colour while fewer than ten are drawn.
    handles = dict(zip(labels[0], panels[0].get_legend_handles_labels()[0], strict=True))
    curve, point = handles["tskd: early exit"], handles["dist (single exit)"].lines[0]
    assert curve.get_color() != point.get_color()
    assert not plot_early_exit(rows[:4], str(tmp_path / "none.png"))
    # Past ten curves in one panel a colour comes round again, with another marker: still no two alike.
    many = rows[:1] + [row(f"tskd_{i}", "tskd_exits", 20, summary) for i in range(12)]
    saved.clear()
    assert plot_early_exit(many, str(tmp_path / "many.png"))
    handles, labels = saved[0].axes[0].get_legend_handles_labels()
    curves = [handle for handle, label in zip(handles, labels, strict=True) if label.endswith(": early exit")]
    looks = {(str(curve.get_color()), curve.get_marker()) for curve in curves}
    assert len(curves) == 12 and len(looks) == 12
    assert len({look[0] for look in looks}) == 10  # Colours do repeat: the marker is what tells them apart.


def test_summary_is_mean_and_sample_std_over_seeds():
    records = [
        {
            "test_accuracy": acc,
            "model": "m",
            "params": 10,
            "flops": 20,
            "train_seconds": s,
            "cpu_seconds": 2 * s,
            "history": {"loss": [1, 2]},
            "spec": {"train_config": {"seed": seed}},
            "machine": {},
        }  # fmt: skip
        for seed, acc, s in ((0, 0.90, 10.0), (1, 0.92, 20.0), (2, 0.94, 30.0))
    ]
    row = _summary("kd", "KD", "distill", records)
    # Hand computation: mean 0.92; deviations ±0.02, 0 → sample variance (0.0004 + 0 + 0.0004) / 2 = 0.0004.
    assert row["accuracy_mean"] == pytest.approx(0.92)
    assert row["accuracy_std"] == pytest.approx(0.02)
    assert row["train_seconds_mean"] == pytest.approx(20.0) and row["seeds"] == [0, 1, 2] and row["epochs"] == 2
    row.update(delta_mean=0.015, delta_ci95=[0.005, 0.025], delta_per_seed={"0": 0.01, "1": 0.02})
    expected = (
        "| KD | m | 10 | 0.0 |  | 2 | 0.9200 ± 0.0200 | 3 | +1.50 | [+0.50, +2.50] | +1.00 +2.00 |  |  | 20 | 40 |"
    )
    assert expected in _table([row])
    row.update(teacher="teacher-big", teacher_ratio={"params": 8.26, "flops": 14.04})
    assert "| KD | m | 10 | 0.0 | teacher-big (8.3×, 14.0×) | 2 |" in _table([row])
    row["test_pairs"] = {"0": {"delta_se": 0.002, "mcnemar_p": 0.0312}, "1": {"delta_se": 0.004, "mcnemar_p": 0.5}}
    assert "| +1.00 +2.00 | 0.30 | 0.031 0.5 | 20 | 40 |" in _table([row])
    row["test_pairs"] = {"1": {"delta_se": 0.004, "mcnemar_p": 0.5}}  # Seed 0's runs kept no predictions.
    assert "| +1.00 +2.00 | 0.40 | – 0.5 | 20 | 40 |" in _table([row])
    records[1]["cpu_seconds"] = None  # A process of that run did not record its CPU time.
    assert "| 20 | – |" in _table([_summary("kd", "KD", "distill", records)])
    single = _summary("kd", "KD", "distill", records[:1])
    assert single["accuracy_std"] is None and np.isclose(single["accuracy_mean"], 0.90)


def test_teacher_label_names_the_architecture_once():
    assert _teacher_label(None, {"model": "resnet20"}) == "teacher (resnet20)"
    assert _teacher_label("big", {"model": "alexnet"}) == "teacher 'big' (alexnet)"
    assert _teacher_label("resnet56", {"model": "resnet56"}) == "teacher 'resnet56'"


def test_validation_curves_get_one_panel_per_architecture_drawn_from_the_first_seed(tmp_path):
    """Two dozen rows on one axes could not be read: the curves plot has a panel for the teachers and one per student
    as configured, each row drawn from its first seed; a row without results adds nothing."""
    config = tiny_config(str(tmp_path))
    config["rows"] = [
        {"name": "scratch", "method": "scratch"},
        {"name": "kd", "method": "kd", "label": "KD"},
        {"name": "scratch_wide", "method": "scratch", "options": {"width": 0.5}},
        {"name": "kd_wide", "method": "kd", "options": {"width": 0.5}},
    ]
    experiment = Experiment(load_config(write_config(str(tmp_path), config)), "quick", verbose=0)

    def record(first_value):
        return {"history": {"val_accuracy": [first_value, 0.5]}}

    teachers = {None: {"model": "alexnet", "history": {"val_accuracy": [0.3, 0.6]}}}
    results = {"scratch": [record(0.1), record(0.2)], "kd": [record(0.3)], "scratch_wide": [record(0.4)], "kd_wide": []}
    assert _val_curve_panels(experiment, teachers, results) == {
        "teachers": [("teacher (alexnet)", [0.3, 0.6])],
        "ds_alexnet (width 0.25)": [("scratch", [0.1, 0.5]), ("KD", [0.3, 0.5])],
        "ds_alexnet (width 0.5)": [("scratch_wide", [0.4, 0.5])],
    }


def test_a_row_reaches_the_target_only_in_the_mean_and_on_every_seed():
    def row(per_seed):
        return {"delta_mean": float(np.mean(per_seed)), "delta_per_seed": dict(enumerate(per_seed))}

    assert reaches_target(row([0.009, 0.008, 0.012]), 0.008)
    assert not reaches_target(row([0.004, 0.012, 0.014]), 0.008)  # Mean +1.0, but one seed below the target.
    assert not reaches_target(row([0.009, 0.008, 0.012]), None)  # No target set.
    assert not reaches_target({"delta_mean": None, "delta_per_seed": {}}, 0.008)  # The scratch row itself.


def test_only_finished_distilling_rows_are_named_as_reaching_the_target():
    config_rows = [
        {"name": "scratch_2x", "method": "scratch"}, {"name": "dist", "method": "dist"},
        {"name": "kd", "method": "kd"}, {"name": "dkd", "method": "dkd"},
    ]  # fmt: skip
    gains = {"scratch_2x": [0.012, 0.011], "dist": [0.009, 0.010], "kd": [0.02], "dkd": [0.001, 0.02]}
    summaries = [
        {"name": name, "delta_mean": float(np.mean(v)), "delta_per_seed": dict(enumerate(v))}
        for name, v in gains.items()
    ]
    # scratch_2x: Δ against a shorter scratch row; kd: a seed still missing; dkd: one seed below the target.
    assert rows_reaching_target(config_rows, summaries, ["kd"], 0.008) == ["dist"]
    # A student teaching itself (byot) learns from no teacher: it is no distilling row, whatever its gain.
    config_rows.append({"name": "byot", "method": "byot", "options": {"exits": ["stage4"]}})
    summaries.append({"name": "byot", "delta_mean": 0.02, "delta_per_seed": {0: 0.02, 1: 0.02}})
    assert rows_reaching_target(config_rows, summaries, ["kd"], 0.008) == ["dist"]


def test_distinct_styles_pair_each_colour_with_each_look_before_repeating():
    styles = distinct_styles("marker", list("o^"))
    pairs = [(style["color"], style["marker"]) for style in (next(styles) for _ in range(21))]
    assert len(set(pairs[:20])) == 20 and [marker for _, marker in pairs[:11]] == ["o"] * 10 + ["^"]
    assert pairs[20] == pairs[0]  # Endless: after every pair, the cycle starts again.


def test_delta_plot_marks_the_target_beside_the_zero_line(tmp_path, monkeypatch):
    from kdkeras import artifacts

    config = tiny_config(str(tmp_path), target_delta=0.008)
    experiment = Experiment(load_config(write_config(str(tmp_path), config)), "quick", verbose=0)
    figures = {}
    monkeypatch.setattr(artifacts, "save_figure", lambda figure, path: figures.update({os.path.basename(path): figure}))
    student = {"params": 10, "flops": 20, "accuracy_std": 0.001, "model": "m"}
    rows = [
        {**student, "name": "scratch", "label": "scratch", "method": "scratch", "accuracy_mean": 0.90},
        {
            **student, "name": "tskd", "label": "TSKD", "method": "tskd", "accuracy_mean": 0.91, "delta_mean": 0.01,
            "delta_ci95": [0.005, 0.015], "delta_per_seed": {"0": 0.01},
        },
    ]  # fmt: skip
    _plot(rows, experiment, {}, {"scratch": [], "tskd": []}, str(tmp_path / "tiny-quick"))
    axes = figures["tiny-quick-delta.png"].axes[0]
    vertical = [line.get_xdata()[0] for line in axes.get_lines() if len(set(line.get_xdata())) == 1]
    assert pytest.approx(0.8) in vertical and 0 in vertical  # +0.8 points, beside the zero line.
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["target +0.80"]


def _record(seed, accuracy):
    return {"test_accuracy": accuracy, "spec": {"train_config": {"seed": seed}}}


def test_paired_delta_pairs_by_seed_and_gives_a_t_interval():
    scratch = [_record(0, 0.90), _record(1, 0.91), _record(2, 0.92)]
    method = [_record(2, 0.935), _record(0, 0.91), _record(1, 0.925), _record(3, 0.99)]  # Seed 3 has no pair.
    result = paired_delta(method, scratch)
    assert result["delta_per_seed"] == pytest.approx({"0": 0.01, "1": 0.015, "2": 0.015})
    # By hand: Δ = .010, .015, .015; mean .013333; sample sd .0028868; sem .0016667; t(0.975, 2) = 4.302653.
    assert result["delta_mean"] == pytest.approx(0.0133333, rel=1e-5)
    half = 4.302653 * 0.0028867513 / np.sqrt(3)
    assert result["delta_ci95"] == pytest.approx([0.0133333 - half, 0.0133333 + half], rel=1e-5)
    assert paired_delta(method[:1], scratch)["delta_ci95"] is None
    assert paired_delta(method, [])["delta_mean"] is None


def test_classes_survive_their_json_encoding():
    rng = np.random.default_rng(0)
    for classes in (rng.integers(0, 10, 10_000), rng.integers(0, 1000, 50), np.array([], np.int64)):
        text = encode_classes(classes)
        assert isinstance(text, str) and text.startswith(
            "uint16:" if classes.size and classes.max() > 255 else "uint8:"
        )
        np.testing.assert_array_equal(decode_classes(text), classes)
    assert len(encode_classes(rng.integers(0, 10, 10_000))) < 8_000  # Small enough for every row's JSON.


def _predicting(seed, predicted, labels):
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    return {
        "test_accuracy": float(np.mean(predicted == labels)),
        "spec": {"train_config": {"seed": seed}},
        "test_predictions": encode_classes(predicted),
        "test_labels": encode_classes(labels),
    }


def test_paired_examples_matches_mcnemar_and_the_standard_error_by_hand():
    from math import comb

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    baseline_predicted = np.where(rng.uniform(size=400) < 0.8, labels, (labels + 1) % 4)
    predicted = np.where(rng.uniform(size=400) < 0.85, labels, (labels + 2) % 4)
    row = [_predicting(0, predicted, labels), _predicting(1, labels, labels), _predicting(2, predicted, labels)]
    baseline = [
        _predicting(0, baseline_predicted, labels),
        _predicting(1, labels, labels),  # Identical models: nothing to tell apart.
        _predicting(2, baseline_predicted, labels[::-1]),  # Scored on other examples: left out.
        {"test_accuracy": 0.5, "spec": {"train_config": {"seed": 3}}},  # Recorded without predictions.
    ]
    pairs = paired_examples(row, baseline)
    assert list(pairs) == ["0", "1"]

    right, baseline_right = predicted == labels, baseline_predicted == labels
    a, c, n = int(np.sum(right & ~baseline_right)), int(np.sum(~right & baseline_right)), 400
    d = right.astype(float) - baseline_right.astype(float)  # Per-example difference; Δ is its mean.
    assert d.mean() == pytest.approx(row[0]["test_accuracy"] - baseline[0]["test_accuracy"])
    # The standard error of a mean of n paired differences: population sd of d over sqrt(n).
    assert pairs["0"]["delta_se"] == pytest.approx(d.std() / np.sqrt(n))
    # McNemar's exact test: under no difference each discordant example is a fair coin; two-sided.
    tail = sum(comb(a + c, k) for k in range(min(a, c) + 1)) / 2 ** (a + c)
    assert pairs["0"]["mcnemar_p"] == pytest.approx(min(1.0, 2 * tail))
    assert pairs["0"]["only_row_right"] == a and pairs["0"]["only_baseline_right"] == c and a != c
    assert pairs["0"]["disagreement"] == pytest.approx(np.mean(predicted != baseline_predicted))
    assert pairs["1"] == {
        "examples": n, "disagreement": 0.0, "only_row_right": 0, "only_baseline_right": 0, "delta_se": 0.0,
        "mcnemar_p": 1.0,
    }  # fmt: skip


def test_rows_recorded_without_predictions_get_them_from_their_saved_model(finished, tmp_path, capsys):
    path = write_config(str(tmp_path), copy_of(finished, tmp_path))
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    recorded = json.loads((rows_dir / "tskd-seed0.json").read_text())
    predicted, labels = decode_classes(recorded["test_predictions"]), decode_classes(recorded["test_labels"])
    assert len(labels) == recorded["test_examples"] == 30
    assert np.mean(predicted == labels) == pytest.approx(recorded["test_accuracy"])
    report = json.loads((tmp_path / "results" / "tiny-quick.json").read_text())
    tskd = next(row for row in report["rows"] if row["name"] == "tskd")
    assert list(tskd["test_pairs"]) == ["0"] and tskd["test_pairs"]["0"]["examples"] == 30
    assert "McNemar p per seed" in (tmp_path / "results" / "tiny-quick.md").read_text()

    # As a row finished before predictions were kept: the next run adds them from the saved model.
    older = {k: v for k, v in recorded.items() if k not in ("test_predictions", "test_labels")}
    (rows_dir / "tskd-seed0.json").write_text(json.dumps(older))
    capsys.readouterr()
    assert run(path) == 0
    assert "tskd seed 0: added its test predictions" in capsys.readouterr().out
    assert json.loads((rows_dir / "tskd-seed0.json").read_text()) == recorded

    # A saved model that does not score the recorded accuracy is not the one recorded: nothing is added.
    wrong = {**older, "test_accuracy": recorded["test_accuracy"] + 1 / 30 if recorded["test_accuracy"] < 1 else 0.0}
    (rows_dir / "tskd-seed0.json").write_text(json.dumps(wrong))
    assert run(path) == 0
    assert "its test predictions are not added" in capsys.readouterr().out
    assert "test_predictions" not in json.loads((rows_dir / "tskd-seed0.json").read_text())


def test_rows_record_which_training_of_the_teacher_they_learned_from(finished, tmp_path, capsys):
    path = write_config(str(tmp_path), copy_of(finished, tmp_path))
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    teacher_json, tskd_json = rows_dir / "teacher.json", rows_dir / "tskd-seed0.json"
    teacher, tskd = json.loads(teacher_json.read_text()), json.loads(tskd_json.read_text())
    from kdkeras import artifacts

    saved = artifacts.load_model(tmp_path / "models" / "tiny" / "quick" / "teacher.keras")
    assert teacher["weights"] == tskd["teacher_weights"] == artifacts.weights_digest(saved)
    report_path = tmp_path / "results" / "tiny-quick.json"
    assert json.loads(report_path.read_text())["earlier_teacher"] == {}

    # A teacher recorded before digests were: reusing it adds the saved model's digest.
    teacher_json.write_text(json.dumps({k: v for k, v in teacher.items() if k != "weights"}))
    assert run(path, "--rows", "teacher") == 0
    assert json.loads(teacher_json.read_text())["weights"] == teacher["weights"]

    # Another training of the teacher (other weights) in the table: the row is flagged, by digest...
    teacher_json.write_text(json.dumps({**teacher, "weights": "0" * 64}))
    assert run(path, "--report-only") == 0
    assert json.loads(report_path.read_text())["earlier_teacher"] == {"tskd": [0]}
    assert (
        "teacher-NAME.json for a named teacher): tskd (seed 0)." in (tmp_path / "results" / "tiny-quick.md").read_text()
    )
    # ...or, for a row recorded without a digest, by time: only a row finished before the teacher was trained.
    undigested = {k: v for k, v in tskd.items() if k != "teacher_weights"}
    for finished_at, flagged in (("2000-01-01T00:00:00", {"tskd": [0]}), ("2999-01-01T00:00:00", {})):
        tskd_json.write_text(json.dumps({**undigested, "finished_at": finished_at}))
        assert run(path, "--report-only") == 0
        assert json.loads(report_path.read_text())["earlier_teacher"] == flagged

    # A lost teacher model with its record still there is retrained, and the log says why.
    os.remove(tmp_path / "models" / "tiny" / "quick" / "teacher.keras")
    capsys.readouterr()
    assert run(path, "--rows", "teacher") == 0
    assert "teacher.keras is missing; training it again (same settings)" in capsys.readouterr().out


def test_a_teacher_given_as_a_file_is_evaluated_once_and_teaches_rows_with_unlabeled_images(tmp_path, capsys):
    """`teacher: {file: PATH}` uses a trained model as it is (no budget needs `teacher_epochs`); a row's
    `unlabeled_examples` trains on more images than the scratch row sees, and only distilling rows take it."""
    from kdkeras import artifacts
    from kdkeras.models import build_model

    keras.utils.set_random_seed(0)
    teacher_file = str(tmp_path / "mine.keras")
    artifacts.save_model(build_model("resnet", (28, 28, 1), 3, depth=8, width=0.25), teacher_file)
    config = tiny_config(str(tmp_path), teacher={"file": teacher_file},
                         budgets={"quick": {"epochs": 1, "max_train_examples": 30}, "full": {"epochs": 2}})  # fmt: skip
    config["rows"] = [{"name": "scratch", "method": "scratch"},
                      {"name": "transfer", "method": "kd_t1", "unlabeled_examples": 30}]  # fmt: skip
    path = write_config(str(tmp_path), config)
    assert run(path) == 0
    rows_dir = tmp_path / "results" / "tiny" / "quick"
    teacher, transfer = (json.loads((rows_dir / n).read_text()) for n in ("teacher.json", "transfer-seed0.json"))
    assert teacher["spec"]["file"] == teacher_file and teacher["train_seconds"] is None
    assert transfer["teacher_weights"] == teacher["weights"] == artifacts.weights_digest(artifacts.load_model(
        teacher_file))  # fmt: skip
    assert transfer["spec"]["train_config"]["unlabeled_examples"] == 30
    assert not (tmp_path / "models" / "tiny" / "quick" / "teacher.keras").exists()  # Not trained, not copied.
    capsys.readouterr()
    assert run(path) == 0
    assert "transfer seed 0: done already" in capsys.readouterr().out
    report = json.loads((tmp_path / "results" / "tiny-quick.json").read_text())
    assert report["rows"][0]["train_seconds_mean"] is None

    config["rows"][0]["unlabeled_examples"] = 10
    with pytest.raises(ValueError, match="unlabeled_examples only apply to distillation rows"):
        check_config(config, "x.yaml")
    config["rows"][0].pop("unlabeled_examples")
    config["teacher"] = {"file": teacher_file, "model": "resnet"}
    with pytest.raises(ValueError, match="a teacher read from a file is not trained: model do not apply"):
        check_config(config, "x.yaml")
