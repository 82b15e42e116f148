"""Named distillation methods as term lists (plain data, no TensorFlow: the CLI reads it for its help).

`kdkeras.terms.preset(name, **overrides)` turns a preset into term specs; `kdkeras distill --method NAME` and the
experiment rows' `method: NAME` use it.
"""

# Each preset is the term list of a published method, with the weights its authors (or the cited follow-up)
# used; `preset(name, temperature=..., pairs=...)` overrides those arguments in every term that takes them.
PRESETS: dict[str, dict] = {
    "scratch": {
        "doc": "labels only (no teacher): the baseline every method is compared with",
        "terms": [{"name": "ce"}],
    },
    "kd": {
        "doc": "Hinton et al. 2015, with the soft-target weight 0.9 that the literature uses (CE 0.1)",
        "terms": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}],
    },
    "kd_std": {
        "doc": "KD on Z-scored logits (Sun et al., CVPR 2024; authors' --kd-weight 9 --base-temp 2): CE 0.1, KD 9, T 2",
        "terms": [
            {"name": "ce", "weight": 0.1},
            # Z-scored logits have unit std, so T 2 gives soft targets far flatter than raw logits at T 4; the
            # authors raise the KD weight to 9 to keep its gradient in scale with the CE term.
            {"name": "kd", "weight": 9.0, "temperature": 2.0, "standardize": True},
        ],
    },
    "dkd": {
        "doc": "decoupled KD (Zhao et al., CVPR 2022): CE 1, α 1, β 8, T 4, warm-up over the first epochs",
        "terms": [{"name": "ce"}, {"name": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "warmup_epochs": 2}],
    },
    "dist": {
        "doc": "DIST (Huang et al., NeurIPS 2022), CIFAR setting: CE 1, β 2, γ 2, τ 4",
        "terms": [{"name": "ce"}, {"name": "dist", "temperature": 4.0, "beta": 2.0, "gamma": 2.0}],
    },
    "kd_t1": {
        "doc": "KD at T 1 beside full-weight labels: CE 1 + KD 1 (the teacher's probabilities as they are)",
        # At T 1 the student matches the teacher's probabilities, not their high-temperature tail, which a small
        # student cannot reproduce; the labels keep their full weight, so a weak teacher costs little.
        "terms": [{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 1.0, "temperature": 1.0}],
    },
    "kd_t1_dist": {
        "doc": "kd_t1 and DIST together: CE 1 + KD 1 at T 1 + DIST (β 2, γ 2, τ 4)",
        # kd_t1 paid where the student was short of steps (the demo's budget) and DIST where it had more (20-80
        # epochs): KD at T 1 pulls the probabilities toward the teacher's early on, DIST's correlations keep the
        # ranking of the classes once the student fits them.
        "terms": [
            {"name": "ce", "weight": 1.0},
            {"name": "kd", "weight": 1.0, "temperature": 1.0},
            {"name": "dist", "temperature": 4.0, "beta": 2.0, "gamma": 2.0},
        ],
    },
    "fitnets": {
        "doc": "FitNets hints (Romero et al., 2015) beside the labels",
        "terms": [{"name": "ce"}, {"name": "hint", "weight": 1.0}],
    },
    "attention": {
        "doc": "attention transfer (Zagoruyko & Komodakis, 2017) beside the labels",
        "terms": [{"name": "ce"}, {"name": "attention", "weight": 8.0}],
    },
    "tskd": {
        "doc": "teacher–student KD: labels + the teacher's softened output (DIST) + feature hints",
        "terms": [{"name": "ce"}, {"name": "dist", "temperature": 4.0, "beta": 2.0, "gamma": 2.0}, {"name": "hint"}],
    },
    # Multi-exit students (`build_model(..., exits=[...])`): the part of TSKD that `tskd` above leaves out.
    "byot": {
        "doc": "self-distillation alone, no teacher (Zhang et al., ICCV 2019): CE at every exit, the final "
        "output teaching the exits at T 3",
        "terms": [{"name": "ce"}, {"name": "exit_ce"}, {"name": "self_kd", "temperature": 3.0, "weight": 1.0}],
    },
    "tskd_exits": {
        "doc": "TSKD with self-teaching (Xu et al., Applied Intelligence 2022): the teacher teaches the final output "
        "and every exit (KD at T 1, as kd_t1), the final output the exits (T 3), and the labels all of them",
        "terms": [
            {"name": "ce"},
            {"name": "kd", "temperature": 1.0},
            {"name": "exit_ce"},
            {"name": "exit_kd", "temperature": 1.0},
            {"name": "self_kd", "temperature": 3.0},
        ],  # fmt: skip
    },
}
# The default is the recipe that is safest on data and budgets it was not chosen on: the highest worst-case paired
# gain over the 3-seed screens at two budgets (experiments/results/demo_scale.md: 10 epochs on 10,000 images;
# fashion_mnist.md: 20 epochs on 60,000). kd_t1 was never more than 0.06 points below scratch on any of the 6 seeds
# (+0.45 and +0.07 on average); DIST, the default before, won at 20 epochs (+0.17) but lost at the short budget
# (-0.29, worst seed -0.53). DIST and the other presets stay one `--method` away.
DEFAULT_PRESET = "kd_t1"
# A multi-exit student's exits learn only from exit terms: the default there adds them (and with no teacher,
# self-distillation alone).
DEFAULT_EXITS_PRESET = "tskd_exits"
DEFAULT_SELF_PRESET = "byot"
