"""Terms on a multi-exit student's exits (`kdkeras.models.exits`): the labels at every exit (`exit_ce`), the teacher
at every exit (`exit_kd`) and the student teaching itself, its deepest output the shallow exits (`self_kd`).

TSKD's second half, "self-teaching in the student network" (Xu et al., "Teacher-student collaborative knowledge
distillation for image classification", Applied Intelligence 53, 2022), after "Be Your Own Teacher" (Zhang et al.,
ICCV 2019): each exit learns from the labels and from the deepest exit's softened output. Each term sums over the
exits, as BYOT sums its per-exit losses; the final output's own terms (`ce`, `kd`, …) stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from kdkeras import losses
from kdkeras.terms.base import Term, _check_number, _is_list, register


class _ExitTerm(Term):
    """A term over the student's exit logits; `exits="auto"` takes every exit of the student."""

    search_space = {"weight": (0.1, 2.0, "log")}

    def __init__(self, weight=1.0, exits: str | Sequence[str] = "auto", name=None):
        super().__init__(weight, name)
        if exits != "auto" and not (_is_list(exits) and exits and all(isinstance(e, str) for e in exits)):
            raise ValueError(f"term '{self.name}': exits must be 'auto' or a list of exit layer names, got {exits!r}")
        self.exits = exits if exits == "auto" else list(exits)

    def build(self, teacher, student):
        from kdkeras.models.exits import exit_layers

        available = exit_layers(student)
        if not available:
            raise ValueError(
                f"term '{self.name}': the student '{student.name}' has no exits (build it with exits=[...], e.g. "
                "build_model('ds_alexnet', shape, classes, exits=['stage3', 'stage4']))"
            )
        if self.exits == "auto":
            self.exits = available
        unknown = [e for e in self.exits if e not in available]
        if unknown:
            raise ValueError(f"term '{self.name}': no exit {', '.join(unknown)}; the student's: {', '.join(available)}")

    @property
    def student_layers(self):
        if self.exits == "auto":
            raise RuntimeError(f"term '{self.name}' is not built yet: its 'auto' exits are unknown")
        return tuple(self.exits)

    def get_config(self):
        return {**super().get_config(), "exits": self.exits}


@register("exit_ce")
class ExitCrossEntropy(_ExitTerm):
    """Σ over exits of the cross-entropy with the labels."""

    uses_labels = True
    needs_teacher = False

    def __call__(self, labels, teacher, student, training=False):
        return sum(
            keras.losses.sparse_categorical_crossentropy(labels, ops.cast(student[e], "float32"), from_logits=True)
            for e in self.exits
        )


@register("exit_kd")
class ExitKD(_ExitTerm):
    """Σ over exits of the teacher's soft targets, T² · KL(softmax(t/T) ‖ softmax(exit/T)): the teacher teaches
    every exit, not only the final output.

    Args:
        temperature: T > 0.
    """

    search_space = {"weight": (0.1, 2.0, "log"), "temperature": (1.0, 8.0, "log")}

    def __init__(self, weight=1.0, exits="auto", temperature: float = 4.0, name=None):
        super().__init__(weight, exits, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)

    def __call__(self, labels, teacher, student, training=False):
        return sum(losses.soft_target_kl(teacher.logits, student[e], self.temperature) for e in self.exits)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@register("self_kd")
class SelfKD(_ExitTerm):
    """Self-distillation: Σ over exits of T² · KL(target ‖ softmax(exit/T)), the target a constant: the student's
    final output softened at T (`source="final"`, BYOT's deepest exit; T = 3 there), or the mean of the softened
    outputs of every exit and the final one (`source="ensemble"`, the exits' vote).

    Args:
        temperature: T > 0.
        source: `"final"` or `"ensemble"`.
    """

    needs_teacher = False
    search_space = {"weight": (0.1, 2.0, "log"), "temperature": (1.0, 8.0, "log")}

    def __init__(self, weight=1.0, exits="auto", temperature: float = 3.0, source: str = "final", name=None):
        super().__init__(weight, exits, name)
        self.temperature = _check_number(self.name, "temperature", temperature, strict=True)
        if source not in ("final", "ensemble"):
            raise ValueError(f"term '{self.name}': source must be 'final' or 'ensemble', got {source!r}")
        self.source = source

    def __call__(self, labels, teacher, student, training=False):
        t = self.temperature
        if self.source == "final":
            target = student.logits
        else:
            outputs = [ops.cast(student[e], "float32") for e in self.exits] + [ops.cast(student.logits, "float32")]
            mean = sum(ops.softmax(z / t, axis=-1) for z in outputs) / len(outputs)
            # T · log p: the logits whose softmax at T is p, so `soft_target_kl` can take them.
            target = t * ops.log(ops.maximum(mean, 1e-12))
        target = ops.stop_gradient(ops.cast(target, "float32"))
        return sum(losses.soft_target_kl(target, student[e], t) for e in self.exits)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature, "source": self.source}
