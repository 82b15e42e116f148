"""The `kdkeras` entry point and its error boundary: every failure the user can cause ends in one line."""

from __future__ import annotations

import argparse
import os
import sys

from kdkeras.cli import runtime
from kdkeras.cli.commands import parse_feature_pairs
from kdkeras.cli.parser import build_parser
from kdkeras.config_files import read_mapping


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
        method = args.method
        if method is None and args.terms is None and getattr(args, "exits", None):
            from kdkeras.presets import DEFAULT_EXITS_PRESET

            method = DEFAULT_EXITS_PRESET  # A multi-exit student's exits learn from exit terms only.
        args.term_specs = terms_lib.from_options(
            method, args.terms, [terms_lib.parse_term(t) for t in args.term],
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
            Ctrl-C then always stops it (`runtime.stop_on_second_interrupt`).
    """
    parser = build_parser()
    as_program = argv is None if as_program is None else as_program
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if as_program:
        runtime.stop_on_second_interrupt()
    try:
        # Inside the error boundary: a Ctrl-C while TensorFlow loads (seconds) is one line too.
        runtime.import_tensorflow_quietly(show_diagnostics=args.debug or runtime.SHOW_TF_DIAGNOSTICS)
        args = _finish_defaults(_apply_config_file(parser, args, argv))
        return args.func(args)
    except KeyboardInterrupt as interrupt:
        print(
            f"kdkeras: interrupted: {_one_line(interrupt)}" if str(interrupt) else "kdkeras: interrupted",
            file=sys.stderr,
        )
        return 130
    except ArithmeticError as error:  # A loss became NaN or Inf, in the middle of an epoch's progress bar.
        if getattr(args, "verbose", 0) == 1:
            print(flush=True)  # Ends the bar's line: the error then starts a line of its own.
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
