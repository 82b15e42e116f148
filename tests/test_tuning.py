"""kdkeras.tuning: trial hyperparameters reach the distiller, the teacher is shared and untouched, a search
resumes without redoing trials, reports are written, and bad input is refused."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import idx_dataset_and_teacher

from kdkeras import cli, terms, tuning
from kdkeras.training import TrainConfig, load_splits

# End-to-end runs: in `make test` (and CI), not in `make test-fast`.
pytestmark = pytest.mark.slow

BUILT = []  # Module-level: Keras Tuner deep-copies the callbacks of every trial.
SPECS = [{"name": "ce"}, {"name": "kd"}, {"name": "hint", "pairs": [["stage5", "stage5"]]}]
SEARCHED = ("kd.temperature", "kd.weight", "hint.weight", "ce.weight")


class Recorder(keras.callbacks.Callback):
    """Records the distiller each trial trains: what Keras Tuner really built from the trial's values."""

    def on_train_begin(self, logs=None):
        ce, kd, hint = self.model.terms
        BUILT.append((kd.temperature, kd.weight, hint.weight, ce.weight, id(self.model.teacher)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    dataset, teacher_path = idx_dataset_and_teacher(str(root), n_train=160, n_test=40, classes=3)
    config = TrainConfig(dataset=dataset, epochs=1, batch_size=32, verbose=0)
    train, validation, _ = load_splits(config)
    return root, dataset, teacher_path, config, train, validation


def _search(setup, directory, max_trials):
    BUILT.clear()
    root, _, teacher_path, config, train, validation = setup
    teacher = tuning.load_teacher(teacher_path)
    space = tuning.SearchSpace.for_terms(terms.get_list(SPECS))
    hypermodel = tuning.DistillerHyperModel(teacher, ("ds_alexnet", {"width": 0.25}), SPECS, space, config, len(train))
    tuner = tuning.make_tuner("random", hypermodel, max_trials, 1, directory, "p", overwrite=False, seed=1)
    tuner.search(train, validation_data=validation, epochs=1, shuffle=False, verbose=0, callbacks=[Recorder()])
    return tuner, teacher


def test_search_uses_the_trial_values_shares_an_unchanged_teacher_and_resumes(setup, tmp_path):
    directory = str(tmp_path / "search")
    _, _, teacher_path, *_ = setup
    before = [np.array(w) for w in tuning.load_teacher(teacher_path).weights]
    tuner, teacher = _search(setup, directory, 2)
    # The trials trained students only: the shared teacher's weights are those of its file, which is untouched.
    for saved, used in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(saved, np.array(used))
    for saved, reloaded in zip(before, tuning.load_teacher(teacher_path).weights, strict=True):
        np.testing.assert_array_equal(saved, np.array(reloaded))
    first = list(BUILT)
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    assert len(first) == 2
    for trial, built in zip(trials, first, strict=True):
        hp = trial.hyperparameters.values
        assert set(hp) == {*SEARCHED, "lr"}  # The union of the terms' declared spaces, and the learning rate.
        assert built[:4] == tuple(hp[name] for name in SEARCHED)
    assert len({b[4] for b in first}) == 1  # One teacher object for every trial.
    assert all(1.0 <= b[0] <= 8.0 for b in first)

    tuner, teacher = _search(setup, directory, 3)
    assert len(BUILT) == 1  # Resumed: only the third trial ran.
    assert len(tuner.oracle.trials) == 3
    rows = tuning.trial_rows(tuner)
    assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows), reverse=True)


def test_cli_search_shares_one_teacher_cache_resumes_and_writes_reports_that_distill_accepts(setup, tmp_path, capsys):
    root, dataset, teacher_path, *_ = setup
    directory = str(tmp_path / "cli")
    argv = ["tune", "--method", "kd", "--teacher", teacher_path, "--width", "0.25", "--dataset", dataset,
            "--epochs-per-trial", "1", "--max-train-examples", "100", "--batch-size", "32", "--directory", directory,
            "--verbose", "0", "--teacher-cache", "auto"]  # fmt: skip
    assert cli.main([*argv, "--max-trials", "2"]) == 0
    first = capsys.readouterr().out
    assert first.count("teacher cache: epoch 1/1 computed") == 1 and "ready" in first  # Once for every trial.
    assert cli.main([*argv, "--max-trials", "3"]) == 0  # Resumes the search: one more trial, same cache.
    assert "teacher cache: reusing" in capsys.readouterr().out
    caches = os.listdir(os.path.join(directory, "teacher_cache"))
    assert len(caches) == 1 and not caches[0].endswith(".partial")

    out_dir = os.path.join(directory, "tskd")
    for name in ("best_hparams.json", "trials.json", "trials.md", "objective.png"):
        assert os.path.exists(os.path.join(out_dir, name)), name
    best = json.loads(open(os.path.join(out_dir, "best_hparams.json")).read())
    assert set(best) == {"terms", "lr"}
    trials = json.loads(open(os.path.join(out_dir, "trials.json")).read())["trials"]
    assert len(trials) == 3 and all(np.isfinite(t["val_accuracy"]) for t in trials)
    best_kd = next(t for t in best["terms"] if t["name"] == "kd")
    assert trials[0]["kd.temperature"] == best_kd["temperature"]
    assert os.listdir(os.path.join(out_dir, "tensorboard"))  # Per-trial TensorBoard logs.

    student = str(tmp_path / "s.keras")
    code = cli.main(["distill", "--teacher", teacher_path, "--width", "0.25", "--dataset", dataset, "--epochs", "1",
                     "--config", os.path.join(out_dir, "best_hparams.json"), "--logdir", "none", "--verbose", "0",
                     "--out", student])  # fmt: skip
    assert code == 0
    used = json.loads(open(student.replace(".keras", ".config.json")).read())
    used_kd = next(t for t in used["distillation"]["terms"] if t["name"] == "kd")
    assert used_kd["temperature"] == best_kd["temperature"] and used["train_config"]["lr"] == best["lr"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"kd.temperature": [5, 2]}, "search range of kd.temperature is empty, inverted or not finite"),
        ({"kd.weight": [0.5, 0.5]}, "search range of kd.weight is empty"),
        ({"lr": [0, 1e-3]}, "search range of lr must be positive"),
        ({"hint.weight": [1, float("inf")]}, "not finite"),
        ({"kd.weight": [-1, 1]}, "search range of kd.weight must be >= 0"),
        ({"kd.dropout": [0, 1]}, "search-space key 'kd.dropout' names nothing searched; searched: lr, ce.weight"),
        ({"kd.temperature": 3}, "search range of kd.temperature must be two numbers [low, high]"),
        ({"kd.temperature": ["a", "b"]}, "search range of kd.temperature must be two numbers [low, high], got ['a'"),
        ({"kd.temperature": [True, 4]}, "search range of kd.temperature must be two numbers"),
    ],
)
def test_bad_search_spaces(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", "\\[").replace("]", "\\]")):
        tuning.SearchSpace.for_terms(terms.get_list(SPECS), overrides)


def test_cli_bad_input(setup, tmp_path, capsys):
    _, dataset, teacher_path, *_ = setup
    space = tmp_path / "space.yaml"
    space.write_text("kd.temperature: [8, 2]\n")
    base = ["tune", "--method", "kd", "--dataset", dataset, "--directory", str(tmp_path / "d")]
    assert cli.main([*base, "--teacher", str(tmp_path / "none.keras")]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert cli.main([*base, "--teacher", teacher_path, "--space", str(space)]) == 2
    assert "search range of kd.temperature is empty, inverted" in capsys.readouterr().err
    for bad in (["--max-trials", "0"], ["--tuner", "grid"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*base, "--teacher", teacher_path, *bad])
        assert exit_info.value.code == 2


STRATEGIES = []  # Module-level, as BUILT.


class StrategyRecorder(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        variable = self.model.student.trainable_variables[0]
        STRATEGIES.append((self.model.distribute_strategy, type(variable.value).__name__))


def test_search_under_a_strategy_builds_every_trial_in_it(setup, tmp_path, mirrored_two_cpus):
    """Keras Tuner takes the strategy as a constructor argument and builds each trial's distiller in its scope."""
    STRATEGIES.clear()
    _, _, teacher_path, config, train, validation = setup
    with mirrored_two_cpus.scope():  # The shared teacher must live in the same strategy.
        teacher = tuning.load_teacher(teacher_path)
    space = tuning.SearchSpace.for_terms(terms.get_list(SPECS))
    hypermodel = tuning.DistillerHyperModel(teacher, ("ds_alexnet", {"width": 0.25}), SPECS, space, config, len(train))
    tuner = tuning.make_tuner(
        "random", hypermodel, 2, 1, str(tmp_path / "s"), "p", overwrite=False, seed=1,
        distribution_strategy=mirrored_two_cpus,
    )  # fmt: skip
    tuner.search(train, validation_data=validation, epochs=1, shuffle=False, verbose=0, callbacks=[StrategyRecorder()])
    assert len(STRATEGIES) == 2
    assert all(strategy is mirrored_two_cpus for strategy, _ in STRATEGIES)
    assert {kind for _, kind in STRATEGIES} == {"MirroredVariable"}
    assert all(np.isfinite(r["val_accuracy"]) for r in tuning.trial_rows(tuner))
