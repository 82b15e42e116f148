"""The experiment report: per row mean ± std over seeds, the paired difference to the same student from scratch
with its t-interval (`kdkeras.experiments.statistics`), and the plots (accuracy vs. parameters and FLOPs, Δ per
method, validation curves)."""

from __future__ import annotations

import json
import os

from kdkeras.experiments.config import distills
from kdkeras.experiments.exit_rows import exit_section, exit_summary, plot_early_exit
from kdkeras.experiments.statistics import paired_delta, paired_examples
from kdkeras.reporting import distinct_styles, machine_text, markdown_table


def write_report(experiment, command: str) -> dict:
    """Writes `NAME.md`, `NAME.json` and the PNG plots of an experiment from its finished rows.

    Args:
        experiment: a `kdkeras.experiments.Experiment`.
        command: the command line to print above the table.

    Returns:
        The report as written to JSON, plus its Markdown `table`.
    """
    from kdkeras import artifacts

    config = experiment.config
    teachers, results = experiment.collect()
    rows = [
        _summary(experiment.teacher_run(name), _teacher_label(name, record), "teacher", [record])
        for name, record in teachers.items()
    ]
    for row in rows:
        row.update(paired_delta([], []), baseline=None)
    finished = [row for row in config["rows"] if results[row["name"]]]
    student_rows = [_summary(row["name"], row["label"], row["method"], results[row["name"]]) for row in finished]
    _compare_with_scratch(experiment, student_rows, finished, results)
    _compare_with_teacher(experiment, student_rows, finished, teachers, results)
    rows += student_rows
    machines = {machine_text(r["machine"]) for r in [*teachers.values(), *sum(results.values(), [])]}
    report = {
        "name": experiment.config["name"],
        "budget": experiment.budget,
        "command": command,
        "machine": sorted(machines),
        "dataset": experiment.config["dataset"],
        "budget_settings": experiment.plan,
        "training": experiment.config["training"],
        "rows": rows,
        "missing": [r["name"] for r in config["rows"] if len(results[r["name"]]) < len(experiment.row_seeds(r))],
        "earlier_teacher": earlier_teacher(experiment, teachers, results),
        "target_delta": config["target_delta"],
    }
    report["reach_target"] = rows_reaching_target(finished, student_rows, report["missing"], config["target_delta"])
    artifacts.write_json(f"{experiment.report_base}.json", report)
    artifacts.write_text(
        f"{experiment.report_base}.md", _markdown(report, experiment.config, os.path.basename(experiment.report_base))
    )
    report["table"] = _table(rows)
    _plot(rows, experiment, teachers, results, experiment.report_base)
    return report


def reaches_target(row: dict, target: float | None) -> bool:
    """Whether a row's gain over scratch is at least `target` in the mean and on every seed (the claim a reader can
    check seed by seed, not a mean lifted by one lucky seed)."""
    per_seed = list(row.get("delta_per_seed", {}).values())
    return target is not None and bool(per_seed) and row["delta_mean"] >= target and min(per_seed) >= target


def rows_reaching_target(config_rows: list[dict], summaries: list[dict], missing: list[str], target) -> list[str]:
    """The names of the distilling rows, finished for every seed, that reach `target` (a longer scratch row also has a
    Δ, against a shorter scratch row, but it is not what the target is about)."""
    return [
        summary["name"] for row, summary in zip(config_rows, summaries, strict=True)
        if distills(row) and summary["name"] not in missing and reaches_target(summary, target)
    ]  # fmt: skip


def _teacher_label(name: str | None, record: dict) -> str:
    """The experiment's teacher by its architecture; a named one by its name, plus the architecture unless the name
    already is it ("teacher 'resnet56'", not "teacher 'resnet56' (resnet56)")."""
    if name is None:
        return f"teacher ({record['model']})"
    return f"teacher '{name}'" if name == record["model"] else f"teacher '{name}' ({record['model']})"


def _compare_with_scratch(experiment, rows: list[dict], config_rows: list[dict], results: dict) -> None:
    """Adds to each row its paired Δ to the scratch row of the same architecture and the same number of epochs,
    seed by seed (the rows of one seed share the initial weights' seed, the data order and the augmentation
    draws). A longer scratch run is compared with the longest shorter one: how far from converged that budget is."""
    scratch_rows = [r for r in experiment.config["rows"] if r["method"] == "scratch"]
    for row, config_row in zip(rows, config_rows, strict=True):
        baseline = _baseline(experiment, config_row, scratch_rows)
        baseline_records = results[baseline["name"]] if baseline else []
        row.update(paired_delta(results[config_row["name"]], baseline_records))
        row["test_pairs"] = paired_examples(results[config_row["name"]], baseline_records)
        row["baseline"] = baseline["name"] if baseline else None


def _compare_with_teacher(experiment, rows: list[dict], config_rows: list[dict], teachers: dict, results: dict) -> None:
    """Adds to each distillation row the run name of its teacher and how many times the student's parameters and
    FLOPs that teacher has: a compression target such as "1/8 of the teacher" is read off the table."""
    for row, config_row in zip(rows, config_rows, strict=True):
        row["teacher"] = row["teacher_ratio"] = None
        if not distills(config_row):
            continue
        if config_row.get("teacher_row") is not None:
            name, records = config_row["teacher_row"], results[config_row["teacher_row"]]
            teacher = records[0] if records else None
        else:
            name, teacher = experiment.teacher_run(config_row.get("teacher")), teachers.get(config_row.get("teacher"))
        row["teacher"] = name
        if teacher is not None:
            row["teacher_ratio"] = {key: teacher[key] / row[key] for key in ("params", "flops")}


def _backbone(experiment, row: dict) -> dict:
    """A row's architecture without its exit heads: a multi-exit student is compared with the same network trained
    alone, whose final output its own final exit is."""
    model = experiment.row_model(row)
    return {**model, "options": {k: v for k, v in model["options"].items() if k != "exits"}}


def _baseline(experiment, row: dict, scratch_rows: list[dict]) -> dict | None:
    model = _backbone(experiment, row)
    candidates = [b for b in scratch_rows if b is not row and _backbone(experiment, b) == model]
    same_budget = [b for b in candidates if b["epochs_multiplier"] == row["epochs_multiplier"]]
    if same_budget:
        return same_budget[0]
    if row["method"] == "scratch":
        # The convergence check: against the longest shorter scratch run, so each doubling shows what it added.
        shorter = [b for b in candidates if b["epochs_multiplier"] < row["epochs_multiplier"]]
        return max(shorter, key=lambda b: b["epochs_multiplier"], default=None)
    return None


def earlier_teacher(experiment, teachers: dict, results: dict) -> dict[str, list[int]]:
    """The distillation runs (`{row: [seeds]}`) that learned from another training of their teacher than the one in
    the table: a teacher retrained with the same settings (e.g. after a fresh checkout lost its weights) is not
    bit-identical, and the rows distilled before keep their results.

    Args:
        teachers: the teachers' records in the table, `{None: the experiment's, name: a named one's}`.

    A run is matched by the teacher's weight digest when both were recorded; runs recorded before digests were
    (and a teacher record without one) are matched by time: such a run learned from the current teacher only if it
    finished after it."""
    others = {}
    for row in experiment.config["rows"]:
        if not distills(row) or row.get("teacher_row") is not None:  # A teacher assistant's teacher is a row.
            continue
        teacher = teachers.get(row.get("teacher"))
        if teacher is None:
            continue
        for record in results[row["name"]]:
            if "teacher_weights" in record and "weights" in teacher:
                other = record["teacher_weights"] != teacher["weights"]
            else:
                other = record["finished_at"] < teacher["finished_at"]
            if other:
                others.setdefault(row["name"], []).append(record["spec"]["train_config"]["seed"])
    return others


def _summary(name: str, label: str, method: str, records: list[dict]) -> dict:
    import numpy as np

    accuracies = np.array([r["test_accuracy"] for r in records])
    return {
        "name": name,
        "label": label,
        "method": method,
        "model": records[0]["model"],
        "params": records[0]["params"],
        "flops": records[0]["flops"],
        "seeds": [r["spec"]["train_config"]["seed"] for r in records],
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std(ddof=1)) if len(records) > 1 else None,
        "accuracies": accuracies.tolist(),
        # None for a teacher read from a file (trained elsewhere).
        "train_seconds_mean": (
            None
            if any(r["train_seconds"] is None for r in records)
            else float(np.mean([r["train_seconds"] for r in records]))
        ),
        # None when a seed's CPU time is unknown (a process of its run did not record it).
        "cpu_seconds_mean": (
            None
            if any(r.get("cpu_seconds") is None for r in records)
            else float(np.mean([r["cpu_seconds"] for r in records]))
        ),
        "epochs": len(records[0]["history"].get("loss", [])),
        "machine": records[0]["machine"],
        "exit_summary": exit_summary(records),
    }


def _markdown(report: dict, config: dict, title: str) -> str:
    lines = [
        f"# {title}: {config['description'] or config['name']}".rstrip(),
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {'; '.join(report['machine']) or 'n/a'}  ",
        f"Dataset: {report['dataset']}; budget `{report['budget']}`: {json.dumps(report['budget_settings'])}; "
        f"training: {json.dumps(report['training'])}",
        "",
        _table(report["rows"]),
        "",
        "Test accuracy on the full test split; mean ± sample standard deviation over the seeds (± omitted for one "
        "seed). Train time is the wall time of `fit` (training and validation, no test), mean over seeds; a resumed "
        "run adds the epochs its earlier processes finished (runs of code before commit 7e4f016 count only the last "
        "process). CPU time is the run's CPU seconds (all threads), which other jobs on the machine inflate less; a "
        "resumed run adds what its earlier processes spent on their epochs (runs of code before commit 90280c2 count "
        "only the last process; –: a process of the run did not record it). "
        "Δ vs scratch: the row's accuracy minus that of the scratch row with the same student and epochs, seed by "
        "seed (same initial-weight seed, data order and augmentation draws); its mean, a 95 % Student-t interval "
        "over the paired seeds (2 or more), and each seed's Δ. A longer scratch row is compared with the longest "
        "shorter one: what its extra epochs added. "
        "Test-sample SE of Δ: how much of one seed's Δ the luck of the test sample alone could make (from the "
        "examples only one of the two models gets right; mean over the seeds whose runs recorded their "
        "predictions), and McNemar's exact p per such seed: whether that seed's two models differ by more than "
        "that luck. A Δ well above its SE on every seed, with small p, is a gain the test set can see. "
        "Teacher ÷ student: the distilling row's teacher (a teacher run or the row that teaches it) and how many "
        "times the student's parameters and FLOPs it has.",
    ]
    if report["missing"]:
        lines.append(f"Not finished for every seed yet: {', '.join(report['missing'])}.")
    if report["target_delta"] is not None:
        reached = [row["label"] for row in report["rows"] if row["name"] in report["reach_target"]]
        lines.append(
            f"Target: Δ vs scratch ≥ {100 * report['target_delta']:+.2f} points in the mean and on every seed, "
            f"all seeds finished: {'reached by ' + ', '.join(reached) if reached else 'reached by no row'}."
        )
    if report["earlier_teacher"]:
        lines.append(
            "Distilled from an earlier training of their teacher (same settings and seed, not bit-identical to the "
            "one in the table, which replaced it; its record is in the git history of teacher.json, or "
            "teacher-NAME.json for a named teacher): "
            + "; ".join(
                f"{name} (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})"
                for name, seeds in report["earlier_teacher"].items()
            )
            + "."
        )
    lines += exit_section(report["rows"], f"{title}-early_exit.png")
    lines += [
        "",
        f"![accuracy vs parameters and FLOPs]({title}-accuracy_vs_params.png)",
        "",
        f"![difference to scratch]({title}-delta.png)",
        "",
        f"![validation accuracy]({title}-val_curves.png)",
        "",
    ]
    return "\n".join(lines)


def _table(rows: list[dict]) -> str:
    """The comparison table in Markdown."""
    header = ["method", "model", "params", "MFLOPs", "teacher ÷ student (params, FLOPs)", "epochs", "test accuracy",
              "seeds", "Δ vs scratch (points)", "95 % CI", "Δ per seed", "test-sample SE of Δ", "McNemar p per seed",
              "train time (s)", "CPU time (s)"]  # fmt: skip
    numeric = [False, False, True, True, False, True, True, True, True, False, False, True, False, True, True]
    cells = []
    for row in rows:
        spread = f" ± {row['accuracy_std']:.4f}" if row["accuracy_std"] is not None else ""
        delta = "" if row.get("delta_mean") is None else f"{100 * row['delta_mean']:+.2f}"
        interval = (
            "" if not row.get("delta_ci95") else "[{:+.2f}, {:+.2f}]".format(*(100 * v for v in row["delta_ci95"]))
        )
        per_seed = " ".join(f"{100 * v:+.2f}" for v in row.get("delta_per_seed", {}).values())
        ratio = row.get("teacher_ratio")
        to_teacher = "" if not ratio else f"{row['teacher']} ({ratio['params']:.1f}×, {ratio['flops']:.1f}×)"
        pairs = row.get("test_pairs", {})
        sample_se = f"{100 * sum(p['delta_se'] for p in pairs.values()) / len(pairs):.2f}" if pairs else ""
        # In the order of "Δ per seed"; "–" for a seed whose runs did not record their predictions.
        seeds = row.get("delta_per_seed", {}) if pairs else {}
        mcnemar = " ".join(f"{pairs[seed]['mcnemar_p']:.2g}" if seed in pairs else "–" for seed in seeds)
        cells.append([
            row["label"], row["model"], f"{row['params']:,}", f"{row['flops'] / 1e6:.1f}", to_teacher, row["epochs"],
            f"{row['accuracy_mean']:.4f}{spread}", len(row["seeds"]), delta, interval, per_seed, sample_se, mcnemar,
            "–" if row["train_seconds_mean"] is None else f"{row['train_seconds_mean']:.0f}",
            "–" if row["cpu_seconds_mean"] is None else f"{row['cpu_seconds_mean']:.0f}",
        ])  # fmt: skip
    return markdown_table(header, cells, numeric)


def _plot(rows: list[dict], experiment, teachers: dict, results: dict, base: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display needed.
    import matplotlib.pyplot as plt

    from kdkeras import artifacts

    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axes, key, label in ((panels[0], "params", "parameters"), (panels[1], "flops", "FLOPs per image")):
        # Students share one size: a legend names the points instead of labels that would overlap, so each row gets
        # its own colour and marker pair; teachers and references are squares.
        for row, style in zip(rows, distinct_styles("marker", list("o^vD<>")), strict=False):
            marker = "s" if row["method"] in ("teacher", "reference") else style["marker"]
            axes.errorbar(
                row[key], row["accuracy_mean"], yerr=row["accuracy_std"] or 0, fmt=marker, capsize=3,
                color=style["color"], label=f"{row['label']} ({row['accuracy_mean']:.4f})",
            )  # fmt: skip
        axes.margins(x=0.25, y=0.15)
        axes.set_xscale("log")
        axes.set_xlabel(f"{label} (log scale)")
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("test accuracy (mean ± std over seeds)")
    panels[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    figure.suptitle(f"{experiment.config['name']}: accuracy vs. size")
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}-accuracy_vs_params.png")
    plt.close(figure)

    compared = [r for r in rows if r.get("delta_mean") is not None and r["method"] != "scratch"]
    figure, axes = plt.subplots(figsize=(9, 0.5 * len(compared) + 1.5))
    for i, row in enumerate(compared):
        mean = row["delta_mean"]
        low, high = row["delta_ci95"] or (mean, mean)
        axes.errorbar(100 * mean, i, xerr=[[100 * (mean - low)], [100 * (high - mean)]], fmt="o", capsize=4)
        seeds = [100 * v for v in row["delta_per_seed"].values()]
        axes.scatter(seeds, [i] * len(seeds), marker="x", color="gray", zorder=3)
    axes.axvline(0, color="black", linewidth=0.8)
    target = experiment.config["target_delta"]
    if target is not None:
        axes.axvline(100 * target, color="tab:green", linestyle="--", label=f"target {100 * target:+.2f}")
        axes.legend(fontsize=8, loc="lower right")
    axes.set_yticks(
        range(len(compared)), [f"{r['label']} (n={len(r['delta_per_seed'])})" for r in compared], fontsize=8
    )
    axes.set_xlabel("Δ test accuracy vs. the same student from scratch (points)\npaired mean, 95 % CI, each seed (x)")
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}-delta.png")
    plt.close(figure)

    _plot_val_curves(experiment, teachers, results, base)
    plot_early_exit(rows, f"{base}-early_exit.png")


def _val_curve_panels(experiment, teachers: dict, results: dict) -> dict[str, list[tuple[str, list[float]]]]:
    """The first seed's validation curve of every teacher and row, one panel per architecture (the teachers, then each
    student as configured), so that a panel compares methods on the same student rather than two dozen curves at
    once."""
    panels = {"teachers": [(_teacher_label(name, record), record) for name, record in teachers.items()]}
    for row in experiment.config["rows"]:
        model = experiment.row_model(row)
        options = ", ".join(f"{key} {value}" for key, value in sorted(model["options"].items()))
        title = f"{model['model']} ({options})" if options else model["model"]
        panels.setdefault(title, []).extend((row["label"], record) for record in results[row["name"]][:1])
    return {
        title: [(label, record["history"]["val_accuracy"]) for label, record in curves
                if "val_accuracy" in record["history"]]
        for title, curves in panels.items()
    }  # fmt: skip


def _plot_val_curves(experiment, teachers: dict, results: dict, base: str) -> None:
    import matplotlib.pyplot as plt

    from kdkeras import artifacts

    panels = {title: curves for title, curves in _val_curve_panels(experiment, teachers, results).items() if curves}
    if not panels:
        return
    figure, axes_list = plt.subplots(len(panels), 1, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for axes, (title, curves) in zip(axes_list[:, 0], panels.items(), strict=True):
        # Ten colours solid, then dashed, then dotted: no two curves of a panel look alike.
        for (label, values), style in zip(curves, distinct_styles("linestyle", ["-", "--", ":"]), strict=False):
            axes.plot(range(1, len(values) + 1), values, linewidth=1.2, label=label, **style)
        axes.set_title(title, fontsize=10)
        axes.set_ylabel("validation accuracy")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes_list[-1, 0].set_xlabel("epoch")
    figure.suptitle(f"{experiment.config['name']}: validation accuracy per epoch (first seed of each row)")
    figure.tight_layout()
    artifacts.save_figure(figure, f"{base}-val_curves.png")
    plt.close(figure)
