"""The `kdkeras` command line: train, distill, tune, evaluate, info, export, compress, benchmark, demo.

Every failure the user can cause ends in one line on stderr, `kdkeras: error: …`, and exit status 2 (1 for an
internal error, with `--debug` showing its traceback), never a bare traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter off the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DISTILL_OPTIONS = ("temperature", "alpha", "beta", "gamma", "feature_loss", "feature_pairs", "collaborative")


# --------------------------------------------------------------------------------------------------- helpers


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
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


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH,CHANNELS, got {text}")
    return parts


def parse_feature_pairs(text: str) -> list[tuple[str, str]]:
    """`"stage3:stage3,stage5:stage5"` → `[("stage3", "stage3"), ("stage5", "stage5")]`; `""`/`none` → `[]`."""
    if text.strip().lower() in ("", "none"):
        return []
    pairs = []
    for item in text.split(","):
        teacher, sep, student = item.strip().partition(":")
        if not sep or not teacher or not student:
            raise ValueError(f"feature pair '{item}' is not TEACHER_LAYER:STUDENT_LAYER")
        pairs.append((teacher, student))
    return pairs


def default_feature_pairs(teacher, student) -> list[tuple[str, str]]:
    """The deepest stage of each network: the representation closest to the logits that is still spatial."""
    from kdkeras.models import stage_layers

    teacher_stages, student_stages = list(stage_layers(teacher)), list(stage_layers(student))
    if not teacher_stages or not student_stages:
        return []
    return [(teacher_stages[-1], student_stages[-1])]


def _check_writable(path: str) -> None:
    """Fails before training, not after, when the output cannot be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(f"cannot write to {folder}: {error.strerror or error}") from None


def _train_config(args):
    from kdkeras.training import TrainConfig, default_logdir

    return TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_train_examples=args.max_train_examples,
        validation_fraction=args.validation_fraction,
        augment=args.augment,
        flip=args.flip,
        data_dir=args.data_dir,
        logdir=None if args.logdir == "none" else args.logdir or default_logdir(args.command, args.run_name),
        verbose=args.verbose,
        backup_dir=None if args.backup_dir == "none" else args.backup_dir,
        checkpoint_steps=args.checkpoint_steps,
    )


def _finish_run(model, args, config, extra: dict) -> dict:
    """Evaluates on the test split, saves the model and its resolved configuration beside it, prints a summary."""
    import dataclasses

    import keras
    import tensorflow as tf

    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.profiling import count_flops, count_params
    from kdkeras.training import evaluate_classifier

    test, info = load_dataset(config.dataset, "test", 256, data_dir=config.data_dir, seed=config.seed)
    result = evaluate_classifier(model, test, info)
    record = {
        "command": args.command,
        "model": model.name,
        "params": count_params(model),
        "flops": count_flops(model),
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "dataset": dataclasses.asdict(info),
        "train_config": dataclasses.asdict(config),
        **extra,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    artifacts.save_model(model, args.out)
    artifacts.write_json(artifacts.config_path(args.out), record)
    print(f"{model.name}: test accuracy {result['accuracy']:.4f} on {result['num_examples']} images; saved {args.out}")
    return record


# --------------------------------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    from kdkeras.data import load_dataset
    from kdkeras.models import build_model
    from kdkeras.training import set_seed, train_classifier

    _check_writable(args.out)
    config = _train_config(args)
    set_seed(args.seed)
    _, info = load_dataset(config.dataset, "test", config.batch_size, data_dir=config.data_dir)
    model = build_model(args.model, info.input_shape, info.num_classes, **_builder_options(args))
    history, seconds, _ = train_classifier(model, config)
    _finish_run(model, args, config, {"builder": _builder_record(args), "history": history, "train_seconds": seconds})
    return 0


def cmd_distill(args) -> int:
    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.models import build_model
    from kdkeras.training import distill, set_seed

    _check_writable(args.out)
    config = _train_config(args)
    set_seed(args.seed)
    teacher = artifacts.load_model(args.teacher)
    _, info = load_dataset(config.dataset, "test", config.batch_size, data_dir=config.data_dir)
    student = build_model(args.student, info.input_shape, info.num_classes, **_builder_options(args))
    pairs = (
        default_feature_pairs(teacher, student)
        if args.feature_pairs == "auto"
        else parse_feature_pairs(args.feature_pairs)
    )
    options = {
        "feature_pairs": pairs,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "beta": args.beta,
        "gamma": args.gamma,
        "feature_loss": args.feature_loss,
        "collaborative": args.collaborative,
    }
    distiller, history, seconds, _ = distill(teacher, student, config, teacher_lr=args.teacher_lr, **options)
    options["gamma"] = distiller.gamma
    extra = {
        "teacher": os.path.abspath(args.teacher),
        "builder": _builder_record(args, args.student),
        "distillation": options,
        "history": history,
        "train_seconds": seconds,
    }
    _finish_run(distiller.student, args, config, extra)
    if args.collaborative and args.teacher_out:
        artifacts.save_model(distiller.teacher, args.teacher_out)
        print(f"updated teacher saved to {args.teacher_out}")
    return 0


def cmd_evaluate(args) -> int:
    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.training import evaluate_classifier

    model = artifacts.load_model(args.model)
    dataset, info = load_dataset(
        args.dataset, args.split, args.batch_size, data_dir=args.data_dir, max_examples=args.max_examples
    )
    result = evaluate_classifier(model, dataset, info)
    result = {"model": args.model, "dataset": args.dataset, "split": args.split, **result}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} on {args.dataset} ({args.split}, {result['num_examples']} images)")
    print(f"  accuracy {result['accuracy']:.4f}   loss {result['loss']:.4f}")
    for name, accuracy in result["per_class"].items():
        print(f"  {name:>20s}  {accuracy:.4f}" if accuracy is not None else f"  {name:>20s}  (no examples)")
    return 0


def cmd_info(args) -> int:
    from kdkeras import artifacts
    from kdkeras.models import MODELS, build_model, stage_layers
    from kdkeras.profiling import count_flops, count_params

    if args.model in MODELS:
        model = build_model(args.model, args.input_shape, args.num_classes, **_builder_options(args))
        size = None
    else:
        model = artifacts.load_model(args.model)
        size = os.path.getsize(args.model)
    record = {
        "model": model.name,
        "params": count_params(model),
        "flops": count_flops(model),
        "file_bytes": size,
        "input_shape": list(model.inputs[0].shape[1:]),
        "stages": {name: list(shape[1:]) for name, shape in stage_layers(model).items()},
    }
    if args.json:
        print(json.dumps(record))
        return 0
    print(f"{record['model']}: {record['params']:,} parameters, {record['flops'] / 1e6:.1f} MFLOPs per image")
    if size is not None:
        print(f"  file size {size / 1e6:.2f} MB")
    for name, shape in record["stages"].items():
        print(f"  {name}: {tuple(shape)}")
    return 0


def cmd_tune(args) -> int:
    import keras

    from kdkeras import tuning
    from kdkeras.models import build_model
    from kdkeras.training import TrainConfig, check_classes, load_splits, set_seed

    space = tuning.SearchSpace.from_dict(_read_mapping(args.space)) if args.space else tuning.SearchSpace()
    set_seed(args.seed)
    teacher = tuning.load_teacher(args.teacher)
    config = TrainConfig(
        dataset=args.dataset, epochs=args.epochs_per_trial, batch_size=args.batch_size, seed=args.seed,
        max_train_examples=args.max_train_examples, data_dir=args.data_dir, verbose=args.verbose,
    )  # fmt: skip
    train, validation, info = load_splits(config)
    check_classes(teacher, info, "teacher")
    student_kwargs = _builder_options(args)
    probe = build_model(args.student, info.input_shape, info.num_classes, **student_kwargs)
    pairs = (
        default_feature_pairs(teacher, probe)
        if args.feature_pairs == "auto"
        else parse_feature_pairs(args.feature_pairs)
    )
    hypermodel = tuning.DistillerHyperModel(
        teacher, (args.student, student_kwargs), pairs, space, config, steps_per_epoch=len(train)
    )
    tuner = tuning.make_tuner(
        args.tuner, hypermodel, args.max_trials, args.epochs_per_trial, args.directory, args.project_name,
        args.overwrite, args.seed,
    )  # fmt: skip
    logdir = os.path.join(args.directory, args.project_name, "tensorboard")
    tuner.search(
        train,
        validation_data=validation,
        epochs=args.epochs_per_trial,
        shuffle=False,
        verbose=args.verbose,
        callbacks=[keras.callbacks.TensorBoard(logdir)],
    )
    rows = tuning.trial_rows(tuner)
    out_dir = os.path.join(args.directory, args.project_name)
    note = (
        f"{args.tuner} search, {len(rows)} trials × {args.epochs_per_trial} epoch(s), {info.name}, "
        f"{config.max_train_examples or 'all'} training images; objective: student val_accuracy"
    )
    best = tuning.write_reports(rows, out_dir, note)
    print(f"best val_accuracy {rows[0]['val_accuracy']:.4f} with {json.dumps(best)}")
    print(f"wrote {out_dir}/best_hparams.json (use: kdkeras distill --config {out_dir}/best_hparams.json …), "
          f"trials.md, trials.json, objective.png; TensorBoard logs in {logdir}")  # fmt: skip
    return 0


def cmd_export(args) -> int:
    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.export import export_model, representative_images
    from kdkeras.training import check_classes

    model = artifacts.load_model(args.model)
    test, info = load_dataset(args.dataset, "test", 256, data_dir=args.data_dir, max_examples=args.max_test_examples)
    check_classes(model, info)
    representative = None
    if args.quantize == "int8":
        train, _ = load_dataset(args.dataset, "train", 256, data_dir=args.data_dir, shuffle=True)
        representative = representative_images(train, args.representative_samples, model.inputs[0].shape[1:])
    record = export_model(
        model,
        args.out,
        args.format,
        test,
        info.class_names,
        quantize=args.quantize,
        representative=representative,
        max_drop=args.max_drop,
    )
    print(
        f"exported {args.out} ({record['bytes'] / 1024:.0f} KB): accuracy {record['exported_accuracy']:.4f} vs "
        f"Keras {record['keras_accuracy']:.4f} on {info.num_examples} test images; details in {args.out}.verify.json"
    )
    return 0


def cmd_compress(args) -> int:
    from kdkeras import artifacts, compression
    from kdkeras.data import load_dataset
    from kdkeras.export import publish, representative_images, tflite_predict, verify_path
    from kdkeras.training import check_classes, set_seed

    set_seed(args.seed)
    student, teacher = artifacts.load_model(args.model), artifacts.load_model(args.teacher)
    train, info = load_dataset(
        args.dataset, "train", args.batch_size, augment_images=True, max_examples=args.max_train_examples,
        data_dir=args.data_dir, seed=args.seed,
    )  # fmt: skip
    check_classes(student, info, "student")
    check_classes(teacher, info, "teacher")
    test, _ = load_dataset(args.dataset, "test", 256, data_dir=args.data_dir, max_examples=args.max_test_examples)
    method = "prune" if args.prune is not None else "cluster" if args.cluster is not None else "qat"
    quantize = args.quantize or ("dynamic" if method == "qat" else "none")
    representative = representative_images(train, args.representative_samples, info.input_shape) if (
        quantize == "int8") else None  # fmt: skip
    compressed, report = compression.fine_tune(
        student, teacher, train, method, epochs=args.epochs, lr=args.lr, sparsity=args.prune,
        clusters=args.cluster, temperature=args.temperature, alpha=args.alpha, beta=args.beta,
    )  # fmt: skip
    content = compression.tflite_from_tf_keras(compressed, quantize, representative)

    def write(path):
        with open(path, "wb") as f:
            f.write(content)

    record = publish(args.out, "model.tflite", write, tflite_predict, student, test, info.class_names,
                     args.max_drop, {"format": "tflite", "quantize": quantize, "compression": report})  # fmt: skip
    if method == "prune":
        for name, value in report["kernel_sparsity"].items():
            print(f"  {name:<28s} sparsity {value:.3f}")
    elif method == "cluster":
        for name, value in report["kernel_unique_values"].items():
            print(f"  {name:<28s} {value} distinct values")
    print(
        f"compressed ({method}) {args.out} ({record['bytes'] / 1024:.0f} KB): accuracy "
        f"{record['exported_accuracy']:.4f} vs uncompressed Keras {record['keras_accuracy']:.4f}; "
        f"details in {verify_path(args.out)}"
    )
    return 0


def cmd_benchmark(args) -> int:
    import tensorflow as tf

    from kdkeras import artifacts
    from kdkeras.benchmark import benchmark_file, format_table

    try:  # Only possible before TensorFlow's runtime starts; then the Keras rows use its default threads.
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    except RuntimeError:
        pass
    rows = []
    for path in args.models:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {path}")
        rows.append(benchmark_file(path, args.threads, args.runs))
    table = format_table(rows)
    machine = f"{os.cpu_count()} CPU cores; {args.threads} thread(s); median of {args.runs} runs after warm-up"
    command = "kdkeras benchmark " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "kdkeras benchmark"
    os.makedirs(args.out_dir, exist_ok=True)
    artifacts.write_json(
        os.path.join(args.out_dir, "benchmark.json"), {"command": command, "machine": machine, "rows": rows}
    )
    artifacts.write_text(
        os.path.join(args.out_dir, "benchmark.md"), f"Command: `{command}`  \nMachine: {machine}\n\n{table}\n"
    )
    print(f"{table}\n\n{machine}")
    return 0


def cmd_demo(args) -> int:
    from kdkeras.demo import run_demo

    budget = {key: getattr(args, key) for key in ("train_examples", "teacher_epochs", "student_epochs")}
    run_demo(args.out_dir, **{key: value for key, value in budget.items() if value is not None})
    return 0


# --------------------------------------------------------------------------------------------------- parser


def _builder_options(args) -> dict:
    options = {"width": args.width}
    if getattr(args, "depth", None) is not None:
        options["depth"] = args.depth
    return options


def _builder_record(args, name=None) -> dict:
    return {"name": name or args.model, **_builder_options(args)}


def _add_training_options(parser, run_name_attr: str) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="fashion_mnist (default, offline), tfds:NAME, folder:PATH or idx:PATH",
    )
    group.add_argument("--epochs", type=_positive_int, default=10)
    group.add_argument("--batch-size", type=_positive_int, default=128)
    group.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate (cosine decay)")
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
    parser.set_defaults(run_name_attr=run_name_attr)  # fmt: skip


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
    dist.add_argument("--temperature", type=_positive_float, default=4.0)
    dist.add_argument("--alpha", type=_non_negative_float, default=0.5, help="weight of the label loss")
    dist.add_argument("--beta", type=_non_negative_float, default=0.5, help="weight of the soft-target loss")
    dist.add_argument(
        "--gamma",
        type=_non_negative_float,
        default=None,
        help="weight of the feature loss (default 1 with feature pairs)",
    )
    dist.add_argument(
        "--feature-pairs",
        default="auto",
        help="TEACHER:STUDENT layer pairs, e.g. stage3:stage3,stage5:stage5; 'auto' = deepest "
        "stages; 'none' = logits only",
    )
    dist.add_argument("--feature-loss", choices=("hint", "attention"), default="hint")
    dist.add_argument("--collaborative", action="store_true", help="update the teacher too (mutual learning)")
    dist.add_argument(
        "--teacher-lr",
        type=_positive_float,
        default=None,
        help="teacher learning rate in collaborative mode (default lr/10)",
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
    tune.add_argument("--feature-pairs", default="auto")
    tune.add_argument("--dataset", default="fashion_mnist")
    tune.add_argument("--data-dir", default=None)
    tune.add_argument("--tuner", choices=("random", "bayesian", "hyperband"), default="random")
    tune.add_argument("--max-trials", type=_positive_int, default=12)
    tune.add_argument("--epochs-per-trial", type=_positive_int, default=2)
    tune.add_argument("--max-train-examples", type=_positive_int, default=10000)
    tune.add_argument("--batch-size", type=_positive_int, default=128)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--space", default=None, help="JSON/YAML of ranges, e.g. {temperature: [2, 10]}")
    tune.add_argument("--directory", default="runs/tune", help="where trials, reports and logs go")
    tune.add_argument("--project-name", default="tskd")
    tune.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    tune.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
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
    comp.set_defaults(func=cmd_compress)

    bench = sub.add_parser("benchmark", help="size, latency and throughput of .keras and .tflite files")
    bench.add_argument("--models", nargs="+", required=True)
    bench.add_argument("--threads", type=_positive_int, default=1)
    bench.add_argument("--runs", type=_positive_int, default=50)
    bench.add_argument("--out-dir", default=os.path.join("experiments", "results"))
    bench.set_defaults(func=cmd_benchmark)

    demo = sub.add_parser("demo", help="teacher, student from scratch and TSKD student on Fashion-MNIST")
    demo.add_argument("--out-dir", default=os.path.join("saved_models", "demo"))
    # Defaults of None: run_demo's own defaults are the demo's budget.
    demo.add_argument("--train-examples", type=_positive_int, default=None, help="training images used")
    demo.add_argument("--teacher-epochs", type=_positive_int, default=None)
    demo.add_argument("--student-epochs", type=_positive_int, default=None)
    demo.set_defaults(func=cmd_demo)
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
    }
    return parser


def _read_mapping(path: str) -> dict:
    """A JSON or YAML file (by its ending) holding one mapping; YAML through `yaml.safe_load` (plain data only)."""
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f) if path.endswith((".yaml", ".yml")) else json.load(f)
    except OSError as error:
        raise OSError(f"cannot read config {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({_one_line(error)})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of names to values")
    return values


def _apply_config_file(parser, args, argv):
    """`distill --config F`: values from F become defaults, so options given on the command line still win."""
    if getattr(args, "config", None) is None:
        return args
    values = _read_mapping(args.config)
    known = set(vars(args))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{args.config}: unknown option(s) {', '.join(unknown)}")
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
    if getattr(args, "backup_dir", "") is None:
        args.backup_dir = args.out.removesuffix(".keras") + ".backup"
    if args.command == "distill" and args.feature_pairs not in ("auto",):
        parse_feature_pairs(args.feature_pairs)  # Fail on a malformed value before loading anything.
    return args


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
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
