"""What a valid number is, in one place: training settings, experiment configs, term arguments and the Distiller
share the rule.

A leaf module (no kdkeras imports), so that `kdkeras.terms`, which `kdkeras.training` imports, can use it too.
"""

from __future__ import annotations

import math


def is_integer(value) -> bool:
    """An int that is not a bool (YAML's `true` is one): what every integer setting must be."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """An int or float, not a bool, not Inf or NaN: what every numeric setting must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_number(value, what: str, minimum: float = 0.0, strict: bool = False, integer: bool = False):
    """Returns `value` when it is a finite number (or an integer) above `minimum`.

    Raises:
        ValueError: `"{what} must be a finite number >= 0, got 'x'"` (`>` when `strict`).
    """
    ok = is_integer(value) if integer else is_finite_number(value)
    if not (ok and (value > minimum if strict else value >= minimum)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{what} must be {kind} {'>' if strict else '>='} {minimum}, got {value!r}")
    return value
