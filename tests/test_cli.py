"""kdkeras.cli: the commands end to end on a tiny generated dataset, and one-line errors for bad input."""

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import idx_bytes, write_idx_folder

from kdkeras import cli
from kdkeras.evaluation import decode_classes

# End-to-end runs: in `make test` (and CI), not in `make test-fast`.
pytestmark = pytest.mark.slow

FAST = ["--epochs", "1", "--batch-size", "16", "--verbose", "0", "--logdir", "none"]


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny teacher trained through the CLI on a generated 3-class IDX dataset."""
    root = tmp_path_factory.mktemp("cli")
    dataset = f"idx:{write_idx_folder(str(root / 'idx'), n_train=80, n_test=30)}"
    teacher = str(root / "teacher.keras")
    code = cli.main(["train", "--model", "alexnet", "--width", "0.25", "--dataset", dataset, "--out", teacher, *FAST])
    assert code == 0
    return root, dataset, teacher


def test_train_writes_model_and_resolved_config(trained):
    root, dataset, teacher = trained
    config = json.loads(open(teacher.replace(".keras", ".config.json")).read())
    assert config["command"] == "train" and config["model"] == "alexnet"
    assert config["builder"] == {"name": "alexnet", "width": 0.25}
    assert config["train_config"]["dataset"] == dataset and config["train_config"]["epochs"] == 1
    assert 0 <= config["test_accuracy"] <= 1 and config["params"] > 0 and len(config["history"]["loss"]) == 1


def test_distill_evaluate_and_info(trained, capsys):
    root, dataset, teacher = trained
    student = str(root / "student.keras")
    code, out, err = run(
        ["distill", "--teacher", teacher, "--student", "ds_alexnet", "--width", "0.25", "--dataset", dataset,
         "--feature-pairs", "stage3:stage3,stage5:stage5", "--temperature", "3", "--out", student, *FAST],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "test accuracy" in out
    config = json.loads(open(student.replace(".keras", ".config.json")).read())
    # The default method (kd_t1) with T 3 and, since feature pairs were given, FitNets hints on them.
    terms = {t["name"]: t for t in config["distillation"]["terms"]}
    assert terms["hint"]["pairs"] == [["stage3", "stage3"], ["stage5", "stage5"]]
    assert terms["kd"]["temperature"] == 3.0 and set(terms) == {"ce", "kd", "hint"}

    code, out, _ = run(["evaluate", "--model", student, "--dataset", dataset, "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["num_examples"] == 30 and set(result["per_class"]) == {"0", "1", "2"}
    assert result["accuracy"] == pytest.approx(config["test_accuracy"]) and result["loss"] > 0
    # The recorded per-image predictions are the ones that gave the recorded accuracy.
    predicted, labels = decode_classes(config["test_predictions"]), decode_classes(config["test_labels"])
    assert len(predicted) == len(labels) == 30 and np.mean(predicted == labels) == pytest.approx(result["accuracy"])

    code, out, _ = run(["info", "--model", student, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["params"] == config["params"] and info["file_bytes"] == os.path.getsize(student)
    code, out, _ = run(["info", "--model", "ds_alexnet"], capsys)
    assert code == 0 and "104,682 parameters" in out and "stage5: (4, 4, 128)" in out


def test_distill_collaborative_saves_updated_teacher(trained, capsys):
    root, dataset, teacher = trained
    updated = str(root / "teacher_updated.keras")
    code, out, err = run(
        ["distill", "--teacher", teacher, "--width", "0.25", "--dataset", dataset, "--collaborative",
         "--teacher-mimicry", "0.5", "--teacher-out", updated, "--out", str(root / "s2.keras"), *FAST],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert os.path.exists(updated)
    with open(root / "s2.config.json") as f:
        assert json.load(f)["distillation"]["teacher_mimicry"] == 0.5


def test_distill_config_file_sets_defaults_and_flags_win(trained, capsys, tmp_path):
    root, dataset, teacher = trained
    config = tmp_path / "best_hparams.json"
    config.write_text(json.dumps({"temperature": 7.5, "alpha": 0.2, "feature_loss": "attention"}))
    out_path = str(tmp_path / "s.keras")
    code, _, err = run(
        ["distill", "--teacher", teacher, "--width", "0.25", "--dataset", dataset, "--config", str(config),
         "--alpha", "0.4", "--out", out_path, *FAST],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    used = json.loads(open(out_path.replace(".keras", ".config.json")).read())["distillation"]["terms"]
    # The classic sum: α from the flag, T and the feature loss from the file, β and γ at their defaults.
    assert used == [
        {"name": "ce", "weight": 0.4},
        {"name": "kd", "weight": 0.5, "temperature": 7.5, "standardize": False},
        {"name": "attention", "weight": 1.0, "pairs": [["stage5", "stage5"]], "p": 2.0},
    ]


def test_distill_method_and_terms_from_the_command_line(trained, capsys, tmp_path):
    root, dataset, teacher = trained
    out_path = str(tmp_path / "s.keras")
    code, _, err = run(
        ["distill", "--teacher", teacher, "--width", "0.25", "--dataset", dataset, "--method", "dkd",
         "--term", "dkd:beta=2,warmup_epochs=1", "--term", "dist:gamma=0.5", "--mixed-fraction", "0.5",
         "--out", out_path, *FAST],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(open(out_path.replace(".keras", ".config.json")).read())
    used = {t["name"]: t for t in record["distillation"]["terms"]}
    assert list(used) == ["ce", "dkd", "dist"]
    assert (used["dkd"]["beta"], used["dkd"]["alpha"], used["dkd"]["warmup_epochs"]) == (2, 1.0, 1)
    assert used["dist"]["gamma"] == 0.5 and "dist" in record["history"] and "val_dkd" in record["history"]
    assert record["train_config"]["mixed_fraction"] == 0.5  # Function matching on half the images.


def _error(argv, capsys):
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("kdkeras: error: "), err
    return lines[0]


def test_bad_input_gives_one_line_errors(trained, capsys, tmp_path):
    root, dataset, teacher = trained
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"garbage")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{temperature: 3")
    cases = [
        (["evaluate", "--model", str(tmp_path / "nope.keras")], "model file not found"),
        (["evaluate", "--model", str(corrupt)], "not a valid .keras file"),
        (["evaluate", "--model", teacher, "--dataset", "imagenet21k"], "unknown dataset 'imagenet21k'"),
        (["evaluate", "--model", teacher, "--dataset", f"idx:{tmp_path}/missing"], "idx dataset folder not found"),
        (["evaluate", "--model", teacher, "--dataset", "fashion_mnist", "--max-examples", "10"],
         "predicts 3 classes, the dataset fashion_mnist has 10"),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--feature-pairs", "stage3", *FAST],
         "feature pair 'stage3' is not TEACHER_LAYER:STUDENT_LAYER"),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--feature-pairs", "stage9:stage5",
          "--out", str(tmp_path / "s.keras"), *FAST], "has no layer 'stage9'; its stage layers are: stage1"),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--config", str(bad_json), *FAST], "invalid JSON"),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--method", "kdd", *FAST],
         "unknown method 'kdd'; choose one of: scratch"),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--term", "kd:temprature=3", *FAST],
         "term 'kd': "),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--term", "fitnet", *FAST],
         "unknown term 'fitnet'; choose one of: attention, ce"),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--method", "kd", "--alpha", "1", *FAST],
         "not both"),
        (["train", "--dataset", dataset, "--out", str(not_a_dir / "m.keras"), *FAST], "cannot write to"),
        (["train", "--dataset", dataset, "--out", str(tmp_path / "m.h5"), *FAST], "--out must end in .keras"),
        (["train", "--model", "vgg", "--dataset", dataset, "--out", str(tmp_path / "v.keras"), *FAST],
         "unknown model 'vgg'"),
        (["train", "--dataset", dataset, "--validation-fraction", "0.9", "--out", str(tmp_path / "v.keras"),
          *FAST], "validation_fraction: must be a number in (0, 0.5], got 0.9"),
    ]  # fmt: skip
    for argv, message in cases:
        assert message in _error(argv, capsys), argv


def test_out_of_range_options_are_usage_errors(capsys):
    for argv in (["train", "--epochs", "0"], ["distill", "--teacher", "t.keras", "--temperature", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert "must be" in capsys.readouterr().err


def test_console_script_prints_one_line_and_no_tensorflow_start_up_lines(tmp_path):
    # As a user runs it: without the suite's TF_CPP_MIN_LOG_LEVEL (which counts as the user's choice to see logs).
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-m", "kdkeras", "evaluate", "--model", str(tmp_path / "none.keras")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2
    # Exactly the error: no "oneDNN custom operations", "Could not find cuda drivers" or "failed call to cuInit".
    assert result.stderr.strip().splitlines() == [f"kdkeras: error: model file not found: {tmp_path / 'none.keras'}"]


def test_the_parser_offers_what_export_writes_without_loading_tensorflow():
    """`export` and `compress` offer exactly the formats and precisions `kdkeras.export` accepts, and building the
    parser (all `--help` needs) imports neither TensorFlow nor Keras."""
    script = (
        "import sys\n"
        "from kdkeras.cli.parser import build_parser\n"
        "parser = build_parser()\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'parser loaded TensorFlow'\n"
        "sub = next(a for a in parser._actions if a.dest == 'command').choices\n"
        "options = {c: {a.dest: a.choices for a in sub[c]._actions} for c in ('export', 'compress')}\n"
        "print(options['export']['format'], options['export']['quantize'], options['compress']['quantize'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    from kdkeras.export import FORMATS, QUANTIZATIONS

    assert result.stdout.strip() == f"{FORMATS} {QUANTIZATIONS} {QUANTIZATIONS}"


def test_a_second_interrupt_stops_a_process_whose_main_thread_does_not_return(tmp_path):
    """The second Ctrl-C ends the process even when Python's handler never gets to run (simulated by a handler
    that ignores the signal, as a main thread stuck in a long TensorFlow call would)."""
    import signal
    import time

    script = tmp_path / "stuck.py"
    script.write_text(
        "import signal, sys, time\n"
        "from kdkeras.cli import runtime as cli_runtime\n"
        "cli_runtime.stop_on_second_interrupt()\n"
        "signal.signal(signal.SIGINT, lambda *_: None)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert process.poll() is None  # One Ctrl-C is left to Python's handler (a graceful stop in training).
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert time.monotonic() - start < 10
    assert "interrupted twice: stopped immediately" in err


def test_parse_feature_pairs():
    assert cli.parse_feature_pairs("stage3:stage3, stage5:stage4") == [("stage3", "stage3"), ("stage5", "stage4")]
    assert cli.parse_feature_pairs("none") == []
    with pytest.raises(ValueError, match="TEACHER_LAYER:STUDENT_LAYER"):
        cli.parse_feature_pairs("stage3:")


def test_more_bad_inputs_from_issue_6(trained, capsys, tmp_path):
    """Each bad input gives one line and exit 2; nothing half-written is left."""
    from PIL import Image

    root, dataset, teacher = trained
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(open(teacher, "rb").read()[:2000])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("temperature: [3\n")
    empty_class = tmp_path / "images"
    for name in ("a", "b"):
        (empty_class / name).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(empty_class / "a" / "0.png")
    tiny = write_idx_folder(str(tmp_path / "tiny"), n_train=3, n_test=2)
    for prefix, labels in (("train", [0, 1, 2]), ("t10k", [0, 1])):  # Every class present: only the size is wrong.
        with gzip.open(os.path.join(tiny, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as f:
            f.write(idx_bytes(np.array(labels, np.uint8)))
    out = str(tmp_path / "s.keras")
    cases = [
        (["evaluate", "--model", str(truncated)], "truncated.keras: not a valid .keras file"),
        (["distill", "--teacher", teacher, "--dataset", "fashion_mnist", "--max-train-examples", "50", "--out", out,
          *FAST], "the teacher 'alexnet' predicts 3 classes, the dataset fashion_mnist has 10"),
        (["train", "--dataset", f"folder:{empty_class}", "--out", out, *FAST], "class folder 'b' holds no images"),
        (["train", "--dataset", f"idx:{tiny}", "--out", out, *FAST],
         "3 training examples are too few for validation_fraction=0.1"),
        (["distill", "--teacher", teacher, "--dataset", dataset, "--config", str(bad_yaml), *FAST], "invalid YAML"),
    ]  # fmt: skip
    for argv, message in cases:
        assert message in _error(argv, capsys), argv
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml", "images", "tiny", "truncated.keras"]


def test_folder_with_stray_files_and_mixed_sizes_trains_with_warnings(capsys, tmp_path, caplog):
    import logging

    from PIL import Image

    for split, count in (("train", 12), ("test", 4)):
        for k, name in enumerate(("dark", "light")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                size = (12, 12) if i else (16, 10)  # One odd size per class.
                Image.fromarray(np.full(size, 40 + 150 * k, np.uint8)).save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "train" / "dark" / "README.txt").write_text("stray")
    out = str(tmp_path / "m.keras")
    with caplog.at_level(logging.WARNING, logger="kdkeras"):
        code, stdout, err = run(
            ["train", "--model", "ds_alexnet", "--width", "0.25", "--dataset", f"folder:{tmp_path}",
             "--validation-fraction", "0.25", "--out", out, *FAST],
            capsys,
        )  # fmt: skip
    assert code == 0, err
    assert "skipped 1 non-image file" in caplog.text and "resized to 12x12" in caplog.text
    assert json.loads(open(out.replace(".keras", ".config.json")).read())["dataset"]["input_shape"] == [12, 12, 1]


def test_an_output_that_would_replace_an_input_is_refused_up_front(trained, capsys, tmp_path):
    root, dataset, teacher = trained
    before = open(teacher, "rb").read()
    base = ["distill", "--teacher", teacher, "--dataset", dataset, *FAST]
    assert "--out " + teacher + " is also the --teacher file" in _error([*base, "--out", teacher], capsys)
    same = str(tmp_path / "x.keras")
    message = _error([*base, "--collaborative", "--teacher-out", same, "--out", same], capsys)
    assert "--out and --teacher-out are the same file" in message
    alias = str(tmp_path / "alias.keras")
    os.symlink(teacher, alias)  # The same file under another name is caught too.
    assert "is also the --teacher file" in _error([*base, "--out", alias], capsys)
    assert open(teacher, "rb").read() == before


def test_a_second_run_on_the_same_output_fails_naming_the_holder(trained, capsys, tmp_path):
    from kdkeras import artifacts

    root, dataset, teacher = trained
    out = str(tmp_path / "s.keras")
    with artifacts.output_lock(out):
        message = _error(["distill", "--teacher", teacher, "--dataset", dataset, "--out", out, *FAST], capsys)
    assert f"{out} is being written by another kdkeras run (pid {os.getpid()})" in message
    # Released: the same command now runs (a lock file left by a dead process would be taken over the same way).
    code, _, err = run(["distill", "--teacher", teacher, "--width", "0.25", "--dataset", dataset, "--out", out,
                        *FAST], capsys)  # fmt: skip
    assert code == 0, err
    assert not os.path.exists(out + ".lock") and not os.path.exists(out.removesuffix(".keras") + ".backup")


def test_stale_temporary_files_of_an_output_are_cleaned_up(tmp_path):
    from kdkeras import artifacts

    out = tmp_path / "m.keras"
    stale = tmp_path / ".m.keras.abc123.tmp.keras"
    stale.write_bytes(b"half a model")
    other = tmp_path / ".other.keras.x.tmp.keras"
    other.write_bytes(b"not ours")
    with artifacts.output_lock(out):
        pass
    assert not stale.exists() and other.exists()


def test_numbers_must_be_finite_and_well_typed_from_flags_and_config_files(trained, capsys, tmp_path):
    root, dataset, teacher = trained
    base = ["distill", "--teacher", teacher, "--dataset", dataset, "--out", str(tmp_path / "s.keras"), *FAST]
    for flag in ("--temperature", "--alpha", "--lr", "--width", "--teacher-mimicry"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*base, flag, "inf"])
        assert exit_info.value.code == 2 and "must be a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--mixed-fraction", "1.5"])
    assert exit_info.value.code == 2 and "must be in [0, 1], got 1.5" in capsys.readouterr().err
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"epochs": 1.5}))
    assert f"{config}: epochs: invalid literal" in _error([*base, "--config", str(config)], capsys)
    config.write_text(json.dumps({"lr": float("inf")}))
    assert f"{config}: lr: must be a finite number > 0" in _error([*base, "--config", str(config)], capsys)
    assert "batch size 100000 is larger than the 72 training examples" in _error(
        [*base, "--batch-size", "100000"], capsys
    )


def test_a_one_class_dataset_is_refused(tmp_path, capsys):
    from conftest import write_idx_folder

    folder = write_idx_folder(str(tmp_path / "one"), n_train=20, n_test=5, classes=1)
    message = _error(["train", "--dataset", f"idx:{folder}", "--out", str(tmp_path / "m.keras"), *FAST], capsys)
    assert "has 1 class: a classifier needs at least 2" in message


def test_unreadable_images_negative_labels_and_misnamed_models_are_named(tmp_path, capsys):

    from PIL import Image

    folder = tmp_path / "images"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((12, 12), 30 + 40 * i, np.uint8)).save(folder / name / f"{i}.png")
    whole = (folder / "b" / "3.png").read_bytes()
    (folder / "b" / "3.png").write_bytes(whole[: len(whole) // 2])  # Its header still opens; its pixels do not.
    idx = write_idx_folder(str(tmp_path / "idx"), n_train=20, n_test=5)
    with gzip.open(os.path.join(idx, "train-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(idx_bytes(np.array([0, 1, 2, 255] * 5, np.uint8)).replace(b"\x08", b"\x09", 1))  # int8: 255 = -1
    out = str(tmp_path / "m.keras")
    cases = [
        (["train", "--dataset", f"folder:{folder}", "--out", out, *FAST],
         f"{folder / 'b' / '3.png'}: not a readable image"),
        (["train", "--dataset", f"idx:{idx}", "--out", out, *FAST],
         "train-labels-idx1-ubyte.gz: labels include -1; class labels must be 0, 1"),
        (["evaluate", "--model", "vgg99"], "vgg99 (a trained .keras file goes here; `kdkeras train` makes one)"),
    ]  # fmt: skip
    for argv, message in cases:
        assert message in _error(argv, capsys), argv
    assert not os.path.exists(out)


def test_a_user_set_tensorflow_log_level_below_ours_shows_its_diagnostics(monkeypatch, tmp_path):
    probe = "import os, kdkeras.cli as c; print(c.runtime.SHOW_TF_DIAGNOSTICS, os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    # 0 and 1 ask for more than the default; 2 and 3 for less, which the quiet start gives (3 once showed them).
    # Unset, the CLI sets level 3: runtime ERROR lines (oneDNN's DT_HALF notice) stay hidden too.
    cases = ((None, "False 3"), ("0", "True 0"), ("1", "True 1"), ("2", "False 2"), ("3", "False 3"))
    for level, expected in cases:
        run_env = env if level is None else {**env, "TF_CPP_MIN_LOG_LEVEL": level}
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=run_env, timeout=60)
        assert result.stdout.strip() == expected, result.stderr
    # And `main` passes that choice on: nothing is hidden.
    main_module = sys.modules["kdkeras.cli.main"]  # `kdkeras.cli.main` the attribute is the function.

    seen = []
    monkeypatch.setattr(main_module.runtime, "SHOW_TF_DIAGNOSTICS", True)
    monkeypatch.setattr(
        main_module.runtime, "import_tensorflow_quietly", lambda show_diagnostics: seen.append(show_diagnostics)
    )
    cli.main(["evaluate", "--model", str(tmp_path / "none.keras")])
    assert seen == [True]


def test_an_unwritable_logdir_or_checkpoint_folder_fails_before_training(trained, capsys, tmp_path):
    root, dataset, _ = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    out = str(tmp_path / "m.keras")
    base = ["train", "--dataset", dataset, "--out", out, "--epochs", "1", "--batch-size", "16", "--verbose", "0"]
    assert "cannot write to" in _error([*base, "--logdir", str(blocker / "logs")], capsys)
    assert "cannot write to" in _error([*base, "--logdir", "none", "--backup-dir", str(blocker / "b")], capsys)
    assert not os.path.exists(out) and blocker.read_text() == "in the way"


def test_a_malformed_term_option_is_refused_not_dropped(trained, capsys, tmp_path):
    _, dataset, teacher = trained
    argv = ["distill", "--teacher", teacher, "--dataset", dataset, "--out", str(tmp_path / "s.keras"), *FAST,
            "--term", "hint:pairs=[[stage3,stage3"]  # fmt: skip
    assert "unbalanced brackets" in _error(argv, capsys)


def test_multi_exit_students_through_the_cli(trained, capsys):
    """`--exits`: distill defaults to TSKD with self-teaching, train to self-distillation; evaluate reports each
    exit, the ensemble, the vote and the early exit chosen on validation; info the cost of reaching each exit."""
    root, dataset, teacher = trained
    exits = ["--exits", "stage3,stage4", "--width", "0.25", "--dataset", dataset]
    student, alone = str(root / "exits.keras"), str(root / "byot.keras")
    assert run(["distill", "--teacher", teacher, *exits, "--out", student, *FAST], capsys)[0] == 0
    terms = [t["name"] for t in json.loads(open(student.replace(".keras", ".config.json")).read())["distillation"]
             ["terms"]]  # fmt: skip
    assert terms == ["ce", "kd", "exit_ce", "exit_kd", "self_kd"]
    assert run(["train", "--model", "ds_alexnet", *exits, "--out", alone, *FAST], capsys)[0] == 0
    history = json.loads(open(alone.replace(".keras", ".config.json")).read())["history"]
    assert {"exit_ce", "self_kd"} <= set(history)  # Self-distillation trained the exits.

    code, out, _ = run(["evaluate", "--model", student, "--dataset", dataset, "--json"], capsys)
    report = json.loads(out)["exits"]
    assert code == 0 and list(report["exits"]) == ["exit_stage3", "exit_stage4", "final"]
    assert report["exits"]["final"]["accuracy"] == pytest.approx(json.loads(out)["accuracy"])
    assert 0 < report["chosen"]["mflops"] <= report["chosen"]["full_mflops"] and len(report["curve"]) >= 5
    code, out, _ = run(["evaluate", "--model", student, "--dataset", dataset], capsys)
    assert "majority vote" in out and "chosen on validation" in out
    code, out, _ = run(["info", "--model", "ds_alexnet", "--width", "0.5", "--exits", "stage3,stage4"], capsys)
    assert "exit_stage3: 2.37 MFLOPs to reach it" in out and "final: 4.14 MFLOPs" in out
    cascade = str(root / "cascade")
    code, out, _ = run(["export", "--model", student, "--cascade", "--dataset", dataset, "--out", cascade], capsys)
    assert code == 0 and "LiteRT accuracy" in out and "chosen on validation" in out
    assert sorted(os.listdir(cascade)) == ["cascade.json", "segment_0.tflite", "segment_1.tflite", "segment_2.tflite"]
    # The benchmark of a cascade: a row per exit, each reaching further (more segments, more bytes, more MFLOPs).
    bench = str(root / "bench")
    code, out, _ = run(["benchmark", "--models", cascade, "--runs", "3", "--out-dir", bench], capsys)
    rows = json.loads(open(os.path.join(bench, "benchmark.json")).read())["rows"]
    assert code == 0 and [row["exit"] for row in rows] == ["exit_stage3", "exit_stage4", "final"]
    assert all(a["bytes"] < b["bytes"] and a["flops"] < b["flops"] for a, b in zip(rows, rows[1:], strict=False))
    assert all(row["latency_ms_batch1"] > 0 for row in rows) and "cascade:exit_stage3" in out
    assert "is a folder without cascade.json" in _error(["benchmark", "--models", str(root)], capsys)


def test_ctrl_c_while_tensorflow_loads_is_one_line_and_status_130(monkeypatch, capsys):
    from kdkeras.cli import runtime

    def interrupted(show_diagnostics=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "import_tensorflow_quietly", interrupted)
    code, _, err = run(["info", "--model", "ds_alexnet"], capsys)
    assert code == 130 and err.strip().splitlines() == ["kdkeras: interrupted"]


def test_a_model_with_two_outputs_is_named_as_teacher_and_in_evaluate(trained, capsys, tmp_path):
    import keras

    from kdkeras import artifacts

    _, dataset, _ = trained
    inputs = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(inputs)
    two = str(tmp_path / "two.keras")
    artifacts.save_model(keras.Model(inputs, [keras.layers.Dense(3)(flat), keras.layers.Dense(3)(flat)]), two)
    assert "has 1 input(s) and 2 output(s)" in _error(["evaluate", "--model", two, "--dataset", dataset], capsys)
    argv = ["distill", "--teacher", two, "--dataset", dataset, "--out", str(tmp_path / "s.keras"), *FAST]
    message = _error(argv, capsys)
    assert "the teacher" in message and "2 output(s)" in message


def test_a_loss_that_becomes_nan_ends_the_progress_line_then_says_so_in_one_line(trained, capsys, tmp_path):
    _, dataset, _ = trained
    argv = ["train", "--dataset", dataset, "--model", "ds_alexnet", "--width", "0.25", "--epochs", "1",
            "--batch-size", "16", "--lr", "1e20", "--verbose", "1", "--out", str(tmp_path / "nan.keras")]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 1 and out.endswith("\n")  # The progress bar's line is ended before the error.
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.match(r"kdkeras: error: loss term 'loss' became (nan|inf)", lines[0]), err
    assert "checkpoint" not in lines[0]  # None exists after the first steps: none is claimed.


def test_a_distill_run_builds_each_split_once_and_records_its_exits(trained, capsys, tmp_path, monkeypatch):
    """One pass through the pipeline: the training, validation and test splits are each built once (the test split
    at the end, for the record; the teacher's validation logits once), and a multi-exit student's record holds its
    exits and the early exit chosen on that same validation split."""
    import kdkeras.data

    _, dataset, teacher = trained
    built = []
    select = kdkeras.data._select
    monkeypatch.setattr(kdkeras.data, "_select", lambda source, spec, split, *a: built.append(split) or select(
        source, spec, split, *a))  # fmt: skip
    out = tmp_path / "s.keras"
    argv = ["distill", "--teacher", teacher, "--dataset", dataset, "--width", "0.25", "--exits", "stage3,stage4",
            "--out", str(out), *FAST]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    assert sorted(built) == ["test", "train", "validation"]
    record = json.loads(open(str(out).replace(".keras", ".config.json")).read())
    assert list(record["exits"]["exits"]) == ["exit_stage3", "exit_stage4", "final"]
    assert record["exits"]["exits"]["final"]["accuracy"] == pytest.approx(record["test_accuracy"])
    assert record["exits"]["chosen"] is not None


def test_a_keras_application_trains_through_the_cli(trained, capsys, tmp_path):
    """`train --model applications:NAME` (teaching with it is tested on the model itself, tests/test_models.py)."""
    _, dataset, _ = trained
    teacher = str(tmp_path / "mobilenet.keras")
    # MobileNet (v1): the application with the fewest layers, so the fewest to trace; any other takes the same path.
    train = ["train", "--dataset", dataset, "--model", "applications:MobileNet", "--out", teacher, *FAST]
    assert run(train, capsys)[0] == 0
    assert json.loads(open(teacher.replace(".keras", ".config.json")).read())["builder"] == {
        "name": "applications:MobileNet", "weights": None}  # fmt: skip
    assert "mobilenetv3small: " in run(["info", "--model", "applications:MobileNetV3Small"], capsys)[1]
    argv = ["train", "--dataset", dataset, "--model", "ds_alexnet", "--weights", "imagenet", "--out", teacher, *FAST]
    assert _error(argv, capsys) == "kdkeras: error: --weights applies to applications:NAME models, not ds_alexnet"
