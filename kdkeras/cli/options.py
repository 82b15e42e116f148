"""The option types and option groups the `kdkeras` subcommands share (argparse only, no TensorFlow)."""

from __future__ import annotations

import argparse

from kdkeras.presets import DEFAULT_PRESET, PRESETS
from kdkeras.validation import check_number

# The built-in terms, for the help text (kdkeras.terms.available() adds user-registered ones; a test keeps this
# list equal to the built-in registry).
BUILT_IN_TERMS = ("ce", "kd", "dkd", "dist", "hint", "attention", "exit_ce", "exit_kd", "self_kd")

# --------------------------------------------------------------------------------------------------- helpers


def add_method_options(parser) -> None:
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
    parser.add_argument("--temperature", type=positive_float, default=None, help="T of every term that has one")
    parser.add_argument(
        "--alpha", type=non_negative_float, default=None, help="classic TSKD sum: weight of the label loss"
    )
    parser.add_argument(
        "--beta", type=non_negative_float, default=None, help="classic TSKD sum: weight of the soft-target loss"
    )
    parser.add_argument(
        "--gamma",
        type=non_negative_float,
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


def layer_names(text: str) -> list[str]:
    """`"stage3,stage4"` → `["stage3", "stage4"]`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected layer names separated by commas, e.g. stage3,stage4")
    return names


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    return _checked_float(text, strict=True)


def non_negative_float(text: str) -> float:
    return _checked_float(text, strict=False)


def _checked_float(text: str, strict: bool) -> float:
    """A float option under the library's number rule (`validation.check_number`), as an argparse error."""
    value = float(text)  # A ValueError here becomes argparse's own "invalid ... value" message.
    try:
        return check_number(value, "value", strict=strict)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("value ")) from None


def fraction(text: str) -> float:
    """A share strictly between 0 and 1 (a split that must leave something on both sides)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def closed_fraction(text: str) -> float:
    """A share from 0 to 1 inclusive (0: none, 1: all), e.g. of the images shown mixed."""
    value = _checked_float(text, strict=False)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def clusters(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}")
    return value


def seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("must name at least one seed")
    return seeds


def shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH,CHANNELS, got {text}")
    return parts


def add_training_options(parser, run_name_attr: str) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="fashion_mnist (default, offline), tfds:NAME, folder:PATH or idx:PATH",
    )
    group.add_argument("--epochs", type=positive_int, default=10)
    group.add_argument("--batch-size", type=positive_int, default=128)
    group.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (cosine decay)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--max-train-examples", type=positive_int, default=None, help="train on N examples only")
    group.add_argument(
        "--max-validation-examples", type=positive_int, default=None, help="validate on N held-out examples only"
    )
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
    group.add_argument("--checkpoint-steps", type=positive_int, default=None, help="also checkpoint every N steps")
    add_distribution_options(parser)
    parser.set_defaults(run_name_attr=run_name_attr)  # fmt: skip


def add_distribution_options(parser) -> None:
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


def add_builder_options(parser) -> None:
    parser.add_argument("--width", type=positive_float, default=1.0, help="width multiplier")
    parser.add_argument("--depth", type=int, default=None, help="depth (resnet: 6n+2)")
    parser.add_argument(
        "--exits",
        type=layer_names,
        default=None,
        metavar="STAGE,...",
        help="a multi-exit student: an exit head after each of these layers (e.g. stage3,stage4)",
    )
