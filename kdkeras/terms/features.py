"""Terms on intermediate feature maps: FitNets hints through adapters (`hint`) and attention transfer (`attention`)."""

from __future__ import annotations

from collections.abc import Sequence

from keras import ops

from kdkeras import losses
from kdkeras.adapters import FeatureAdapter
from kdkeras.models import default_feature_pairs, require_layers
from kdkeras.terms.base import Term, _check_number, _is_list, register


class _FeatureTerm(Term):
    """A term over `(teacher layer, student layer)` feature pairs; `pairs="auto"` pairs the deepest stages."""

    reads_teacher_features = True
    search_space = {"weight": (0.1, 4.0, "log")}

    def __init__(self, weight=1.0, pairs: str | Sequence = "auto", name=None):
        super().__init__(weight, name)
        if pairs != "auto":
            if not (_is_list(pairs) and pairs and all(_is_list(p) and len(p) == 2 for p in pairs)) or not all(
                isinstance(n, str) for p in pairs for n in p
            ):
                raise ValueError(
                    f"term '{self.name}': pairs must be 'auto' or a non-empty list of [teacher_layer, student_layer], "
                    f"got {pairs!r}"
                )
            pairs = [tuple(p) for p in pairs]
        self.pairs = pairs

    def build(self, teacher, student):
        if self.pairs == "auto":
            self.pairs = default_feature_pairs(teacher, student)
            if not self.pairs:
                raise ValueError(f"term '{self.name}': no stage layers to pair; pass pairs=[[teacher, student]]")
        for t_name, s_name in self.pairs:
            for role, model, layer in (("teacher", teacher, t_name), ("student", student, s_name)):
                (found,) = require_layers(model, [layer], role)
                if len(found.output.shape) != 4:
                    raise ValueError(
                        f"term '{self.name}': {role} layer '{layer}' outputs shape {tuple(found.output.shape)}, "
                        "not a (batch, H, W, C) feature map"
                    )

    @property
    def teacher_layers(self):
        return tuple(t for t, _ in self._resolved())

    @property
    def student_layers(self):
        return tuple(s for _, s in self._resolved())

    def _resolved(self):
        if self.pairs == "auto":
            raise RuntimeError(f"term '{self.name}' is not built yet: its 'auto' pairs are unknown")
        return self.pairs

    def get_config(self):
        pairs = self.pairs if self.pairs == "auto" else [list(p) for p in self.pairs]
        return {**super().get_config(), "pairs": pairs}


@register("hint")
class Hint(_FeatureTerm):
    """FitNets hints: Σ over pairs of the mean squared difference between the teacher's feature map and the
    student's, passed through a trainable `FeatureAdapter` (1×1 conv + BN) to the teacher's channels.

    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (see `losses.hint_loss`).

    Args:
        pairs: `[[teacher_layer, student_layer], ...]`, or `"auto"` (the deepest stage of each network).
        synchronized_bn: the adapters synchronize their batch statistics across replicas.
    """

    def __init__(self, weight=1.0, pairs="auto", synchronized_bn: bool = False, name=None):
        super().__init__(weight, pairs, name)
        self.synchronized_bn = bool(synchronized_bn)
        self.adapters = []

    def build(self, teacher, student):
        super().build(teacher, student)
        self.adapters = []
        for t_name, s_name in self.pairs:
            adapter = FeatureAdapter(
                teacher.get_layer(t_name).output.shape[-1],
                synchronized_bn=self.synchronized_bn,
                name=f"adapter_{t_name}_{s_name}",
            )
            adapter.build(student.get_layer(s_name).output.shape)
            self.adapters.append(adapter)

    @property
    def layers(self):
        return list(self.adapters)

    def __call__(self, labels, teacher, student, training=False):
        per_pair = [
            losses.hint_loss(ops.stop_gradient(teacher[t]), adapter(student[s], training=training))
            for (t, s), adapter in zip(self.pairs, self.adapters, strict=True)
        ]
        return ops.sum(ops.stack(per_pair), axis=0)

    def get_config(self):
        return {**super().get_config(), "synchronized_bn": self.synchronized_bn}


@register("attention")
class Attention(_FeatureTerm):
    """Attention transfer: Σ over pairs of the squared distance between normalized spatial attention maps.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017 (see `losses.attention_transfer_loss`,
    which sums over positions: the authors' β = 1000 on 8×8 maps is a weight of about 8 here).

    Args:
        pairs: `[[teacher_layer, student_layer], ...]`, or `"auto"`.
        p: exponent of the attention map.
    """

    def __init__(self, weight=1.0, pairs="auto", p: float = 2.0, name=None):
        super().__init__(weight, pairs, name)
        self.p = _check_number(self.name, "p", p, strict=True)

    def __call__(self, labels, teacher, student, training=False):
        per_pair = [
            losses.attention_transfer_loss(ops.stop_gradient(teacher[t]), student[s], self.p) for t, s in self.pairs
        ]
        return ops.sum(ops.stack(per_pair), axis=0)

    def get_config(self):
        return {**super().get_config(), "p": self.p}
