"""The commands on trained models: export (SavedModel / TFLite), compress (prune, cluster, QAT), benchmark."""

from __future__ import annotations

import os
import sys


def cmd_export(args) -> int:
    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.evaluation import check_classes
    from kdkeras.export import export_model, representative_images

    model = artifacts.load_model(args.model)
    test, info = load_dataset(args.dataset, "test", 256, data_dir=args.data_dir, max_examples=args.max_test_examples)
    check_classes(model, info)
    representative = None
    if args.quantize == "int8":
        train, _ = load_dataset(args.dataset, "train", 256, data_dir=args.data_dir, shuffle=True)
        representative = representative_images(train, args.representative_samples, model.inputs[0].shape[1:])
    if args.cascade:
        return _export_cascade(args, model, test, representative)
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


def _export_cascade(args, model, test, representative) -> int:
    """`export --cascade`: the threshold chosen on validation, the segments written, the cascade's test accuracy
    in LiteRT against the Keras early exit's at that threshold."""
    from kdkeras.cascade import Cascade, export_cascade
    from kdkeras.data import load_dataset
    from kdkeras.early_exit import exit_report

    validation, _ = load_dataset(args.dataset, "validation", 256, data_dir=args.data_dir)
    chosen = exit_report(model, test, validation)["chosen"]
    export_cascade(model, args.out, chosen["threshold"], args.quantize, representative)
    scores = Cascade(args.out).evaluate(test)
    print(
        f"exported the cascade {args.out} (threshold {chosen['threshold']}, chosen on validation): LiteRT accuracy "
        f"{scores['accuracy']:.4f} against the Keras early exit's {chosen['accuracy']:.4f} on "
        f"{sum(scores['leaving_at_each_exit'])} test images; images leaving at each exit: "
        f"{scores['leaving_at_each_exit']}"
    )
    return 0


def cmd_compress(args) -> int:
    from kdkeras import artifacts, compression
    from kdkeras.data import load_dataset
    from kdkeras.evaluation import check_classes
    from kdkeras.export import publish, representative_images, tflite_predict, verify_path
    from kdkeras.training import set_seed

    set_seed(args.seed)
    student, teacher = artifacts.load_model(args.model), artifacts.load_model(args.teacher)
    train, info = load_dataset(
        args.dataset, "train", args.batch_size, augment_images=True, max_examples=args.max_train_examples,
        data_dir=args.data_dir, seed=args.seed,
    )  # fmt: skip
    check_classes(student, info, "student")
    check_classes(teacher, info, "teacher", any_input_size=True)
    test, _ = load_dataset(args.dataset, "test", 256, data_dir=args.data_dir, max_examples=args.max_test_examples)
    method = "prune" if args.prune is not None else "cluster" if args.cluster is not None else "qat"
    quantize = args.quantize or ("dynamic" if method == "qat" else "none")
    representative = representative_images(train, args.representative_samples, info.input_shape) if (
        quantize == "int8") else None  # fmt: skip
    backup_dir = None if args.backup_dir == "none" else args.backup_dir
    compressed, report = compression.fine_tune(
        student, teacher, train, method, epochs=args.epochs, lr=args.lr, sparsity=args.prune,
        clusters=args.cluster, temperature=args.temperature, alpha=args.alpha, beta=args.beta,
        backup_dir=backup_dir,
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
    from kdkeras.benchmark import benchmark_cascade, benchmark_file, format_table
    from kdkeras.cascade import MANIFEST

    try:  # Only possible before TensorFlow's runtime starts; then the Keras rows use its default threads.
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    except RuntimeError:
        pass
    rows = []
    for path in args.models:
        if os.path.isfile(os.path.join(path, MANIFEST)):  # A cascade: a row per exit.
            rows += benchmark_cascade(path, args.threads, args.runs)
            continue
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder without {MANIFEST}: benchmark takes .keras and .tflite files and "
                             "the folders `kdkeras export --cascade` writes")  # fmt: skip
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
