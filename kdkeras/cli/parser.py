"""The `kdkeras` argument parser: one subcommand per command, each with its options and help."""

from __future__ import annotations

import argparse
import os

from kdkeras.cli import commands, deploy
from kdkeras.cli.options import (
    add_builder_options,
    add_distribution_options,
    add_method_options,
    add_training_options,
    closed_fraction,
    clusters,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seeds,
    shape,
)
from kdkeras.export_choices import FORMATS, QUANTIZATIONS


def _train_parser(sub) -> argparse.ArgumentParser:
    train = sub.add_parser("train", help="train a teacher, or a student from scratch")
    train.add_argument(
        "--model", default="alexnet",
        help="alexnet, ds_alexnet, resnet, or applications:NAME (a Keras Application: applications:MobileNetV3Small)",
    )  # fmt: skip
    train.add_argument(
        "--weights", default=None, metavar="none|imagenet|FILE",
        help="an applications:NAME model's starting weights: ImageNet's (downloaded once), a weights file, or none",
    )  # fmt: skip
    add_builder_options(train)
    train.add_argument("--out", default=None, help="output .keras file (default saved_models/MODEL.keras)")
    add_training_options(train, "model")
    train.set_defaults(func=commands.cmd_train)
    return train


def _distill_parser(sub) -> argparse.ArgumentParser:
    dist = sub.add_parser("distill", help="distil a student from a trained teacher (TSKD)")
    dist.add_argument("--teacher", required=True, help="trained teacher .keras file")
    dist.add_argument("--student", default="ds_alexnet", help="student architecture (default ds_alexnet)")
    add_builder_options(dist)
    dist.add_argument(
        "--config", default=None, help="JSON or YAML file of option values (e.g. a tuner's best_hparams.json)"
    )
    add_method_options(dist)
    dist.add_argument("--collaborative", action="store_true", help="update the teacher too (mutual learning)")
    dist.add_argument(
        "--teacher-lr",
        type=positive_float,
        default=None,
        help="teacher learning rate in collaborative mode (default lr/100: the trained teacher is refined)",
    )
    dist.add_argument(
        "--teacher-mimicry",
        type=non_negative_float,
        default=None,
        help="collaborative mode: factor on the teacher's imitation of the student (default 0: the trained teacher "
        "learns from the labels only; 1: deep mutual learning)",
    )
    dist.add_argument(
        "--teacher-cache",
        default=None,
        metavar="DIR|auto",
        help="compute the teacher's logits for every epoch once, store them in DIR ('auto': OUT.teacher_cache/) "
        "and reuse them: training at the student's own speed (logit terms only)",
    )
    dist.add_argument(
        "--unlabeled-examples",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also train on the next N training images without their labels: only the teacher teaches on them",
    )
    dist.add_argument(
        "--mixed-fraction",
        type=closed_fraction,
        default=0.0,
        metavar="F",
        help="show this share of the training images as a mix of two, without a label: the student matches the "
        "teacher between the images too (function matching)",
    )
    dist.add_argument("--teacher-out", default=None, help="where to save the updated teacher (collaborative)")
    dist.add_argument("--out", default=None, help="output .keras file (default saved_models/STUDENT_distilled.keras)")
    add_training_options(dist, "student")
    dist.set_defaults(func=commands.cmd_distill)
    return dist


def _evaluate_parser(sub) -> argparse.ArgumentParser:
    ev = sub.add_parser("evaluate", help="accuracy, loss and per-class accuracy of a saved model")
    ev.add_argument("--model", required=True, help=".keras file")
    ev.add_argument("--dataset", default="fashion_mnist")
    ev.add_argument("--split", choices=("train", "validation", "test"), default="test")
    ev.add_argument("--batch-size", type=positive_int, default=256)
    ev.add_argument("--max-examples", type=positive_int, default=None)
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=commands.cmd_evaluate)
    return ev


def _info_parser(sub) -> argparse.ArgumentParser:
    info = sub.add_parser("info", help="parameters, FLOPs and file size of a model file or architecture")
    info.add_argument("--model", required=True, help=".keras file, or an architecture name")
    add_builder_options(info)
    info.add_argument("--input-shape", type=shape, default=(28, 28, 1), help="for an architecture name")
    info.add_argument("--num-classes", type=positive_int, default=10, help="for an architecture name")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=commands.cmd_info)
    return info


def _tune_parser(sub) -> argparse.ArgumentParser:
    tune = sub.add_parser("tune", help="Keras Tuner search of temperature, loss weights and learning rate")
    tune.add_argument("--teacher", required=True, help="trained teacher .keras file (loaded once, shared)")
    tune.add_argument("--student", default="ds_alexnet")
    add_builder_options(tune)
    add_method_options(tune)
    tune.add_argument("--dataset", default="fashion_mnist")
    tune.add_argument("--data-dir", default=None)
    tune.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random")
    tune.add_argument("--max-trials", type=positive_int, default=12)
    tune.add_argument("--epochs-per-trial", type=positive_int, default=2)
    tune.add_argument("--max-train-examples", type=positive_int, default=10000)
    tune.add_argument("--batch-size", type=positive_int, default=128)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument(
        "--teacher-cache",
        default=None,
        metavar="DIR|auto",
        help="compute the teacher's logits once for all trials (logit terms only); 'auto': DIRECTORY/teacher_cache",
    )
    tune.add_argument(
        "--space", default=None, help="JSON/YAML narrowing searched ranges, e.g. {kd.temperature: [2, 10]}"
    )
    tune.add_argument("--directory", default="runs/tune", help="where trials, reports and logs go")
    tune.add_argument("--project-name", default="tskd")
    tune.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    tune.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    add_distribution_options(tune)
    tune.set_defaults(func=commands.cmd_tune)
    return tune


def _export_parser(sub) -> argparse.ArgumentParser:
    exp = sub.add_parser("export", help="SavedModel or TFLite export, verified on the test set")
    exp.add_argument("--model", required=True, help=".keras file")
    exp.add_argument("--format", choices=FORMATS, default="tflite")
    exp.add_argument("--quantize", choices=QUANTIZATIONS, default="none")
    exp.add_argument("--out", required=True, help=".tflite file, or SavedModel folder")
    exp.add_argument("--dataset", default="fashion_mnist", help="test data for the verification")
    exp.add_argument("--data-dir", default=None)
    exp.add_argument("--max-drop", type=non_negative_float, default=1.0, help="allowed accuracy drop (points)")
    exp.add_argument("--max-test-examples", type=positive_int, default=None)
    exp.add_argument("--representative-samples", type=positive_int, default=200, help="int8 calibration images")
    exp.add_argument(
        "--cascade",
        action="store_true",
        help="a multi-exit student as one TFLite segment per exit in folder OUT (--quantize none or int8), the "
        "threshold chosen on validation images",
    )
    exp.set_defaults(func=deploy.cmd_export)
    return exp


def _compress_parser(sub) -> argparse.ArgumentParser:
    comp = sub.add_parser("compress", help="prune, quantization-aware train or cluster a student (tfmot) → TFLite")
    comp.add_argument("--model", required=True, help="trained student .keras file")
    comp.add_argument("--teacher", required=True, help="teacher .keras file (soft targets while fine-tuning)")
    how = comp.add_mutually_exclusive_group(required=True)
    how.add_argument("--prune", type=fraction, default=None, metavar="SPARSITY", help="magnitude pruning, e.g. 0.5")
    how.add_argument("--qat", action="store_true", help="quantization-aware training")
    how.add_argument("--cluster", type=clusters, default=None, metavar="K", help="weight clustering into K centroids")
    comp.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default=None,
        help="TFLite quantization (default: none; dynamic for --qat)",
    )
    comp.add_argument("--out", required=True, help=".tflite file")
    comp.add_argument("--dataset", default="fashion_mnist")
    comp.add_argument("--data-dir", default=None)
    comp.add_argument("--epochs", type=positive_int, default=2, help="fine-tuning epochs")
    comp.add_argument("--lr", type=positive_float, default=1e-4)
    comp.add_argument("--batch-size", type=positive_int, default=128)
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--max-train-examples", type=positive_int, default=None)
    comp.add_argument("--max-test-examples", type=positive_int, default=None)
    comp.add_argument("--temperature", type=positive_float, default=4.0)
    comp.add_argument("--alpha", type=non_negative_float, default=0.5)
    comp.add_argument("--beta", type=non_negative_float, default=0.5)
    comp.add_argument("--max-drop", type=non_negative_float, default=1.0, help="allowed accuracy drop (points)")
    comp.add_argument("--representative-samples", type=positive_int, default=200)
    comp.add_argument("--backup-dir", default=None, help="fine-tuning checkpoints (default OUT.backup/, 'none')")
    comp.set_defaults(func=deploy.cmd_compress)
    return comp


def _benchmark_parser(sub) -> argparse.ArgumentParser:
    bench = sub.add_parser(
        "benchmark", help="size, latency and throughput of .keras and .tflite files (per exit for a cascade folder)"
    )
    bench.add_argument("--models", nargs="+", required=True)
    bench.add_argument("--threads", type=positive_int, default=1)
    bench.add_argument("--runs", type=positive_int, default=50)
    bench.add_argument("--out-dir", default=os.path.join("experiments", "results"))
    bench.set_defaults(func=deploy.cmd_benchmark)
    return bench


def _demo_parser(sub) -> argparse.ArgumentParser:
    demo = sub.add_parser("demo", help="a student from scratch and a distilled student on Fashion-MNIST")
    demo.add_argument("--out-dir", default=os.path.join("saved_models", "demo"))
    # Defaults of None: run_demo's own defaults are the demo's budget.
    demo.add_argument("--labeled-examples", type=positive_int, default=None, help="labeled training images")
    demo.add_argument("--unlabeled-examples", type=non_negative_int, default=None, help="images without labels")
    demo.add_argument("--student-epochs", type=positive_int, default=None)
    demo.add_argument("--teacher", default=None, help="the trained teacher (default: the committed ResNet-20)")
    demo.add_argument("--seed", type=int, default=None)
    demo.set_defaults(func=commands.cmd_demo)
    return demo


def _experiment_parser(sub) -> argparse.ArgumentParser:
    experiment = sub.add_parser(
        "experiment", help="run a YAML experiment (teacher + rows of methods), resumable; writes the comparison table"
    )
    # Not named "config": that is the option-file argument of other commands (see _apply_config_file).
    experiment.add_argument("path", metavar="CONFIG", help="experiment YAML, e.g. experiments/fashion_mnist.yaml")
    experiment.add_argument("--budget", choices=("quick", "full"), default="quick", help="the config's budget to run")
    experiment.add_argument(
        "--rows",
        default=None,
        help="comma-separated row names to run (default all); 'teacher' or 'teacher-NAME' trains only that teacher",
    )
    experiment.add_argument(
        "--seeds",
        type=seeds,
        default=None,
        help="comma-separated seeds to run (default: the config's); the report covers the config's and these",
    )
    experiment.add_argument("--report-only", action="store_true", help="only rebuild the table and plots")
    experiment.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    experiment.set_defaults(func=commands.cmd_experiment)
    return experiment


# In the order `kdkeras --help` lists them.
_COMMANDS = {
    "train": _train_parser,
    "distill": _distill_parser,
    "evaluate": _evaluate_parser,
    "info": _info_parser,
    "tune": _tune_parser,
    "export": _export_parser,
    "compress": _compress_parser,
    "benchmark": _benchmark_parser,
    "demo": _demo_parser,
    "experiment": _experiment_parser,
}


def build_parser() -> argparse.ArgumentParser:
    from kdkeras import __version__

    parser = argparse.ArgumentParser(
        prog="kdkeras", description="Knowledge distillation (TSKD) of small image classifiers with Keras 3."
    )
    parser.add_argument("--version", action="version", version=f"kdkeras {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parser.subcommands = {name: build(sub) for name, build in _COMMANDS.items()}
    return parser
