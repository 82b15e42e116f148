"""Distillation terms: every method is one registered class, and a distiller's loss is Σ weight · term.

A term maps `(labels, teacher, student)` to one loss value per example; `teacher` and `student` are read-only
`Outputs` views holding the logits and the feature maps the term asked for by layer name. Terms are registered by
name, built from names or plain dicts (`get("kd", temperature=4)`, `get({"name": "kd", "temperature": 4})`), and
serialized back to those dicts, so CLI options, config files, experiment rows and the tuner all describe a method
the same way. A new method is a subclass with `@register("name")`; nothing else changes.

    @register("my_term")
    class MyTerm(Term):
        def __call__(self, labels, teacher, student, training=False):
            return ops.mean(ops.square(teacher.logits - student.logits), axis=-1)

Presets (`preset("tskd")`) expand to the term lists of the published methods; see `kdkeras.presets`.
"""

from kdkeras.terms.base import Outputs, Term, available, get, get_list, register, serialize
from kdkeras.terms.exits import ExitCrossEntropy, ExitKD, SelfKD
from kdkeras.terms.features import Attention, Hint
from kdkeras.terms.logits import DIST, DKD, KD, CrossEntropy
from kdkeras.terms.options import default_terms, from_options, needs_live_teacher, parse_term, preset

__all__ = [
    "Attention", "CrossEntropy", "DIST", "DKD", "ExitCrossEntropy", "ExitKD", "Hint", "KD", "Outputs", "SelfKD",
    "Term", "available", "default_terms", "from_options", "get",
    "get_list", "needs_live_teacher", "parse_term", "preset", "register", "serialize",
]  # fmt: skip
