"""The checks of numeric arguments, shared by the library and the command line."""

import math
import numbers

from fashion_keras.errors import UserError


def is_integer(value):
    """Whether `value` is a Python or numpy integer (`True` and `False` are not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, minimum=0, *, several=False):
    """Raises a `UserError` unless `value` is an integer of at least `minimum`.

    Python and numpy integers count; `True` and `False` do not, nor do floats such as `3.0`.

    Args:
        name: the argument's name, as the caller knows it (e.g. `"batch_size"`).
        value: what was given.
        minimum: the smallest value allowed.
        several: also accept a non-empty list or tuple of such integers (as `filters=(32, 64)`).

    Returns:
        `value`, unchanged.

    Raises:
        UserError: naming the argument and what was received, e.g. "samples must be an
            integer of at least 1. Received: samples=0".

    Example:
        >>> check_int("filters", (32, 64), minimum=1, several=True)
        (32, 64)
    """
    items = value if several and isinstance(value, (list, tuple)) else (value,)
    if not items or not all(is_integer(v) and v >= minimum for v in items):
        wanted = "integers" if several else "an integer"
        raise UserError(
            f"{name} must be {wanted} of at least {minimum}. Received: {name}={value!r}"
        )
    return value


def check_positive(name, value):
    """Raises a `UserError` unless `value` is a finite real number above 0.

    Python and numpy numbers count; `True` and `False` do not, nor do strings.

    Args:
        name: the argument's name, as the caller knows it (e.g. `"temperature"`).
        value: what was given.

    Returns:
        `value` as a Python float.

    Raises:
        UserError: naming the argument and what was received, e.g. "temperature must be a
            finite number above 0. Received: temperature=0".

    Example:
        >>> check_positive("temperature", 1.5)
        1.5
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise UserError(f"{name} must be a finite number above 0. Received: {name}={value!r}")
    return float(value)
