"""kdkeras.reporting: the Markdown table and machine description every report shares."""

import pytest

from kdkeras.reporting import machine, machine_text, markdown_table


def test_markdown_table_aligns_numeric_columns_right():
    table = markdown_table(["name", "accuracy"], [["kd", "0.9013"], ["scratch", 0.9038]], numeric=[False, True])
    assert table.splitlines() == [
        "| name | accuracy |",
        "|---|---:|",
        "| kd | 0.9013 |",
        "| scratch | 0.9038 |",
    ]


def test_markdown_table_refuses_ragged_rows_and_alignment():
    with pytest.raises(ValueError, match="a row has 1 cells, the header 2"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="2 columns but 1 alignment flags"):
        markdown_table(["a", "b"], [], numeric=[True])


def test_machine_text_names_cores_gpus_and_versions():
    info = machine()
    assert info["cpu_cores"] >= 1 and info["tensorflow"] and info["keras"]
    text = machine_text({**info, "cpu_cores": 2, "processor": "x86_64", "gpus": 0})
    assert text.startswith("2 CPU cores (x86_64), no GPU, TensorFlow ")
    assert "1 GPU(s)" in machine_text({**info, "gpus": 1})
