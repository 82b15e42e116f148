"""Paired comparisons of two rows of an experiment: the accuracy difference seed by seed with its t-interval, and
example by example on the test set (the standard error the test sample alone gives a seed's difference, McNemar's
exact test)."""

from __future__ import annotations


def paired_delta(records: list[dict], baseline: list[dict], confidence: float = 0.95) -> dict:
    """Accuracy differences `records − baseline`, paired by seed, with a t-interval for their mean.

    Returns:
        `{"delta_per_seed": {seed: Δ}, "delta_mean": mean Δ or None, "delta_ci95": [low, high] or None}`; the
        interval needs at least 2 paired seeds (Student's t with n − 1 degrees of freedom).
    """
    import numpy as np
    from scipy import stats

    base = {r["spec"]["train_config"]["seed"]: r["test_accuracy"] for r in baseline}
    per_seed = {
        r["spec"]["train_config"]["seed"]: r["test_accuracy"] - base[r["spec"]["train_config"]["seed"]]
        for r in records
        if r["spec"]["train_config"]["seed"] in base
    }
    deltas = np.array(list(per_seed.values()))
    interval = None
    if len(deltas) >= 2:
        low, high = stats.t.interval(confidence, len(deltas) - 1, loc=deltas.mean(), scale=stats.sem(deltas))
        interval = [float(low), float(high)] if np.isfinite(low) else [float(deltas.mean())] * 2
    return {
        "delta_per_seed": {str(k): float(v) for k, v in sorted(per_seed.items())},
        "delta_mean": float(deltas.mean()) if len(deltas) else None,
        "delta_ci95": interval,
    }


def paired_examples(records: list[dict], baseline: list[dict]) -> dict[str, dict]:
    """Seed by seed, how a row's test predictions differ from its baseline's, example by example: the part of a
    seed's Δ that the luck of the test sample could make.

    Two models of one seed are scored on the same test examples, so their Δ is the mean of per-example differences
    d = (row right) − (baseline right) in {-1, 0, 1}. With `a` examples only the row gets right and `c` only the
    baseline, of `n`, the test sample alone gives Δ = (a − c)/n a standard error of
    sqrt((a/n + c/n − ((a − c)/n)²)/n), and McNemar's exact test asks whether `a` and `c` differ by more than
    chance (two-sided binomial test of `a` out of `a + c` at 1/2). Seeds without recorded predictions (runs of
    code before predictions were recorded) or scored on other examples are left out.

    Returns:
        `{seed: {"examples", "disagreement", "only_row_right", "only_baseline_right", "delta_se", "mcnemar_p"}}`.
    """
    import numpy as np
    from scipy import stats

    from kdkeras.evaluation import decode_classes

    def outputs(record):
        if "test_predictions" not in record:
            return None
        return decode_classes(record["test_predictions"]), decode_classes(record["test_labels"])

    base = {r["spec"]["train_config"]["seed"]: outputs(r) for r in baseline}
    pairs = {}
    for record in records:
        seed = record["spec"]["train_config"]["seed"]
        mine, theirs = outputs(record), base.get(seed)
        if mine is None or theirs is None or not np.array_equal(mine[1], theirs[1]):
            continue
        (predicted, labels), (baseline_predicted, _) = mine, theirs
        right, baseline_right = predicted == labels, baseline_predicted == labels
        n = len(labels)
        a, c = int(np.sum(right & ~baseline_right)), int(np.sum(~right & baseline_right))
        pairs[str(seed)] = {
            "examples": n,
            "disagreement": float(np.mean(predicted != baseline_predicted)),
            "only_row_right": a,
            "only_baseline_right": c,
            "delta_se": float(np.sqrt((a / n + c / n - ((a - c) / n) ** 2) / n)),
            "mcnemar_p": float(stats.binomtest(a, a + c, 0.5).pvalue) if a + c else 1.0,
        }
    return dict(sorted(pairs.items(), key=lambda item: int(item[0])))
