"""Do kdkeras' defaults work on small data they were not tuned on? Against the keras-io reference convnet.

    python experiments/small_data.py                  # 3 seeds; writes experiments/results/small_data.{json,md,png}
    python experiments/small_data.py --seeds 0 --epochs 10
    python experiments/small_data.py --method kd_t1   # the distilled row with another preset (kept beside the others)
    python experiments/small_data.py --report-only     # the report from the runs finished so far

The dataset is one kdkeras never saw while its defaults were chosen: scikit-learn's handwritten digits (1,797
8×8 images, shipped with scikit-learn, so it works offline), upscaled to 32×32 grayscale PNGs in one folder per class
and loaded as `folder:PATH` (a fixed 80/20 test split, the same for every seed, then a seeded 10 % of the rest for
validation), the way a user's own image folder is. Every model is trained for the same epochs with its defaults:

- keras-io's "Simple MNIST convnet" (keras-io examples/vision/mnist_convnet.py): two 3×3 convs (32, 64) with max
  pooling, dropout 0.5, softmax; Adam at its default rate, batch 128, no augmentation;
- `kdkeras train --model alexnet` (the default teacher) and `--model ds_alexnet` (the student);
- `kdkeras distill` with no method options (the default preset) from that alexnet teacher, or with `--method NAME`.

Each finished (model, seed) is kept in the JSON, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def write_digits_folder(root: str, size: int = 32) -> str:
    """scikit-learn's digits as `root/CLASS/NNNN.png`, `size`×`size` grayscale; reused when present."""
    from PIL import Image
    from sklearn.datasets import load_digits

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = os.path.join(root, str(label))
        os.makedirs(folder, exist_ok=True)
        pixels = (image / 16.0 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.BILINEAR).save(os.path.join(folder, f"{index:04d}.png"))
    open(done, "w").close()
    return root


def keras_io_convnet(input_shape, num_classes):
    """The keras-io "Simple MNIST convnet", unchanged except for the input shape and a rescaling layer (its
    script divides the pixels by 255 before training)."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 255),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="keras_io_convnet",
    )


def run_one(name: str, dataset: str, seed: int, epochs: int, teacher_path: str, method: str) -> dict:
    """Trains one model with its defaults (the distilled one with the preset `method`) and returns its record."""
    import keras

    from kdkeras import artifacts
    from kdkeras.data import load_dataset
    from kdkeras.evaluation import evaluate_classifier
    from kdkeras.models import build_model
    from kdkeras.profiling import count_params
    from kdkeras.terms import preset
    from kdkeras.training import TrainConfig, run_training, set_seed

    set_seed(seed)
    config = TrainConfig(dataset=dataset, epochs=epochs, seed=seed, verbose=0)
    test, info = load_dataset(dataset, "test", 256, seed=seed)
    start = time.perf_counter()
    if name == "keras_io_convnet":
        model = keras_io_convnet(info.input_shape, info.num_classes)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        train, _ = load_dataset(dataset, "train", 128, seed=seed, validation_fraction=0.1)
        validation, _ = load_dataset(dataset, "validation", 128, seed=seed, validation_fraction=0.1)
        history = model.fit(train, validation_data=validation, epochs=epochs, verbose=0).history
        logits_model = keras.Model(model.inputs, model.layers[-1].output)  # Softmax output: argmax is the same.
        result = evaluate_classifier(logits_model, test, info)
    else:  # kdkeras' models through its one training path, as `kdkeras train` / `distill` run them.
        teacher = artifacts.load_model(teacher_path) if name == "distilled" else None
        model = build_model("ds_alexnet" if teacher else name, info.input_shape, info.num_classes)
        run = run_training(model, config, teacher, terms=preset(method)) if teacher else run_training(model, config)
        history, result = run.record["history"], {"accuracy": run.record["test_accuracy"]}
        if name == "alexnet":
            artifacts.save_model(model, teacher_path)
    return {
        "model": name,
        "method": method if name == "distilled" else None,
        "seed": seed,
        "params": count_params(model),
        "test_accuracy": result["accuracy"],
        "test_examples": info.num_examples,
        "val_accuracy": [float(v) for v in history.get("val_accuracy", [])],
        "train_loss": [float(v) for v in history.get("loss", [])],
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work-dir", default=os.path.join("runs", "small_data"))
    parser.add_argument("--name", default="small_data", help="result file name under experiments/results/")
    parser.add_argument("--method", default=None, help="the distilled row's preset (default: kdkeras' default)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kdkeras import artifacts
    from kdkeras.reporting import machine, machine_text

    dataset = f"folder:{write_digits_folder(os.path.join(args.work_dir, 'digits'))}"
    path = os.path.join(RESULTS, f"{args.name}.json")
    command = "python experiments/small_data.py " + " ".join(argv if argv is not None else sys.argv[1:])
    state = json.loads(open(path).read()) if os.path.exists(path) else {}
    if state.get("epochs") != args.epochs:
        state = {"epochs": args.epochs, "runs": []}
    if not args.report_only:
        state.update(command=command.strip(), machine=machine_text(machine()), dataset="scikit-learn digits, 32x32")
    from kdkeras.presets import DEFAULT_PRESET, PRESETS

    method = args.method or DEFAULT_PRESET
    if method not in PRESETS:
        parser.error(f"--method: unknown preset {method!r}; choose from {', '.join(PRESETS)}")

    # Each run is kept under (model, method, seed): one distilled row per method in the report.
    def key_of(run):
        return run["model"], run.get("method"), run["seed"]

    for seed in () if args.report_only else (int(s) for s in args.seeds.split(",")):
        teacher_path = os.path.join(args.work_dir, f"alexnet-seed{seed}.keras")
        for name in ("keras_io_convnet", "alexnet", "ds_alexnet", "distilled"):
            key = (name, method if name == "distilled" else None, seed)
            done = key in {key_of(r) for r in state["runs"]}
            if done and (name != "alexnet" or os.path.exists(teacher_path)):
                continue
            record = {**run_one(name, dataset, seed, args.epochs, teacher_path, method), "command": command.strip()}
            print(f"{name} seed {seed}: test accuracy {record['test_accuracy']:.4f} ({record['seconds']:.0f} s)")
            state["runs"] = [r for r in state["runs"] if key_of(r) != key] + [record]
            if name == "alexnet":  # A new teacher: the students distilled from the old one no longer count.
                state["runs"] = [r for r in state["runs"] if (r["model"], r["seed"]) != ("distilled", seed)]
            artifacts.write_json(path, state)
            write_report(state, os.path.join(RESULTS, args.name))
    write_report(state, os.path.join(RESULTS, args.name))
    return 0


def write_report(state: dict, base: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdkeras import artifacts

    lines = [
        f"# Small unseen data: {state['dataset']}, {state['epochs']} epochs, default settings",
        "",
        # Rows may come from different commands (--method, --seeds): each one that made a row is listed.
        "Commands: " + ", ".join(f"`{c}`" for c in sorted({r.get("command", state["command"]) for r in state["runs"]})),
        "",
        f"Machine: {state['machine']}",
        "",
        "| model | params | test accuracy (mean ± std) | seeds | per seed |",
        "|---|---:|---:|---:|---|",
    ]
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for name, runs in _rows(state["runs"]).items():
        accuracies = np.array([r["test_accuracy"] for r in runs])
        spread = f" ± {accuracies.std(ddof=1):.4f}" if len(runs) > 1 else ""
        per_seed = " ".join(f"{a:.4f}" for a in accuracies)
        lines.append(f"| {name} | {runs[0]['params']:,} | {accuracies.mean():.4f}{spread} | {len(runs)} | {per_seed} |")
        curve = np.mean([r["val_accuracy"] for r in runs], axis=0)
        axes.plot(range(1, len(curve) + 1), curve, marker=".", label=name)
    lines += _test_sample_note(state["runs"])
    lines += _distilled_vs_scratch(state["runs"])
    lines += ["", f"![validation accuracy per epoch]({os.path.basename(base)}.png)", ""]
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (mean over seeds)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}.png")
    plt.close(figure)
    artifacts.write_text(f"{base}.md", "\n".join(lines))


def _rows(runs: list[dict]) -> dict[str, list[dict]]:
    """The report's rows in order, each sorted by seed: the three models, then one row per distillation method."""
    methods = sorted({r["method"] for r in runs if r["model"] == "distilled"})
    keys = [("keras_io_convnet", None), ("alexnet", None), ("ds_alexnet", None)] + [("distilled", m) for m in methods]
    rows = {}
    for model, method in keys:
        selected = sorted(
            (r for r in runs if (r["model"], r.get("method")) == (model, method)), key=lambda r: r["seed"]
        )
        if selected:
            rows[f"distilled ({method})" if method else model] = selected
    return rows


def _test_sample_note(runs: list[dict]) -> list[str]:
    """How many points one test image is worth: on a small test split a seed's Δ moves in those steps."""
    sizes = {r["test_examples"] for r in runs if "test_examples" in r}
    if len(sizes) != 1:  # Runs recorded before the size was kept, or (never expected) splits of different sizes.
        return []
    size = sizes.pop()
    return ["", f"The test split has {size} images: one image is {100 / size:.2f} points of accuracy."]


def _distilled_vs_scratch(runs: list[dict]) -> list[str]:
    """Each distilled row minus the same student from scratch, paired by seed, with a 95 % t interval."""
    from kdkeras.experiments import paired_delta
    from kdkeras.presets import DEFAULT_PRESET

    def by_seed(selected):  # In the shape paired_delta reads: the seed where an experiment row keeps it.
        return {r["seed"]: {"spec": {"train_config": {"seed": r["seed"]}}, **r} for r in selected}

    rows = _rows(runs)
    scratch = by_seed(rows.get("ds_alexnet", []))
    lines = []
    for selected in rows.values():
        if selected[0]["model"] != "distilled":
            continue
        distilled = by_seed(selected)
        seeds = sorted(set(scratch) & set(distilled))
        if not seeds:
            continue
        delta = paired_delta([distilled[s] for s in seeds], [scratch[s] for s in seeds])
        interval = delta["delta_ci95"]
        ci = f", 95 % CI [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]" if interval else ""
        per_seed = ", ".join(f"{100 * d:+.2f} (s{s})" for s, d in delta["delta_per_seed"].items())
        signs = np.sign(np.round(list(delta["delta_per_seed"].values()), 9))  # Equal accuracies: level.
        tally = f"above on {np.sum(signs > 0)}, level on {np.sum(signs == 0)}, below on {np.sum(signs < 0)}"
        method = selected[0]["method"]
        default = " (the default)" if method == DEFAULT_PRESET else ""
        lines += [
            "",
            f"Distilled with `{method}`{default}, alexnet teacher, minus ds_alexnet from scratch, paired by seed: "
            f"{100 * delta['delta_mean']:+.2f} points{ci}; {tally} of {len(seeds)} seeds; per seed {per_seed}.",
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
