"""kdkeras.benchmark: the rows have sizes and speeds for Keras and TFLite files, and the CLI writes its tables."""

import json

import keras
import numpy as np
import pytest

from kdkeras import artifacts, cli
from kdkeras.benchmark import benchmark_file
from kdkeras.export import tflite_bytes
from kdkeras.models import build_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    keras.utils.set_random_seed(0)
    model = build_model("ds_alexnet", (28, 28, 1), 10, width=0.25)
    artifacts.save_model(model, root / "m.keras")
    (root / "m.tflite").write_bytes(tflite_bytes(model))
    return root


def test_rows_for_keras_and_tflite(files):
    keras_row = benchmark_file(str(files / "m.keras"), threads=1, runs=5)
    tflite_row = benchmark_file(str(files / "m.tflite"), threads=1, runs=5)
    assert keras_row["kind"] == "keras" and keras_row["params"] > 0 and keras_row["flops"] > 0
    assert tflite_row["kind"] == "tflite" and "params" not in tflite_row
    for row in (keras_row, tflite_row):
        assert 0 < row["gzip_bytes"] < row["bytes"]
        assert row["latency_ms_batch1"] > 0 and row["images_per_second_batch32"] > 0 and row["threads"] == 1
    assert np.isfinite(keras_row["latency_ms_batch1"])


def test_cli_writes_json_and_markdown(files, tmp_path, capsys):
    argv = ["benchmark", "--models", str(files / "m.keras"), str(files / "m.tflite"), "--runs", "3"]
    assert cli.main([*argv, "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "benchmark.json").read_text())
    assert [row["kind"] for row in data["rows"]] == ["keras", "tflite"] and "thread(s)" in data["machine"]
    assert "| m.tflite | tflite |" in (tmp_path / "benchmark.md").read_text()
    assert cli.main(["benchmark", "--models", str(tmp_path / "none.tflite"), "--out-dir", str(tmp_path)]) == 2
    assert "model file not found" in capsys.readouterr().err
