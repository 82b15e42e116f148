"""The `kdkeras` command line: train, distill, tune, evaluate, info, export, compress, benchmark, demo, experiment.

Every failure the user can cause ends in one line on stderr, `kdkeras: error: …`, and exit status 2 (1 for an
internal error, with `--debug` showing its traceback), never a bare traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter off the user's terminal, unless the user
# asked for a level (then `cli_runtime.import_tensorflow_quietly` hides nothing either).
_TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kdkeras.commands import (  # noqa: E402  # After the environment is set; imports no TensorFlow itself.
    cmd_benchmark,
    cmd_compress,
    cmd_demo,
    cmd_distill,
    cmd_evaluate,
    cmd_experiment,
    cmd_export,
    cmd_info,
    cmd_train,
    cmd_tune,
    parse_feature_pairs,
)
from kdkeras.config_files import read_mapping  # noqa: E402
from kdkeras.presets import DEFAULT_PRESET, PRESETS  # noqa: E402

# The built-in terms, for the help text (kdkeras.terms.available() adds user-registered ones; a test keeps this
# list equal to the built-in registry).
BUILT_IN_TERMS = ("ce", "kd", "dkd", "dist", "hint", "attention")

# --------------------------------------------------------------------------------------------------- helpers


def _add_method_options(parser) -> None:
    """The options that choose the distillation terms (`distill`, `tune`)."""
    parser.add_argument(
        "--method",
        default=None,
        help=f"a preset term list: {', '.join(PRESETS)} (default {DEFAULT_PRESET}; see README, 'Methods')",
    )
    parser.add_argument(
        "--term",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="add a term, or change the preset's term of that name, e.g. --term hint:weight=0.5 "
        f"(repeatable; terms: {', '.join(BUILT_IN_TERMS)})",
    )
    parser.add_argument("--temperature", type=_positive_float, default=None, help="T of every term that has one")
    parser.add_argument(
        "--alpha", type=_non_negative_float, default=None, help="classic TSKD sum: weight of the label loss"
    )
    parser.add_argument(
        "--beta", type=_non_negative_float, default=None, help="classic TSKD sum: weight of the soft-target loss"
    )
    parser.add_argument(
        "--gamma",
        type=_non_negative_float,
        default=None,
        help="classic TSKD sum: weight of the feature loss (default 1 with feature pairs)",
    )
    parser.add_argument(
        "--feature-pairs",
        default=None,
        help="TEACHER:STUDENT layer pairs of the feature terms, e.g. stage3:stage3,stage5:stage5; 'auto' = deepest "
        "stages; 'none' = drop feature terms",
    )
    parser.add_argument(
        "--feature-loss", choices=("hint", "attention"), default=None, help="classic sum's feature term"
    )
    # Set only from --config files (a tuner's best_hparams.json holds the full term list).
    parser.set_defaults(terms=None)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _clusters(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}")
    return value


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("must name at least one seed")
    return seeds


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH,CHANNELS, got {text}")
    return parts


# --------------------------------------------------------------------------------------------------- parser


def _add_training_options(parser, run_name_attr: str) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="fashion_mnist (default, offline), tfds:NAME, folder:PATH or idx:PATH",
    )
    group.add_argument("--epochs", type=_positive_int, default=10)
    group.add_argument("--batch-size", type=_positive_int, default=128)
    group.add_argument("--lr", type=_positive_float, default=2e-3, help="peak learning rate (cosine decay)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--max-train-examples", type=_positive_int, default=None, help="train on N examples only")
    group.add_argument("--validation-fraction", type=float, default=0.1)
    group.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop/flip")
    group.add_argument("--flip", dest="flip", action="store_true", default=None, help="force horizontal flips")
    group.add_argument("--no-flip", dest="flip", action="store_false", help="never flip")
    group.add_argument("--data-dir", default=None, help="TFDS data directory")
    group.add_argument("--logdir", default=None, help="TensorBoard logs (default runs/…; 'none' for no logs)")
    group.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    group.add_argument(
        "--backup-dir",
        default=None,
        help="checkpoints for resuming an interrupted run (default OUT.backup/, 'none' for none); "
        "re-run the same command to resume",
    )
    group.add_argument("--checkpoint-steps", type=_positive_int, default=None, help="also checkpoint every N steps")
    _add_distribution_options(parser)
    parser.set_defaults(run_name_attr=run_name_attr)  # fmt: skip


def _add_distribution_options(parser) -> None:
    from kdkeras.distribute import BATCH_SCALING, PRECISIONS, STRATEGIES

    group = parser.add_argument_group("distribution (see README: Scaling out)")
    group.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="tf.distribute strategy: auto = mirrored over all GPUs when there are several, else one device; "
        "multiworker reads TF_CONFIG",
    )
    group.add_argument(
        "--batch-scaling",
        choices=BATCH_SCALING,
        default="none",
        help="none: --batch-size is the global batch, --lr as given (same result as one device); linear: "
        "--batch-size per replica, global batch and lr × replicas",
    )
    group.add_argument(
        "--sync-bn",
        choices=("auto", "on", "off"),
        default="auto",
        help="synchronized batch normalization across replicas (auto: on with more than one replica)",
    )
    group.add_argument(
        "--mixed-precision",
        nargs="?",
        const="auto",
        default=None,
        choices=PRECISIONS,
        help="mixed precision: float16 on GPU, bfloat16 on CPU/TPU (auto), or the policy named; losses stay float32",
    )


def _add_builder_options(parser) -> None:
    parser.add_argument("--width", type=_positive_float, default=1.0, help="width multiplier")
    parser.add_argument("--depth", type=int, default=None, help="depth (resnet: 6n+2)")


def build_parser() -> argparse.ArgumentParser:
    from kdkeras import __version__

    parser = argparse.ArgumentParser(
        prog="kdkeras", description="Knowledge distillation (TSKD) of small image classifiers with Keras 3."
    )
    parser.add_argument("--version", action="version", version=f"kdkeras {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a teacher, or a student from scratch")
    train.add_argument("--model", default="alexnet", help="alexnet, ds_alexnet or resnet")
    _add_builder_options(train)
    train.add_argument("--out", default=None, help="output .keras file (default saved_models/MODEL.keras)")
    _add_training_options(train, "model")
    train.set_defaults(func=cmd_train)

    dist = sub.add_parser("distill", help="distil a student from a trained teacher (TSKD)")
    dist.add_argument("--teacher", required=True, help="trained teacher .keras file")
    dist.add_argument("--student", default="ds_alexnet", help="student architecture (default ds_alexnet)")
    _add_builder_options(dist)
    dist.add_argument(
        "--config", default=None, help="JSON or YAML file of option values (e.g. a tuner's best_hparams.json)"
    )
    _add_method_options(dist)
    dist.add_argument("--collaborative", action="store_true", help="update the teacher too (mutual learning)")
    dist.add_argument(
        "--teacher-lr",
        type=_positive_float,
        default=None,
        help="teacher learning rate in collaborative mode (default lr/10)",
    )
    dist.add_argument(
        "--teacher-cache",
        default=None,
        metavar="DIR|auto",
        help="compute the teacher's logits for every epoch once, store them in DIR ('auto': OUT.teacher_cache/) "
        "and reuse them: training at the student's own speed (logit terms only)",
    )
    dist.add_argument("--teacher-out", default=None, help="where to save the updated teacher (collaborative)")
    dist.add_argument("--out", default=None, help="output .keras file (default saved_models/STUDENT_distilled.keras)")
    _add_training_options(dist, "student")
    dist.set_defaults(func=cmd_distill)

    ev = sub.add_parser("evaluate", help="accuracy, loss and per-class accuracy of a saved model")
    ev.add_argument("--model", required=True, help=".keras file")
    ev.add_argument("--dataset", default="fashion_mnist")
    ev.add_argument("--split", choices=("train", "validation", "test"), default="test")
    ev.add_argument("--batch-size", type=_positive_int, default=256)
    ev.add_argument("--max-examples", type=_positive_int, default=None)
    ev.add_argument("--data-dir", default=None)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_evaluate)

    info = sub.add_parser("info", help="parameters, FLOPs and file size of a model file or architecture")
    info.add_argument("--model", required=True, help=".keras file, or an architecture name")
    _add_builder_options(info)
    info.add_argument("--input-shape", type=_shape, default=(28, 28, 1), help="for an architecture name")
    info.add_argument("--num-classes", type=_positive_int, default=10, help="for an architecture name")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    tune = sub.add_parser("tune", help="Keras Tuner search of temperature, loss weights and learning rate")
    tune.add_argument("--teacher", required=True, help="trained teacher .keras file (loaded once, shared)")
    tune.add_argument("--student", default="ds_alexnet")
    _add_builder_options(tune)
    _add_method_options(tune)
    tune.add_argument("--dataset", default="fashion_mnist")
    tune.add_argument("--data-dir", default=None)
    tune.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random")
    tune.add_argument("--max-trials", type=_positive_int, default=12)
    tune.add_argument("--epochs-per-trial", type=_positive_int, default=2)
    tune.add_argument("--max-train-examples", type=_positive_int, default=10000)
    tune.add_argument("--batch-size", type=_positive_int, default=128)
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
    _add_distribution_options(tune)
    tune.set_defaults(func=cmd_tune)

    exp = sub.add_parser("export", help="SavedModel or TFLite export, verified on the test set")
    exp.add_argument("--model", required=True, help=".keras file")
    exp.add_argument("--format", choices=("saved_model", "tflite"), default="tflite")
    exp.add_argument("--quantize", choices=("none", "float16", "dynamic", "int8"), default="none")
    exp.add_argument("--out", required=True, help=".tflite file, or SavedModel folder")
    exp.add_argument("--dataset", default="fashion_mnist", help="test data for the verification")
    exp.add_argument("--data-dir", default=None)
    exp.add_argument("--max-drop", type=_non_negative_float, default=1.0, help="allowed accuracy drop (points)")
    exp.add_argument("--max-test-examples", type=_positive_int, default=None)
    exp.add_argument("--representative-samples", type=_positive_int, default=200, help="int8 calibration images")
    exp.set_defaults(func=cmd_export)

    comp = sub.add_parser("compress", help="prune, quantization-aware train or cluster a student (tfmot) → TFLite")
    comp.add_argument("--model", required=True, help="trained student .keras file")
    comp.add_argument("--teacher", required=True, help="teacher .keras file (soft targets while fine-tuning)")
    how = comp.add_mutually_exclusive_group(required=True)
    how.add_argument("--prune", type=_fraction, default=None, metavar="SPARSITY", help="magnitude pruning, e.g. 0.5")
    how.add_argument("--qat", action="store_true", help="quantization-aware training")
    how.add_argument("--cluster", type=_clusters, default=None, metavar="K", help="weight clustering into K centroids")
    comp.add_argument(
        "--quantize",
        choices=("none", "float16", "dynamic", "int8"),
        default=None,
        help="TFLite quantization (default: none; dynamic for --qat)",
    )
    comp.add_argument("--out", required=True, help=".tflite file")
    comp.add_argument("--dataset", default="fashion_mnist")
    comp.add_argument("--data-dir", default=None)
    comp.add_argument("--epochs", type=_positive_int, default=2, help="fine-tuning epochs")
    comp.add_argument("--lr", type=_positive_float, default=1e-4)
    comp.add_argument("--batch-size", type=_positive_int, default=128)
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--max-train-examples", type=_positive_int, default=None)
    comp.add_argument("--max-test-examples", type=_positive_int, default=None)
    comp.add_argument("--temperature", type=_positive_float, default=4.0)
    comp.add_argument("--alpha", type=_non_negative_float, default=0.5)
    comp.add_argument("--beta", type=_non_negative_float, default=0.5)
    comp.add_argument("--max-drop", type=_non_negative_float, default=1.0, help="allowed accuracy drop (points)")
    comp.add_argument("--representative-samples", type=_positive_int, default=200)
    comp.add_argument("--backup-dir", default=None, help="fine-tuning checkpoints (default OUT.backup/, 'none')")
    comp.set_defaults(func=cmd_compress)

    bench = sub.add_parser("benchmark", help="size, latency and throughput of .keras and .tflite files")
    bench.add_argument("--models", nargs="+", required=True)
    bench.add_argument("--threads", type=_positive_int, default=1)
    bench.add_argument("--runs", type=_positive_int, default=50)
    bench.add_argument("--out-dir", default=os.path.join("experiments", "results"))
    bench.set_defaults(func=cmd_benchmark)

    demo = sub.add_parser("demo", help="teacher, student from scratch and distilled student on Fashion-MNIST")
    demo.add_argument("--out-dir", default=os.path.join("saved_models", "demo"))
    # Defaults of None: run_demo's own defaults are the demo's budget.
    demo.add_argument("--train-examples", type=_positive_int, default=None, help="training images used")
    demo.add_argument("--teacher-epochs", type=_positive_int, default=None)
    demo.add_argument("--student-epochs", type=_positive_int, default=None)
    demo.set_defaults(func=cmd_demo)
    experiment = sub.add_parser(
        "experiment", help="run a YAML experiment (teacher + rows of methods), resumable; writes the comparison table"
    )
    # Not named "config": that is the option-file argument of other commands (see _apply_config_file).
    experiment.add_argument("path", metavar="CONFIG", help="experiment YAML, e.g. experiments/fashion_mnist.yaml")
    experiment.add_argument("--budget", choices=("quick", "full"), default="quick", help="the config's budget to run")
    experiment.add_argument("--rows", default=None, help="comma-separated row names to run (default all)")
    experiment.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default: the config's)")
    experiment.add_argument("--report-only", action="store_true", help="only rebuild the table and plots")
    experiment.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
    experiment.set_defaults(func=cmd_experiment)
    parser.subcommands = {
        "train": train,
        "distill": dist,
        "evaluate": ev,
        "info": info,
        "tune": tune,
        "export": exp,
        "compress": comp,
        "benchmark": bench,
        "demo": demo,
        "experiment": experiment,
    }
    return parser


def _apply_config_file(parser, args, argv):
    """`distill --config F`: values from F become defaults, so options given on the command line still win."""
    if getattr(args, "config", None) is None:
        return args
    values = read_mapping(args.config)
    known = set(vars(args))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{args.config}: unknown option(s) {', '.join(unknown)}")
    # The file's values pass the same checks as the command line's (`epochs: 1.5` or `lr: .inf` are refused).
    actions = {action.dest: action for action in parser.subcommands[args.command]._actions}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or action.type is None or value is None or isinstance(value, (list, dict)):
            continue
        try:
            values[key] = action.type(str(value))
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"{args.config}: {key}: {error}") from None
    parser.subcommands[args.command].set_defaults(**values)
    return parser.parse_args(argv)


def _finish_defaults(args):
    if hasattr(args, "run_name_attr"):
        args.run_name = getattr(args, args.run_name_attr)
    if getattr(args, "out", "") is None:
        name = args.model if args.command == "train" else f"{args.student}_distilled"
        args.out = os.path.join("saved_models", f"{name}.keras")
    if args.command in ("train", "distill") and not args.out.endswith(".keras"):
        raise ValueError(f"--out must end in .keras, got {args.out}")
    _check_outputs(args)
    if getattr(args, "backup_dir", "") is None:
        args.backup_dir = os.path.splitext(args.out)[0] + ".backup"
    if getattr(args, "teacher_cache", None) == "auto":
        folder = os.path.splitext(args.out)[0] if args.command == "distill" else args.directory
        args.teacher_cache = (
            os.path.join(folder, "teacher_cache") if args.command == "tune" else f"{folder}.teacher_cache"
        )
    if args.command in ("distill", "tune"):
        from kdkeras import terms as terms_lib

        # The term list is resolved and checked before anything loads: a typo fails in a second.
        pairs = args.feature_pairs
        if pairs not in (None, "auto", "none"):
            pairs = parse_feature_pairs(pairs)
        args.term_specs = terms_lib.from_options(
            args.method, args.terms, [terms_lib.parse_term(t) for t in args.term],
            temperature=args.temperature, alpha=args.alpha, beta=args.beta, gamma=args.gamma,
            feature_pairs=pairs, feature_loss=args.feature_loss,
        )  # fmt: skip
        terms_lib.get_list(args.term_specs)
    return args


# Per command: the options naming files it reads, and those naming files it writes.
_INPUT_OPTIONS = ("teacher", "model")
_OUTPUT_OPTIONS = ("out", "teacher_out")


def _check_outputs(args) -> None:
    """Refuses, before anything runs, an output that would replace one of the command's inputs or another output
    (`distill --teacher t.keras --out t.keras` would otherwise leave the student where the teacher was)."""
    inputs = {f"--{name.replace('_', '-')}": getattr(args, name, None) for name in _INPUT_OPTIONS}
    outputs = {f"--{name.replace('_', '-')}": getattr(args, name, None) for name in _OUTPUT_OPTIONS}
    seen = {}
    for option, path in outputs.items():
        if not isinstance(path, str):
            continue
        real = os.path.realpath(path)
        for source, input_path in inputs.items():
            if isinstance(input_path, str) and os.path.realpath(input_path) == real:
                raise ValueError(f"{option} {path} is also the {source} file: the run would overwrite its own input")
        if real in seen:
            raise ValueError(f"{seen[real]} and {option} are the same file ({path}): one would overwrite the other")
        seen[real] = option


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None, as_program: bool | None = None) -> int:
    """The `kdkeras` entry point.

    Args:
        argv: the arguments (default `sys.argv[1:]`).
        as_program: the process is kdkeras' own (default: when `argv` is None, i.e. the console script): a second
            Ctrl-C then always stops it (`cli_runtime.stop_on_second_interrupt`).
    """
    from kdkeras import cli_runtime

    parser = build_parser()
    as_program = argv is None if as_program is None else as_program
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if as_program:
        cli_runtime.stop_on_second_interrupt()
    cli_runtime.import_tensorflow_quietly(show_diagnostics=args.debug or _TF_LOG_LEVEL_FROM_USER)
    try:
        args = _finish_defaults(_apply_config_file(parser, args, argv))
        return args.func(args)
    except KeyboardInterrupt as interrupt:
        print(
            f"kdkeras: interrupted: {_one_line(interrupt)}" if str(interrupt) else "kdkeras: interrupted",
            file=sys.stderr,
        )
        return 130
    except ArithmeticError as error:  # A loss became NaN or Inf.
        print(f"kdkeras: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"kdkeras: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # The last line of defence: still one line, the traceback on request.
        if args.debug:
            raise
        print(
            f"kdkeras: error: {type(error).__name__}: {_one_line(error)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
