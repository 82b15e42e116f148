"""kdkeras.validation: the one rule for numbers that settings, experiment configs and term arguments share."""

import math

import pytest

from kdkeras.validation import check_number, is_finite_number, is_integer


@pytest.mark.parametrize("value", [True, False, math.inf, -math.inf, math.nan, "1", None, [1]])
def test_bools_non_finite_values_and_non_numbers_are_not_numbers(value):
    assert not is_finite_number(value)
    with pytest.raises(ValueError, match=r"^lr must be a finite number >= 0.0, got "):
        check_number(value, "lr")


def test_integers_exclude_bools_and_floats():
    assert is_integer(3) and not is_integer(True) and not is_integer(3.0)
    assert check_number(3, "epochs", minimum=1, integer=True) == 3
    with pytest.raises(ValueError, match=r"^epochs must be an integer >= 1, got 2.0$"):
        check_number(2.0, "epochs", minimum=1, integer=True)


def test_the_minimum_is_allowed_unless_strict():
    assert check_number(0, "weight") == 0 and check_number(0.5, "temperature", strict=True) == 0.5
    with pytest.raises(ValueError, match=r"^term 'kd': temperature must be a finite number > 0.0, got 0$"):
        check_number(0, "term 'kd': temperature", strict=True)
    with pytest.raises(ValueError, match=r"^weight must be a finite number >= 0.0, got -0.1$"):
        check_number(-0.1, "weight")


def test_cli_number_options_follow_the_same_rule():
    import argparse

    from kdkeras.cli.options import non_negative_float, positive_float

    assert positive_float("0.5") == 0.5 and non_negative_float("0") == 0.0
    for parse, text, message in (
        (positive_float, "0", "must be a finite number > 0.0, got 0.0"),
        (positive_float, "inf", "must be a finite number > 0.0, got inf"),
        (non_negative_float, "-1", "must be a finite number >= 0.0, got -1.0"),
        (non_negative_float, "nan", "must be a finite number >= 0.0, got nan"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}$"):
            parse(text)
    with pytest.raises(ValueError, match="could not convert"):  # argparse reports it as an invalid value.
        positive_float("fast")
