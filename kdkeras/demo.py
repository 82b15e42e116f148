"""`make demo` / `kdkeras demo`: teacher, student from scratch, distilled student (the default method) and its
int8 TFLite export on Fashion-MNIST, in minutes.

The budget is deliberately reduced (a subset of the training data, a few epochs) so the whole demo runs in well
under 10 minutes on 2 CPU cores; the numbers it prints are for that budget, not the method's best.
"""

from __future__ import annotations

import os
import time

import keras

from kdkeras import artifacts
from kdkeras.data import load_dataset
from kdkeras.export import export_model, representative_images
from kdkeras.models import build_model
from kdkeras.presets import DEFAULT_PRESET, PRESETS
from kdkeras.reporting import machine_text, markdown_table
from kdkeras.training import TrainConfig, run_training

SEED = 0
# The demo's teacher: a ResNet-20, trained with the students' own recipe (Adam, cosine decay).
TEACHER = {"model": "resnet", "options": {"depth": 20}}


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
        out_dir: where the three models, `results.md` and `results.json` are written.
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
        f"epochs, students {student_epochs} epochs) so that it runs in minutes on a CPU.",
        flush=True,
    )
    base = dict(dataset=dataset, max_train_examples=train_examples, seed=SEED, verbose=2, batch_size=128)
    teacher_config = TrainConfig(epochs=teacher_epochs, **base)
    student_config = TrainConfig(epochs=student_epochs, **base)
    test, info = load_dataset(dataset, "test", 256)  # For the export's verification.
    rows = []

    def record(label: str, model: keras.Model, result, filename: str) -> None:
        path = os.path.join(out_dir, filename)
        artifacts.save_model(model, path)
        summary = {key: value for key, value in result.record.items() if key != "history"}  # The table's row.
        rows.append({**summary, "model": label, "file": path, "file_kb": os.path.getsize(path) / 1024})
        print(f"-> {label}: test accuracy {summary['test_accuracy']:.4f}, saved {path}", flush=True)

    print(f"\n[1/3] teacher: {TEACHER['model']}{TEACHER['options'].get('depth', '')}", flush=True)
    keras.utils.set_random_seed(SEED)
    teacher = build_model(TEACHER["model"], info.input_shape, info.num_classes, **TEACHER["options"])
    record(f"teacher ({teacher.name})", teacher, run_training(teacher, teacher_config), "teacher.keras")

    print("\n[2/3] student from scratch: ds_alexnet, labels only", flush=True)
    keras.utils.set_random_seed(SEED)
    scratch = build_model("ds_alexnet", info.input_shape, info.num_classes, width=student_width)
    result = run_training(scratch, student_config)
    record("student from scratch (ds_alexnet)", scratch, result, "student_scratch.keras")

    print(f"\n[3/3] distilled student: ds_alexnet, method '{DEFAULT_PRESET}' ({PRESETS[DEFAULT_PRESET]['doc']})",
          flush=True)  # fmt: skip
    keras.utils.set_random_seed(SEED)  # The same initial weights as the student from scratch.
    student = build_model("ds_alexnet", info.input_shape, info.num_classes, width=student_width)
    result = run_training(student, student_config, teacher)
    record("distilled student (ds_alexnet)", student, result, "student_distilled.keras")

    print("\n[export] distilled student → TFLite int8, verified on the test set", flush=True)
    train, _ = load_dataset(dataset, "train", 256, shuffle=True, seed=SEED)
    tflite_path = os.path.join(out_dir, "student_distilled_int8.tflite")
    verified = export_model(
        student,
        tflite_path,
        "tflite",
        test,
        info.class_names,
        quantize="int8",
        representative=representative_images(train, 200, info.input_shape),
    )
    rows.append(
        {
            **{key: rows[-1][key] for key in ("params", "flops")},
            "model": "distilled student, TFLite int8",
            "test_accuracy": verified["exported_accuracy"],
            "train_seconds": None,
            "file": tflite_path,
            "file_kb": verified["bytes"] / 1024,
        }
    )

    table = format_table(rows)
    wall = time.perf_counter() - start
    machine = machine_text()
    note = (
        f"kdkeras demo, {dataset}, {train_examples} training images, teacher {teacher_epochs} epochs, students "
        f"{student_epochs} epochs; test accuracy on the full test set ({info.num_examples} images); {machine}; "
        f"total wall time {wall:.0f} s."
    )
    artifacts.write_text(os.path.join(out_dir, "results.md"), f"{table}\n\n{note}\n")
    artifacts.write_json(os.path.join(out_dir, "results.json"), {"rows": rows, "note": note, "wall_seconds": wall})
    print(f"\n{table}\n\n{note}")
    return rows
