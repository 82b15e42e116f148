"""`make demo` / `kdkeras demo`: a student from scratch, a distilled student and its int8 TFLite export on
Fashion-MNIST, in minutes, next to a strong teacher trained beforehand.

The everyday case distillation serves: a trained model (the committed ResNet-20 of `experiments/fashion_mnist.yaml`,
0.947 test accuracy) and a small labeled set (1,000 images) beside a larger pile of images without labels (the next
9,000 training images). The student from scratch can learn from the 1,000 labeled images only; the distilled
student (the default method, kd_t1) also learns the teacher's answers on the 9,000 unlabeled ones. The demo is an
experiment (`demo_config`) run by the experiment runner, so a killed demo continues where it stopped when it is
run again, and it writes the runner's report (the paired comparison, curves) beside its own table.
"""

from __future__ import annotations

import os
import shutil
import time

from kdkeras import artifacts
from kdkeras.data import load_dataset
from kdkeras.experiments import Experiment, check_config
from kdkeras.experiments.records import read_json
from kdkeras.export import export_model, representative_images
from kdkeras.presets import DEFAULT_PRESET, PRESETS
from kdkeras.reporting import machine_text, markdown_table

SEED = 0
# The demo's teacher: experiments/fashion_mnist.yaml's ResNet-20 (273 k parameters), committed with the repository.
TEACHER = os.path.join("saved_models", "experiments", "fashion_mnist", "full", "teacher.keras")
# Both students' training settings: two augmentation views, so the teacher cache holds 2 epochs of logits, not 10
# (seed 0's distilled validation accuracy 0.8208 against 0.8227 with a new view every epoch, for about 40 % of the
# demo's time on 2 cores: experiments/results/demo_transfer.md); 2,000 validation images of the 6,000 held out.
TRAINING = {"augment_views": 2, "max_validation_examples": 2000}
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


def demo_config(out_dir: str, labeled: int, unlabeled: int, student_epochs: int, student_width: float, dataset: str,
                teacher: str, seeds=(SEED,), training: dict | None = None) -> dict:  # fmt: skip
    """The demo as an experiment config: the teacher (a file), then two rows of the same student from the same
    initial weights and data order: labels only, and the default method with the unlabeled images too."""
    budget = {"epochs": student_epochs, "max_train_examples": labeled}
    return check_config(
        {
            "name": "demo",
            "description": f"the demo: {labeled} labeled images, and {unlabeled} without labels for the teacher",
            "dataset": dataset,
            "seeds": list(seeds),
            "results_dir": out_dir,
            "models_dir": os.path.join(out_dir, "runs"),
            "teacher": {"file": teacher},
            "student": {"model": "ds_alexnet", "options": {"width": student_width}},
            "training": {**TRAINING, **(training or {})},
            "budgets": {"quick": budget, "full": budget},
            "rows": [
                {"name": "scratch", "label": "student from scratch (ds_alexnet)", "method": "scratch"},
                {
                    "name": "distilled",
                    "label": "distilled student (ds_alexnet)",
                    "method": DEFAULT_PRESET,
                    "unlabeled_examples": unlabeled,
                },
            ],  # fmt: skip
        },
        "the demo",
    )


def run_demo(
    out_dir: str = os.path.join("saved_models", "demo"),
    labeled_examples: int = 1000,
    unlabeled_examples: int = 9000,
    student_epochs: int = 10,
    student_width: float = 0.5,
    dataset: str = "fashion_mnist",
    teacher: str = TEACHER,
    seed: int = SEED,
    training: dict | None = None,
) -> list[dict]:
    """Trains a student from scratch on the labeled images and a distilled student (the default method,
    `kdkeras.presets`, from the same initial weights) on those and the unlabeled ones; evaluates the teacher and
    both students on the full test set and exports the distilled one to int8 TFLite.

    Args:
        out_dir: where the three models (`teacher.keras`, `student_scratch.keras`, `student_distilled.keras`), the
            int8 export, `results.md` and `results.json` are written; the runner's rows go to `runs/`, its report
            and plots to `demo.md`, `demo.json`, `demo-*.png`.
        labeled_examples: training images with their labels (both students).
        unlabeled_examples: the next training images, without labels (the distilled student only).
        student_epochs: epochs of each `ds_alexnet` student (the same for both).
        student_width: the students' width multiplier; 0.5 is 29 k parameters, 9× fewer than the teacher.
        dataset: dataset spec (the teacher must predict its classes).
        teacher: the trained teacher, a `.keras` file.
        seed: the students' seed (weights, data order, augmentation).
        training: training settings for both students over `TRAINING` (`TrainConfig` fields).

    Returns:
        One result row per model.
    """
    batch_size = {**TRAINING, **(training or {})}.get("batch_size", 128)
    if labeled_examples < batch_size:
        raise ValueError(f"--labeled-examples must be at least the batch size, {batch_size}; got {labeled_examples}")
    if not os.path.exists(teacher):
        raise ValueError(f"the demo's teacher {teacher} is not here: run the demo from the repository's root "
                         "folder, or pass --teacher FILE")  # fmt: skip
    start = time.perf_counter()
    print(
        f"kdkeras demo on {dataset}: a student from scratch on {labeled_examples} labeled images, and one distilled "
        f"from {teacher} with method '{DEFAULT_PRESET}' ({PRESETS[DEFAULT_PRESET]['doc']}) on those and "
        f"{unlabeled_examples} images without labels; {student_epochs} epochs each.",
        flush=True,
    )
    config = demo_config(out_dir, labeled_examples, unlabeled_examples, student_epochs, student_width, dataset,
                         teacher, (seed,), training)  # fmt: skip
    experiment = Experiment(config, "full", verbose=2)
    experiment.run()
    experiment.report("kdkeras demo")

    rows = []
    for name, filename in OUTPUTS.items():
        record = read_json(experiment.row_path(name, None if name == "teacher" else seed))
        source = experiment.teacher_path if name == "teacher" else experiment.model_path(name, seed)
        path = os.path.join(out_dir, filename)
        with artifacts.atomic_path(path, ".keras") as tmp:  # Under the stable name the README uses.
            shutil.copyfile(source, tmp)
        label = f"teacher ({record['model']}, trained beforehand)" if name == "teacher" else _row_label(config, name)
        rows.append({**{key: value for key, value in record.items() if key not in ("history", "spec")},
                     "model": label, "file": path, "file_kb": os.path.getsize(path) / 1024})  # fmt: skip

    max_test = {**TRAINING, **(training or {})}.get("max_test_examples")
    rows.append(_export_int8(os.path.join(out_dir, OUTPUTS["distilled"]), dataset, rows[-1], seed, max_test))
    table = format_table(rows)
    wall = time.perf_counter() - start
    note = (
        f"kdkeras demo, {dataset}, seed {seed}: students {student_epochs} epochs on {labeled_examples} labeled "
        f"images, the distilled one also on {unlabeled_examples} without labels; test accuracy on "
        f"{'the full test set (' if max_test is None else 'a seeded sample of '}{rows[0]['test_examples']} test images"
        f"{')' if max_test is None else ''}; {machine_text()}; total wall time {wall:.0f} s (this run; finished "
        f"steps of an earlier run are reused). Runs, curves and the paired comparison: {experiment.report_base}.md. "
        "The distilled student also takes more steps (its epochs cover more images); scratch given as many steps: "
        "experiments/results/demo_transfer.md (row scratch_steps)."
    )
    artifacts.write_text(os.path.join(out_dir, "results.md"), f"{table}\n\n{note}\n")
    artifacts.write_json(os.path.join(out_dir, "results.json"), {"rows": rows, "note": note, "wall_seconds": wall})
    print(f"\n{table}\n\n{note}")
    return rows


def _export_int8(model_path: str, dataset: str, distilled: dict, seed: int, max_test_examples=None) -> dict:
    """The distilled student as full-integer TFLite, its accuracy verified on the test set (the first
    `max_test_examples` images of the students' seeded sample): the table's last row."""
    print("\n[export] distilled student → TFLite int8, verified on the test set", flush=True)
    test, info = load_dataset(dataset, "test", 256, max_examples=max_test_examples, seed=seed)
    train, _ = load_dataset(dataset, "train", 256, shuffle=True, seed=seed)
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
