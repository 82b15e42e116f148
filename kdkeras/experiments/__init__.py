"""Declarative, resumable experiments: a YAML config in, the paper-style comparison table and plots out.

    python -m kdkeras.experiments experiments/fashion_mnist.yaml --budget quick
    python -m kdkeras.experiments experiments/fashion_mnist.yaml --budget full --rows scratch,tskd

The config holds plain data only (read with `yaml.safe_load`): the dataset, the teacher and the student
architectures, the shared training settings, two budgets (`quick`, `full`) and the rows, each a method with its
loss weights. The runner trains the teacher once (or loads it when the saved one was trained from the same
settings), then every row for every seed. Each finished row writes its own JSON; a row whose JSON exists and holds
the same settings is skipped, and a row interrupted mid-training resumes from its checkpoint folder (the run's
callbacks come from `kdkeras.training.make_callbacks`), so re-running the same command continues where it stopped.
The report step gathers the row JSONs into `RESULTS_DIR/NAME.md` / `.json` and draws the plots.

Modules: `config` (the YAML schema, `load_config`), `runner` (`Experiment`: the teacher and the rows), `report`
(the table and the plots), `statistics` (the paired differences).

Row methods:
    scratch: the student trained on the labels alone.
    reference: another architecture (`model`, `options`) trained on the labels under the students' budget.
    a preset (`kd`, `kd_std`, `dkd`, `dist`, `fitnets`, `attention`, `tskd`; see `kdkeras.presets`): the student
        distilled with that term list; `temperature` and `pairs` override the preset's.
    distill: the student distilled with an explicit `terms` list (`kdkeras.terms` specs).
    Distillation rows also take `collaborative`, `teacher_lr`, `teacher_mimicry`, `teacher_cache` (false: the
    teacher runs live each step instead of filling the teacher-output cache first), and, instead of the experiment's
    teacher, either `teacher`: the name of one of the config's `teachers` (more teachers, each given like `teacher`
    and trained once, as `teacher-NAME`), or `teacher_row`: the name of an earlier row whose model (same seed) is
    the teacher, e.g. a teacher assistant (Mirzadeh et al., AAAI 2020). Either is trained first when it has not
    run yet.
The teachers are the table's first rows: the experiment's, then the named ones. An optional `target_delta` (a
fraction of accuracy: 0.008 is +0.8 points) is the gain over scratch the experiment sets out to show: the Δ plot
marks it, and the report names the rows that reach it in the mean and on every seed.
"""

from kdkeras.experiments.config import BUDGETS, RESULTS_VERSION, check_config, load_config
from kdkeras.experiments.report import write_report
from kdkeras.experiments.runner import Experiment
from kdkeras.experiments.statistics import paired_delta, paired_examples

__all__ = [
    "BUDGETS",
    "RESULTS_VERSION",
    "Experiment",
    "check_config",
    "load_config",
    "paired_delta",
    "paired_examples",
    "write_report",
]
