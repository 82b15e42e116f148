"""`make demo` / `kdkeras demo`: teacher, student from scratch, distilled student (the default method) and its
int8 TFLite export on Fashion-MNIST, in minutes.

The demo is an experiment (`demo_config`) run by the experiment runner, so a killed demo continues where it stopped
when it is run again, and it writes the runner's report and plots beside its own table. The budget is deliberately
reduced (a subset of the training data, a few epochs) so the whole demo runs in well under 10 minutes on 2 CPU
cores; the numbers it prints are for that budget, not the method's best.
"""

from __future__ import annotations

import os
import shutil
import time

from kdkeras import artifacts
from kdkeras.data import load_dataset
from kdkeras.experiments import Experiment, check_config
from kdkeras.experiments.runner import read_json
from kdkeras.export import export_model, representative_images
from kdkeras.presets import DEFAULT_PRESET, PRESETS
from kdkeras.reporting import machine_text, markdown_table

SEED = 0
# The demo's teacher: a ResNet-20, trained with the students' own recipe (Adam, cosine decay).
TEACHER = {"model": "resnet", "options": {"depth": 20}}
# The runner's row names, and the stable file names the demo gives their models in its output folder.
OUTPUTS = {"teacher": "teacher.keras", "scratch": "student_scratch.keras", "distilled": "student_distilled.keras"}


def format_table(rows: list[dict]) -> str:
    """A Markdown table of `model`, `params`, `flops`, `test_accuracy`, `file_kb`, `train_seconds` rows."""
    header = ["model", "parameters", "MFLOPs", "test accuracy", "file (KB)", "train time (s)"]
    cells = [
        [
            row["model"], f"{row['params']:,}", f"{row['flops'] / 1e6:.1f}", f"{row['test_accuracy']:.4f}",
            f"{row['file_kb']:.0f}", f"{row['train_seconds']:.0f}" if row.get("train_seconds") is not None else "–",
        ]
        for row in rows
    ]  # fmt: skip
    return markdown_table(header, cells, numeric=[False] + [True] * 5)


def demo_config(
    out_dir: str, train_examples: int, teacher_epochs: int, student_epochs: int, student_width: float, dataset: str
) -> dict:
    """The demo as an experiment config: the teacher, then two rows of the same student from the same initial
    weights and data order: labels only, and the default distillation method."""
    budget = {"epochs": student_epochs, "teacher_epochs": teacher_epochs, "max_train_examples": train_examples}
    return check_config(
        {
            "name": "demo",
            "description": "the demo: does the default distillation method beat the same student trained alone?",
            "dataset": dataset,
            "seeds": [SEED],
            "results_dir": out_dir,
            "models_dir": os.path.join(out_dir, "runs"),
            "teacher": {**TEACHER, "seed": SEED},
            "student": {"model": "ds_alexnet", "options": {"width": student_width}},
            "budgets": {"quick": budget, "full": budget},
            "rows": [
                {"name": "scratch", "label": "student from scratch (ds_alexnet)", "method": "scratch"},
                {"name": "distilled", "label": "distilled student (ds_alexnet)", "method": DEFAULT_PRESET},
            ],
        },
        "the demo",
    )


def run_demo(
    out_dir: str = os.path.join("saved_models", "demo"),
    train_examples: int = 10000,
    teacher_epochs: int = 6,
    student_epochs: int = 10,
    student_width: float = 0.5,
    dataset: str = "fashion_mnist",
) -> list[dict]:
    """Trains the teacher, a student from scratch and a distilled student (the default method, `kdkeras.presets`,
    from the same initial weights); evaluates all three on the full test set.

    Args:
        out_dir: where the three models (`teacher.keras`, `student_scratch.keras`, `student_distilled.keras`), the
            int8 export, `results.md` and `results.json` are written; the runner's rows go to `runs/`, its report
            and plots to `demo.md`, `demo.json`, `demo-*.png`.
        train_examples: training examples used (a subset, for speed).
        teacher_epochs: epochs of the teacher, a ResNet-20 (273 k parameters): on this CPU it trains about twice
            as fast per image as the 2.2 M-parameter `alexnet` and ends more accurate in less time
            (experiments/results/demo_scale.md).
        student_epochs: epochs of each `ds_alexnet` student (the same for both).
        student_width: the students' width multiplier. 0.5 (29 k parameters, 9× fewer than the teacher): a
            larger gap to the teacher leaves more to transfer, and its steps are cheap enough for 10 epochs.
        dataset: dataset spec.

    Returns:
        One result row per model.
    """
    start = time.perf_counter()
    print(
        f"kdkeras demo on {dataset}: reduced budget ({train_examples} training images, teacher {teacher_epochs} "
        f"epochs, students {student_epochs} epochs) so that it runs in minutes on a CPU; method "
        f"'{DEFAULT_PRESET}' ({PRESETS[DEFAULT_PRESET]['doc']}).",
        flush=True,
    )
    config = demo_config(out_dir, train_examples, teacher_epochs, student_epochs, student_width, dataset)
    experiment = Experiment(config, "full", verbose=2)
    experiment.run()
    experiment.report("kdkeras demo")

    rows = []
    for name, filename in OUTPUTS.items():
        record = read_json(experiment.row_path(name, None if name == "teacher" else SEED))
        source = experiment.teacher_path if name == "teacher" else experiment.model_path(name, SEED)
        path = os.path.join(out_dir, filename)
        with artifacts.atomic_path(path, ".keras") as tmp:  # Under the stable name the README uses.
            shutil.copyfile(source, tmp)
        label = f"teacher ({record['model']})" if name == "teacher" else _row_label(config, name)
        rows.append({**{key: value for key, value in record.items() if key not in ("history", "spec")},
                     "model": label, "file": path, "file_kb": os.path.getsize(path) / 1024})  # fmt: skip

    rows.append(_export_int8(os.path.join(out_dir, OUTPUTS["distilled"]), dataset, rows[-1]))
    table = format_table(rows)
    wall = time.perf_counter() - start
    note = (
        f"kdkeras demo, {dataset}, {train_examples} training images, teacher {teacher_epochs} epochs, students "
        f"{student_epochs} epochs; test accuracy on the full test set ({rows[0]['test_examples']} images); "
        f"{machine_text()}; total wall time {wall:.0f} s (this run; finished steps of an earlier run are reused). "
        f"Runs, curves and the paired comparison: {experiment.report_base}.md."
    )
    artifacts.write_text(os.path.join(out_dir, "results.md"), f"{table}\n\n{note}\n")
    artifacts.write_json(os.path.join(out_dir, "results.json"), {"rows": rows, "note": note, "wall_seconds": wall})
    print(f"\n{table}\n\n{note}")
    return rows


def _export_int8(model_path: str, dataset: str, distilled: dict) -> dict:
    """The distilled student as full-integer TFLite, its accuracy verified on the test set: the table's last row."""
    print("\n[export] distilled student → TFLite int8, verified on the test set", flush=True)
    test, info = load_dataset(dataset, "test", 256)
    train, _ = load_dataset(dataset, "train", 256, shuffle=True, seed=SEED)
    tflite_path = os.path.join(os.path.dirname(model_path), "student_distilled_int8.tflite")
    verified = export_model(
        artifacts.load_model(model_path),
        tflite_path,
        "tflite",
        test,
        info.class_names,
        quantize="int8",
        representative=representative_images(train, 200, info.input_shape),
    )
    return {
        "params": distilled["params"],
        "flops": distilled["flops"],
        "model": "distilled student, TFLite int8",
        "test_accuracy": verified["exported_accuracy"],
        "test_examples": info.num_examples,
        "train_seconds": None,
        "file": tflite_path,
        "file_kb": verified["bytes"] / 1024,
    }


def _row_label(config: dict, name: str) -> str:
    return next(row["label"] for row in config["rows"] if row["name"] == name)
