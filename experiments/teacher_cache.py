"""What the teacher-output cache buys: distillation steps with cached logits against live ones and against the
student's own training step, on the same pair, in one run, alternating; and what the registry redesign costs.

Run:
    .venv/bin/python experiments/teacher_cache.py [--steps 20] [--rounds 5] [--batch-size 128]

Writes experiments/results/teacher_cache.{json,md}. Each round times, one after the other, every configuration
below (`--steps` steps after warm-up, random 28×28×1 images); the reported figure is the median over the rounds,
so a drift of the machine's speed affects all configurations alike:

- the student's own train step (ds_alexnet, labels only);
- the distill step with the live teacher (CE + KD), with the pre-redesign `Distiller` (its source as committed
  before the term registry, loaded from git when available) and with the current one;
- the distill step reading cached logits (the batch carries them, as the cached pipeline delivers them);
- the same live and cached steps with a bigger teacher (ResNet-56), where the teacher's forward pass dominates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kdkeras import artifacts  # noqa: E402
from kdkeras.distiller import Distiller  # noqa: E402
from kdkeras.models import build_model  # noqa: E402
from kdkeras.reporting import machine as machine_facts  # noqa: E402
from kdkeras.reporting import machine_text  # noqa: E402
from kdkeras.training import compile_classifier  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
SHAPE = (28, 28, 1)
# The last commit before distillation methods became registered terms.
PRE_REDESIGN = "21229ba"


def _old_distiller_class():
    """The `Distiller` as committed before the redesign, or None outside a git checkout that has it."""
    try:
        source = subprocess.run(
            ["git", "show", f"{PRE_REDESIGN}:kdkeras/distiller.py"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("kdkeras_distiller_pre_redesign")
    # Not registered for serialization again: the current class holds that name.
    exec(source.replace('@keras.saving.register_keras_serializable(package="kdkeras")\n', ""), module.__dict__)
    return module.Distiller


def _timer(step, batch, steps: int):
    for _ in range(3):  # Warm-up: tracing and first-call allocations.
        step(*batch)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            result = step(*batch)
        keras.ops.convert_to_numpy(tf.nest.flatten(result)[0])  # Wait for the last step.
        return steps * len(batch[0]) / (time.perf_counter() - start)

    return run


def build_configurations(steps: int, batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch_size, *SHAPE)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, batch_size).astype(np.int32))
    keras.utils.set_random_seed(0)
    student = build_model("ds_alexnet", SHAPE, 10)
    compile_classifier(student, "adam")
    timers = {"student_train": _timer(student.train_on_batch, (x, y), steps)}
    for teacher_name, options in (("alexnet", {}), ("resnet56", {"depth": 56})):
        teacher = build_model("resnet" if options else "alexnet", SHAPE, 10, **options)
        distiller = Distiller(teacher, build_model("ds_alexnet", SHAPE, 10), ["ce", "kd"])
        distiller.compile("adam")
        cached = {"labels": y, "teacher_logits": tf.constant(teacher(x, training=False).numpy().astype(np.float16))}
        cached["teacher_logits"] = tf.cast(cached["teacher_logits"], tf.float32)
        timers[f"{teacher_name}_live"] = _timer(distiller.train_on_batch, (x, y), steps)
        timers[f"{teacher_name}_cached"] = _timer(distiller.train_on_batch, (x, cached), steps)
        if teacher_name == "alexnet":
            old = _old_distiller_class()
            if old is not None:
                previous = old(teacher, build_model("ds_alexnet", SHAPE, 10), alpha=0.1, beta=0.9, gamma=0.0)
                previous.compile("adam")
                timers["alexnet_live_pre_redesign"] = _timer(previous.train_on_batch, (x, y), steps)
    return timers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    timers = build_configurations(args.steps, args.batch_size)
    samples = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, run in timers.items():  # Alternating: one of each per round.
            samples[name].append(run())
    rates = {name: statistics.median(values) for name, values in samples.items()}
    machine = machine_text(machine_facts())
    command = "python " + " ".join(["experiments/teacher_cache.py", *sys.argv[1:]])
    result = {
        "command": command,
        "machine": machine,
        "batch_size": args.batch_size,
        "student_train_images_per_s": rates["student_train"],
        "distill_live_images_per_s": rates["alexnet_live"],
        "distill_cached_images_per_s": rates["alexnet_cached"],
        "cached_vs_student": rates["alexnet_cached"] / rates["student_train"],
        "cached_vs_live": rates["alexnet_cached"] / rates["alexnet_live"],
        "resnet56_teacher": {
            "distill_live_images_per_s": rates["resnet56_live"],
            "distill_cached_images_per_s": rates["resnet56_cached"],
            "cached_vs_live": rates["resnet56_cached"] / rates["resnet56_live"],
        },
        "samples_images_per_s": samples,
    }
    if "alexnet_live_pre_redesign" in rates:
        result["distill_live_pre_redesign_images_per_s"] = rates["alexnet_live_pre_redesign"]
        result["registry_vs_pre_redesign"] = rates["alexnet_live"] / rates["alexnet_live_pre_redesign"]
    os.makedirs(RESULTS, exist_ok=True)
    artifacts.write_json(os.path.join(RESULTS, "teacher_cache.json"), result)
    lines = [
        "# Teacher-output cache: distillation step throughput",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}; batch {args.batch_size}; median of {args.rounds} alternating rounds of {args.steps} "
        "steps",
        "",
        "| step | images/s | vs student's own step | vs live distill |",
        "|---|---:|---:|---:|",
    ]
    student = rates["student_train"]
    names = {
        "student_train": "ds_alexnet train step (labels only)",
        "alexnet_live_pre_redesign": "distill alexnet → ds_alexnet, live teacher, pre-redesign Distiller",
        "alexnet_live": "distill alexnet → ds_alexnet, live teacher (terms ce + kd)",
        "alexnet_cached": "distill alexnet → ds_alexnet, cached teacher logits",
        "resnet56_live": "distill resnet56 → ds_alexnet, live teacher",
        "resnet56_cached": "distill resnet56 → ds_alexnet, cached teacher logits",
    }
    for name, label in names.items():
        if name not in rates:
            continue
        live = rates["resnet56_live" if name.startswith("resnet56") else "alexnet_live"]
        lines.append(f"| {label} | {rates[name]:.0f} | {rates[name] / student:.2f} | {rates[name] / live:.2f} |")
    artifacts.write_text(os.path.join(RESULTS, "teacher_cache.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
