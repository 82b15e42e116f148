"""The multi-exit rows of an experiment report: each exit's accuracy and cost, the ensemble (mean softmax) and the
majority vote, the early exit chosen on each seed's validation split (means over the seeds), and the plot of test
accuracy against mean MFLOPs per image beside the single-exit students of the same budget."""

from __future__ import annotations

import numpy as np

from kdkeras.reporting import distinct_styles, markdown_table


def exit_summary(records: list[dict]) -> dict | None:
    """Means over the seeds of the rows' `exits` records (`kdkeras.early_exit.exit_report`); None for a row whose
    records hold none."""
    reports = [record["exits"] for record in records if "exits" in record]
    if not reports or len(reports) != len(records):
        return None
    names = list(reports[0]["exits"])
    chosen = [report["chosen"] for report in reports if report.get("chosen")]
    curve = [
        {key: float(np.mean([report["curve"][i][key] for report in reports])) for key in ("threshold", "accuracy",
                                                                                          "mflops")}
        for i in range(len(reports[0]["curve"]))
    ]  # fmt: skip
    return {
        "exits": {
            name: {"accuracy": float(np.mean([r["exits"][name]["accuracy"] for r in reports])),
                   "mflops": reports[0]["exits"][name]["mflops"]}
            for name in names
        },
        "ensemble_accuracy": float(np.mean([r["ensemble_accuracy"] for r in reports])),
        "vote_accuracy": float(np.mean([r["vote_accuracy"] for r in reports])),
        # Per seed, in the order of the records (the row's `seeds`): what the paired comparisons need.
        "ensemble_accuracies": [r["ensemble_accuracy"] for r in reports],
        "vote_accuracies": [r["vote_accuracy"] for r in reports],
        "curve": curve,
        "chosen": None if len(chosen) != len(reports) else {
            "thresholds": [c["threshold"] for c in chosen],
            "accuracy": float(np.mean([c["accuracy"] for c in chosen])),
            "mflops": float(np.mean([c["mflops"] for c in chosen])),
            "full_mflops": chosen[0]["full_mflops"],
        },
    }  # fmt: skip


def exit_table(rows: list[dict]) -> str:
    """A Markdown table of the rows with an `exit_summary`; empty without any."""
    rows = [row for row in rows if row.get("exit_summary")]
    if not rows:
        return ""
    header = ["method", "seeds", "each exit: accuracy (cumulative MFLOPs)", "ensemble", "vote",
              "early exit: accuracy, mean MFLOPs (% of full), thresholds"]  # fmt: skip
    cells = []
    for row in rows:
        summary = row["exit_summary"]
        exits = "; ".join(f"{name} {e['accuracy']:.4f} ({e['mflops']:.2f})" for name, e in summary["exits"].items())
        chosen = summary["chosen"]
        early = "–" if chosen is None else (
            f"{chosen['accuracy']:.4f}, {chosen['mflops']:.2f} ({100 * chosen['mflops'] / chosen['full_mflops']:.0f} "
            f"%), {', '.join(f'{t:g}' for t in chosen['thresholds'])}"
        )  # fmt: skip
        cells.append([row["label"], len(row["seeds"]), exits, f"{summary['ensemble_accuracy']:.4f}",
                      f"{summary['vote_accuracy']:.4f}", early])  # fmt: skip
    return markdown_table(header, cells, [False, True, False, True, True, False])


def width_family(rows: list[dict], multi: dict) -> list[dict]:
    """The single-exit students from scratch that a multi-exit row's early exit competes with: the same model
    family at other widths, trained as long; cheapest first."""
    family = [row for row in rows if row["method"] == "scratch" and not row.get("exit_summary")
              and row["model"] == multi["model"] and row["epochs"] == multi["epochs"]]  # fmt: skip
    return sorted(family, key=lambda row: row["flops"])


def against_curve(curve: list[dict], mflops: float, accuracy: float) -> float | None:
    """How far the early-exit curve lies above a single-exit student (points of accuracy, negative: below it) at
    that student's cost, the curve's accuracy interpolated linearly in MFLOPs; None outside the curve's MFLOPs (a
    student cheaper than the first exit or dearer than the full multi-exit student has nothing to compare with)."""
    points = sorted((p["mflops"], p["accuracy"]) for p in curve)
    costs, accuracies = [c for c, _ in points], [a for _, a in points]
    if not costs[0] <= mflops <= costs[-1]:
        return None
    return 100 * (float(np.interp(mflops, costs, accuracies)) - accuracy)


def family_lines(rows: list[dict]) -> list[str]:
    """One sentence per multi-exit row: its early-exit curve against each width of its single-exit family."""
    lines = []
    for row in [row for row in rows if row.get("exit_summary")]:
        summary = row["exit_summary"]
        # The thresholds' extremes: every image leaving at the first exit, or none before the last.
        exits = list(summary["exits"].values())
        curve = [*summary["curve"], exits[0], exits[-1]]
        parts = []
        for student in width_family(rows, row):
            mflops, accuracy = student["flops"] / 1e6, student["accuracy_mean"]
            gap = against_curve(curve, mflops, accuracy)
            where = "outside the curve's MFLOPs" if gap is None else f"the curve {gap:+.2f} points there"
            parts.append(f"{student['label']} {accuracy:.4f} ({_seeds(student)}) at {mflops:.2f} MFLOPs ({where})")
        if parts:
            lines.append(f"- {row['label']} ({_seeds(row)}), against the single-exit students from scratch: "
                         + "; ".join(parts) + ".")  # fmt: skip
    return lines


def best_single_exit(rows: list[dict], multi: dict) -> dict | None:
    """The best single-exit distillation of a multi-exit row's student at its budget: the distilling rows compared
    with the same scratch row (same backbone, same epochs) that ran every seed the multi-exit row ran, the highest
    mean accuracy over those seeds; None without any."""
    seeds = set(multi["seeds"])
    rivals = [row for row in rows if row.get("teacher") and not row.get("exit_summary")
              and row.get("baseline") is not None and row.get("baseline") == multi.get("baseline")
              and seeds <= set(row["seeds"])]  # fmt: skip
    return max(rivals, key=lambda row: np.mean(list(_on_seeds(row, row["accuracies"], seeds).values())), default=None)


def comparison_lines(rows: list[dict]) -> list[str]:
    """One sentence per multi-exit row: its final exit, ensemble (mean softmax) and vote against the same student
    from scratch and against the best single-exit distillation of that student and budget, each paired by seed."""
    by_name = {row["name"]: row for row in rows}
    lines = []
    for row in [row for row in rows if row.get("exit_summary") and row.get("baseline") in by_name]:
        summary = row["exit_summary"]
        outputs = {"final exit": row["accuracies"], "ensemble": summary["ensemble_accuracies"],
                   "vote": summary["vote_accuracies"]}  # fmt: skip
        sentence = f"- {row['label']} ({_seeds(row)}), paired by seed"
        others = {
            "": by_name[row["baseline"]],
            "the best single-exit distillation of this student and budget, ": best_single_exit(rows, row),
        }
        for role, other in others.items():
            if other is None:
                continue
            theirs = _on_seeds(other, other["accuracies"], set(row["seeds"]))
            if not theirs:
                continue
            mean = np.mean(list(theirs.values()))
            differences = "; ".join(f"{name} {_paired(_on_seeds(row, values, set(theirs)), theirs)}"
                                    for name, values in outputs.items())  # fmt: skip
            sentence += f", against {role}{other['label']} ({mean:.4f} on the same seeds): {differences}"
        lines.append(sentence + ".")
    return lines


def _on_seeds(row: dict, values: list[float], seeds: set) -> dict:
    """`{seed: value}` of a row's per-seed values (in the order of its `seeds`), for the seeds in `seeds`."""
    return {seed: value for seed, value in zip(row["seeds"], values, strict=True) if seed in seeds}


def _paired(mine: dict, theirs: dict) -> str:
    """The mean difference in points and each seed's, e.g. "+0.04 (-0.22, +0.33, +0.00)"."""
    deltas = [100 * (mine[seed] - theirs[seed]) for seed in mine]
    return f"{np.mean(deltas):+.2f} ({', '.join(f'{d:+.2f}' for d in deltas)})"


def _seeds(row: dict) -> str:
    return f"{len(row['seeds'])} seed{'s' * (len(row['seeds']) != 1)}"


def exit_section(rows: list[dict], plot: str) -> list[str]:
    """The report's Markdown lines on its multi-exit rows (none without any): the table, the early-exit curves
    against the single-exit width family, and the plot `plot`."""
    table = exit_table(rows)
    if not table:
        return []
    details = [*comparison_lines(rows), *family_lines(rows)]
    return ["", "Multi-exit students (means over the seeds; the early exit's threshold is chosen on each seed's "
            "validation split, the cheapest within 0.3 points of its full student there):", "", table, "",
            *([*details, ""] if details else []), f"![early exit]({plot})"]  # fmt: skip


def plot_early_exit(rows: list[dict], path: str) -> bool:
    """Test accuracy against mean MFLOPs per image, one panel per training budget: each multi-exit row's early-exit
    curve (means over seeds, one point per confidence threshold) and its exits, beside the single-exit rows trained
    as long. Returns whether a plot was written (only when a row has exits)."""
    multi = [row for row in rows if row.get("exit_summary")]
    if not multi:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdkeras import artifacts

    budgets = sorted({row["epochs"] for row in multi})
    figure, panels = plt.subplots(len(budgets), 1, figsize=(9, 4 + 6 * len(budgets)), squeeze=False,
                                  layout="constrained")  # fmt: skip
    # One sequence of looks for every curve and point of every panel: no two share a colour until ten are drawn,
    # then the points' markers tell them apart, so the legend names each once.
    styles = distinct_styles("marker", list("s^vD<>"))
    for axes, epochs in zip(panels[:, 0], budgets, strict=True):
        _early_exit_panel(axes, rows, [row for row in multi if row["epochs"] == epochs], styles)
        axes.set_title(f"{epochs} epochs", fontsize=10)
        axes.set_ylabel("test accuracy (%, mean over seeds)")
        axes.grid(True, alpha=0.3)
    panels[-1, 0].set_xlabel("mean MFLOPs per test image")
    figure.legend(fontsize=7, loc="outside lower center")  # Below the axes: the points stay visible.
    artifacts.save_figure(figure, path)
    plt.close(figure)
    return True


def _early_exit_panel(axes, rows: list[dict], multi: list[dict], styles) -> None:
    """One budget's panel: the width family from scratch as a line, the other single-exit rows of that budget as
    points, each multi-exit row's early-exit curve and its exits alone."""
    epochs = multi[0]["epochs"]
    family = {row["name"]: row for multi_row in multi for row in width_family(rows, multi_row)}
    single = [row for row in rows if not row.get("exit_summary") and row["method"] != "teacher"
              and row["epochs"] == epochs and row["name"] not in family]  # fmt: skip
    if family:  # The widths from scratch as one line: the cost/accuracy trade a single-exit student offers.
        widths = sorted(family.values(), key=lambda row: row["flops"])
        axes.errorbar([row["flops"] / 1e6 for row in widths], [100 * row["accuracy_mean"] for row in widths],
                      yerr=[100 * (row["accuracy_std"] or 0) for row in widths], fmt="k--s", capsize=3,
                      label=f"single-exit students from scratch, {epochs} epochs (the width family)")  # fmt: skip
        for row in widths:
            axes.annotate(f"{row['params'] / 1000:.0f} k params", (row["flops"] / 1e6, 100 * row["accuracy_mean"]),
                          textcoords="offset points", xytext=(4, -12), fontsize=7)  # fmt: skip
    for row in multi:
        summary, style = row["exit_summary"], next(styles)
        curve = summary["curve"]
        # The curve takes the style's marker too: past ten curves a colour repeats, its marker does not.
        axes.plot([p["mflops"] for p in curve], [100 * p["accuracy"] for p in curve], "-", marker=style["marker"],
                  markersize=3, color=style["color"], label=f"{row['label']}: early exit")  # fmt: skip
        exits = list(summary["exits"].values())
        axes.scatter([e["mflops"] for e in exits], [100 * e["accuracy"] for e in exits], marker="x",
                     color=style["color"], zorder=3, label=f"{row['label']}: each exit alone")  # fmt: skip
    for row in single:
        style = next(styles)
        axes.errorbar(row["flops"] / 1e6, 100 * row["accuracy_mean"], yerr=100 * (row["accuracy_std"] or 0),
                      fmt=style["marker"], color=style["color"], capsize=3,
                      label=f"{row['label']} (single exit)")  # fmt: skip
