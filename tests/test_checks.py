"""The shared checks of numeric arguments, and the places that use them."""

import argparse

import numpy as np
import pytest

from fashion_keras import checks, cli, metrics, models, uncertainty
from fashion_keras.checks import check_int, check_positive
from fashion_keras.errors import UserError


@pytest.mark.parametrize("value", [0, 3, np.int64(3), np.uint8(200)])
def test_integers_pass_and_come_back(value):
    assert check_int("n", value, minimum=0) is value


@pytest.mark.parametrize(
    "value, minimum, several, message",
    [
        (0, 1, False, "samples must be an integer of at least 1. Received: samples=0"),
        (True, 0, False, "Received: samples=True"),
        (2.0, 0, False, "Received: samples=2.0"),
        ("3", 0, False, "Received: samples='3'"),
        ((3, 4), 0, False, "Received: samples=(3, 4)"),
        ((32, 0), 1, True, "samples must be integers of at least 1. Received: samples=(32, 0)"),
        ((), 1, True, "Received: samples=()"),
        ([4, False], 1, True, "Received: samples=[4, False]"),
    ],
)
def test_anything_else_names_what_was_received(value, minimum, several, message):
    with pytest.raises(UserError) as e:
        check_int("samples", value, minimum=minimum, several=several)
    assert message in str(e.value)


def test_several_takes_one_integer_or_a_list():
    assert check_int("filters", 32, minimum=1, several=True) == 32
    assert check_int("filters", [32, np.int64(64)], minimum=1, several=True) == [32, 64]


def test_model_arguments_take_numpy_integers():
    # The builder's own check refused them; the shared one counts every integer type.
    args = models.model_args("baseline", filters=(np.int64(16), np.int64(32)), units=np.int64(64))
    assert args["filters"] == (16, 32) and args["units"] == 64
    assert models.model_args("baseline", units=())["units"] == ()  # no hidden dense layer


def test_every_integer_argument_goes_through_the_one_check(monkeypatch):
    seen = []

    def spy(name, value, minimum=0, *, several=False):
        seen.append(name)
        return check_int(name, value, minimum, several=several)

    for module in (checks, metrics, models, uncertainty):
        monkeypatch.setattr(module, "check_int", spy)
    models.model_args("baseline")
    metrics.expected_calibration_error(np.eye(10), np.arange(10))
    uncertainty.ood_sets(np.zeros((2, 28, 28, 1), "float32"), limit=1)
    assert cli.at_least(1)("3") == 3
    assert {"filters", "bins", "limit", "value"} <= set(seen)


@pytest.mark.parametrize("text", ["0", "-2", "1.5", "one", ""])
def test_the_command_line_refuses_in_argparse_words(text):
    with pytest.raises(
        argparse.ArgumentTypeError, match=f"expected a whole number >= 1, got {text!r}"
    ):
        cli.at_least(1)(text)


def test_the_command_line_refuses_above_the_most():
    assert cli.at_least(10, at_most=20)("20") == 20
    with pytest.raises(argparse.ArgumentTypeError, match="from 10 to 20, got '21'"):
        cli.at_least(10, at_most=20)("21")


@pytest.mark.parametrize("value", [1.5, 3, np.float32(0.25), np.int64(2)])
def test_positive_numbers_pass_as_floats(value):
    checked = check_positive("temperature", value)
    assert checked == value and type(checked) is float


@pytest.mark.parametrize("value", [0, -1.5, float("nan"), float("inf"), True, "2", None])
def test_anything_but_a_positive_number_names_what_was_received(value):
    with pytest.raises(UserError) as e:
        check_positive("temperature", value)
    assert str(e.value) == (
        f"temperature must be a finite number above 0. Received: temperature={value!r}"
    )


@pytest.mark.parametrize("text", ["0", "-2", "nan", "inf", "one", ""])
def test_the_command_line_refuses_non_positive_numbers_in_argparse_words(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected a number > 0, got {text!r}"):
        cli.positive_number(text)
    assert cli.positive_number("1.5") == 1.5
