"""The implementations of the `kdkeras` subcommands, one function per command.

Each takes the parsed arguments and returns an exit status. Heavy imports (TensorFlow, Keras) happen inside the
functions, so `kdkeras --help` and argument errors stay fast; `kdkeras.cli.main` turns exceptions into one-line
errors. The commands on trained models (export, compress, benchmark) are in `kdkeras.cli.deploy`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from kdkeras.config_files import read_mapping


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


def _check_writable(path: str) -> None:
    """Fails before training, not after, when the output cannot be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(f"cannot write to {folder}: {error.strerror or error}") from None


def _check_creatable(folder: str) -> None:
    """Fails up front when `folder` could not be created or written, without creating it (nothing is left behind
    by a run that fails later)."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OSError(f"cannot write to {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OSError(f"cannot write to {folder}: {error.strerror or error}") from None


def _start_strategy(args):
    """The run's `tf.distribute` strategy and precision policy: created first, before any other TensorFlow op (as
    `MultiWorkerMirroredStrategy` requires) and before any model is built."""
    from kdkeras.distribute import get_strategy, num_replicas, set_precision, worker_role

    strategy = get_strategy(args.strategy)
    policy = set_precision(args.mixed_precision)
    is_chief, index = worker_role(strategy)
    if args.strategy != "auto" or num_replicas(strategy) > 1 or policy != "float32":
        role = "" if is_chief and index == 0 else f", {'chief' if is_chief else 'worker'} {index}"
        print(
            f"strategy {type(strategy).__name__} with {num_replicas(strategy)} replica(s){role}; dtype policy {policy}"
        )
    return strategy


def _start_training(args):
    """What `train` and `distill` begin with: the strategy (first), a writable output, the run's configuration,
    the seed, and the dataset's info.

    Returns:
        `(strategy, TrainConfig, Splits)`: the training and validation splits, built once for the whole run.
    """
    from kdkeras.training import prepare_splits, set_seed

    strategy = _start_strategy(args)
    _check_writable(args.out)
    config = _train_config(args, strategy)
    for folder in (config.logdir, config.backup_dir):
        if folder:  # TensorBoard and the checkpoints would fail at their first write, after the first epoch.
            _check_creatable(folder)
    set_seed(args.seed)
    return strategy, config, prepare_splits(config)


def _train_config(args, strategy):
    from kdkeras.distribute import num_replicas, scale_batch_and_lr, worker_role
    from kdkeras.training import TrainConfig, default_logdir

    batch_size, lr = scale_batch_and_lr(args.batch_size, args.lr, num_replicas(strategy), args.batch_scaling)
    logdir = None if args.logdir == "none" else args.logdir or default_logdir(args.command, args.run_name)
    backup_dir = None if args.backup_dir == "none" else args.backup_dir
    is_chief, index = worker_role(strategy)
    if not is_chief:
        # Every worker checkpoints (all restore the same state after a failure), each into its own folder; only
        # the chief writes TensorBoard logs.
        logdir = None
        backup_dir = backup_dir and f"{backup_dir}.worker{index}"
    return TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=batch_size,
        lr=lr,
        seed=args.seed,
        max_train_examples=args.max_train_examples,
        max_validation_examples=args.max_validation_examples,
        unlabeled_examples=getattr(args, "unlabeled_examples", 0),
        mixed_fraction=getattr(args, "mixed_fraction", 0.0),
        validation_fraction=args.validation_fraction,
        augment=args.augment,
        flip=args.flip,
        data_dir=args.data_dir,
        logdir=logdir,
        verbose=args.verbose,
        backup_dir=backup_dir,
        checkpoint_steps=args.checkpoint_steps,
    )


def _finish_run(model, args, config, result, extra: dict, strategy, splits) -> dict | None:
    """Evaluates on the test split (a multi-exit model: each exit, the ensemble, the early exit chosen on the run's
    validation split too), saves the model and its run record (`kdkeras.training.run_training`'s, the test result,
    and what the command knows) beside it, and prints a summary.

    Under a multi-worker strategy only the chief saves; the other workers print the digest of the weights they
    trained (equal to the chief's, as every update is all-reduced) and return None.
    """
    import dataclasses

    import keras
    import tensorflow as tf

    from kdkeras import artifacts
    from kdkeras.distribute import num_replicas, worker_role
    from kdkeras.evaluation import test_record

    is_chief, index = worker_role(strategy)
    digest = artifacts.weights_digest(model)
    if not is_chief:
        print(f"worker {index}: trained weights digest {digest}; the chief saves the model")
        return None

    # Here, outside the strategy's scope: the chief evaluates alone, and inside the scope a multi-worker strategy
    # turns its model calls into collective ops that wait for workers which have finished.
    record = {
        "command": args.command,
        **test_record(model, config, validation=splits.validation),
        **result.record,
        "dataset": dataclasses.asdict(result.info),
        "train_config": dataclasses.asdict(config),
        **extra,
        "weights_digest": digest,
        "strategy": {"name": args.strategy, "replicas": num_replicas(strategy)},
        "dtype_policy": keras.config.dtype_policy().name,
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    artifacts.save_model(model, args.out)
    artifacts.write_json(artifacts.config_path(args.out), record)
    print(
        f"{model.name}: test accuracy {record['test_accuracy']:.4f} on {record['test_examples']} images; "
        f"saved {args.out}"
    )
    return record


def _builder_options(args, strategy=None) -> dict:
    """The model builder's keyword arguments from the command line; with a strategy, synchronized BN per
    `--sync-bn`."""
    from kdkeras.distribute import use_synchronized_bn

    model = getattr(args, "model", None) or getattr(args, "student", "")
    if model.startswith("applications:"):  # A Keras Application takes its weights, not kdkeras' width and depth.
        weights = getattr(args, "weights", None)
        return {"weights": None if weights in (None, "none") else weights}
    if getattr(args, "weights", None) is not None:
        raise ValueError(f"--weights applies to applications:NAME models, not {model}")
    options = {"width": args.width}
    if getattr(args, "depth", None) is not None:
        options["depth"] = args.depth
    if getattr(args, "exits", None):
        options["exits"] = args.exits
    if strategy is not None and use_synchronized_bn(strategy, getattr(args, "sync_bn", "auto")):
        options["synchronized_bn"] = True
    return options


def _output_lock(args, strategy):
    """The chief holds a lock on `--out` for the whole run (another run on the same output fails at once); other
    workers write only their own checkpoint folders."""
    import contextlib

    from kdkeras import artifacts
    from kdkeras.distribute import worker_role

    return artifacts.output_lock(args.out) if worker_role(strategy)[0] else contextlib.nullcontext()


def cmd_train(args) -> int:
    from kdkeras.models import build_model
    from kdkeras.training import remove_backup, run_training

    strategy, config, splits = _start_training(args)
    builder_options = _builder_options(args, strategy)
    with _output_lock(args, strategy):
        with strategy.scope():
            model = build_model(args.model, splits.info.input_shape, splits.info.num_classes, **builder_options)
            result = run_training(model, config, evaluate=False, data=splits)  # _finish_run evaluates, outside.
        extra = {"builder": {"name": args.model, **builder_options}}
        _finish_run(model, args, config, result, extra, strategy, splits)
        remove_backup(config)  # Only now: a kill during the save above resumes from the finished training.
    return 0


def cmd_distill(args) -> int:
    strategy, config, splits = _start_training(args)
    with _output_lock(args, strategy):
        _distill_locked(args, strategy, config, splits)
    return 0


def _distill_locked(args, strategy, config, splits) -> None:
    from kdkeras import artifacts
    from kdkeras import terms as terms_lib
    from kdkeras.distribute import worker_role
    from kdkeras.models import build_model
    from kdkeras.training import remove_backup, run_training

    builder_options = _builder_options(args, strategy)
    # Teacher, student, distiller, optimizers and metrics: all get the strategy's (mirrored) variables.
    with strategy.scope():
        teacher = artifacts.load_model(args.teacher)
        student = build_model(args.student, splits.info.input_shape, splits.info.num_classes, **builder_options)
        synchronized = builder_options.get("synchronized_bn", False)
        result = run_training(  # _finish_run evaluates, outside the scope.
            student, config, teacher, evaluate=False, data=splits, terms=args.term_specs,
            collaborative=args.collaborative, teacher_lr=args.teacher_lr, teacher_mimicry=args.teacher_mimicry,
            synchronized_bn=synchronized, teacher_cache=args.teacher_cache,
        )  # fmt: skip
    distiller = result.distiller
    extra = {
        "teacher": os.path.abspath(args.teacher),
        "builder": {"name": args.student, **builder_options},
        "distillation": {
            "terms": [terms_lib.serialize(term) for term in distiller.terms],  # "auto" pairs resolved
            "collaborative": args.collaborative,
            "teacher_mimicry": distiller.teacher_mimicry,
            "synchronized_bn": synchronized,
            "teacher_cache": args.teacher_cache,
        },
    }
    _finish_run(distiller.student, args, config, result, extra, strategy, splits)
    if args.collaborative and args.teacher_out and worker_role(strategy)[0]:
        artifacts.save_model(distiller.teacher, args.teacher_out)
        print(f"updated teacher saved to {args.teacher_out}")
    remove_backup(config)  # Only now: a kill during the saves above resumes from the finished training.


def cmd_evaluate(args) -> int:
    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.evaluation import evaluate_classifier
    from kdkeras.models.exits import exit_layers

    model = artifacts.load_model(args.model)
    dataset, info = load_dataset(
        args.dataset, args.split, args.batch_size, data_dir=args.data_dir, max_examples=args.max_examples
    )
    result = evaluate_classifier(model, dataset, info)
    result = {"model": args.model, "dataset": args.dataset, "split": args.split, **result}
    if exit_layers(model):
        from kdkeras.early_exit import exit_report

        # The threshold is chosen on validation images, the carve-out of the training split that `train` holds out.
        validation, _ = load_dataset(args.dataset, "validation", args.batch_size, data_dir=args.data_dir,
                                     max_examples=args.max_examples)  # fmt: skip
        result["exits"] = exit_report(model, dataset, validation)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model} on {args.dataset} ({args.split}, {result['num_examples']} images)")
    print(f"  accuracy {result['accuracy']:.4f}   loss {result['loss']:.4f}")
    for name, accuracy in result["per_class"].items():
        print(f"  {name:>20s}  {accuracy:.4f}" if accuracy is not None else f"  {name:>20s}  (no examples)")
    if "exits" in result:
        _print_exits(result["exits"])
    return 0


def _print_exits(report: dict) -> None:
    print("  exits (accuracy, cumulative MFLOPs):")
    for name, entry in report["exits"].items():
        print(f"  {name:>20s}  {entry['accuracy']:.4f}  {entry['mflops']:.2f}")
    print(f"  ensemble (mean softmax) {report['ensemble_accuracy']:.4f}   majority vote {report['vote_accuracy']:.4f}")
    chosen = report["chosen"]
    print(
        f"  early exit at threshold {chosen['threshold']} (chosen on validation): accuracy {chosen['accuracy']:.4f} "
        f"at {chosen['mflops']:.2f} of {chosen['full_mflops']:.2f} MFLOPs per image"
    )


def cmd_info(args) -> int:
    from kdkeras import artifacts
    from kdkeras.models import MODELS, build_model, stage_layers
    from kdkeras.models.exits import exit_layers
    from kdkeras.profiling import count_flops, count_params

    if args.model in MODELS or args.model.startswith("applications:"):
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
    if exit_layers(model):
        from kdkeras.early_exit import exit_costs

        record["exits"] = {name: flops for name, flops in exit_costs(model).items()}
    if args.json:
        print(json.dumps(record))
        return 0
    print(f"{record['model']}: {record['params']:,} parameters, {record['flops'] / 1e6:.1f} MFLOPs per image")
    if size is not None:
        print(f"  file size {size / 1e6:.2f} MB")
    for name, shape in record["stages"].items():
        print(f"  {name}: {tuple(shape)}")
    for name, flops in record.get("exits", {}).items():
        print(f"  {name}: {flops / 1e6:.2f} MFLOPs to reach it (the backbone and the heads on the way)")
    return 0


def cmd_tune(args) -> int:
    from kdkeras import tuning
    from kdkeras.distribute import num_replicas, scale_batch_and_lr
    from kdkeras.training import TrainConfig, set_seed

    strategy = _start_strategy(args)
    set_seed(args.seed)
    with strategy.scope():  # The shared teacher's variables must belong to the strategy the tuner builds under.
        teacher = tuning.load_teacher(args.teacher)
    batch_size, _ = scale_batch_and_lr(args.batch_size, 1.0, num_replicas(strategy), args.batch_scaling)
    config = TrainConfig(
        dataset=args.dataset, epochs=args.epochs_per_trial, batch_size=batch_size, seed=args.seed,
        max_train_examples=args.max_train_examples, data_dir=args.data_dir, verbose=args.verbose,
    )  # fmt: skip
    result = tuning.search(
        teacher, (args.student, _builder_options(args, strategy)), args.term_specs, config, tuner=args.tuner,
        max_trials=args.max_trials, directory=args.directory, project_name=args.project_name,
        overwrite=args.overwrite, space_overrides=read_mapping(args.space) if args.space else None,
        teacher_cache=args.teacher_cache, strategy=strategy,
    )  # fmt: skip
    out_dir = result["out_dir"]
    print(f"best val_accuracy {result['rows'][0]['val_accuracy']:.4f} with {json.dumps(result['best'])}")
    print(f"wrote {out_dir}/best_hparams.json (use: kdkeras distill --config {out_dir}/best_hparams.json …), "
          f"trials.md, trials.json, objective.png; TensorBoard logs in {result['logdir']}")  # fmt: skip
    return 0


def cmd_demo(args) -> int:
    from kdkeras.demo import run_demo

    budget = {key: getattr(args, key) for key in ("labeled_examples", "unlabeled_examples", "student_epochs",
                                                  "teacher", "seed")}  # fmt: skip
    run_demo(args.out_dir, **{key: value for key, value in budget.items() if value is not None})
    return 0


def cmd_experiment(args) -> int:
    """`kdkeras experiment` / `python -m kdkeras.experiments`: run (or only report) an experiment config."""
    from kdkeras.experiments import Experiment, load_config

    experiment = Experiment(load_config(args.path), args.budget, verbose=args.verbose)
    rows = [n.strip() for n in args.rows.split(",") if n.strip()] if args.rows else None
    experiment.select(rows)  # Fails on an unknown row name before anything trains.
    # --seeds picks the seeds to run; the report covers the budget's seeds and these.
    experiment.seeds += [seed for seed in args.seeds or () if seed not in experiment.seeds]
    if not args.report_only:
        experiment.run(rows, args.seeds)
    report = experiment.report(f"python -m kdkeras.experiments {args.path} --budget {args.budget}")
    print(f"\n{report['table']}\n\nreport: {experiment.report_base}.md")
    return 0
