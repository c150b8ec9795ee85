"""Checks of constructor and call arguments, each raising an error that names the
argument and its owner, at construction rather than steps later.

A value of the wrong type raises :class:`ArgumentTypeError` (both a ``TypeError`` and a
``ValueError``, so code that caught either keeps working); a value out of range raises
``ValueError``. Integers are Python or NumPy integers, never ``bool`` (``True`` is not a
count) nor a float or a string that looks like one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (e.g. the string ``"5"`` for a count)."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(owner: str, name: str, value: object, minimum: int = 0) -> int:
    """``value`` as an int, at least ``minimum``."""
    if not _is_int(value):
        raise ArgumentTypeError(f"{owner}: {name} must be an int >= {minimum}, got "
                                f"{value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def real(owner: str, name: str, value: object, minimum: float | None = None,
         finite: bool = True) -> float:
    """``value`` as a float (not nan; finite unless ``finite=False``), at least
    ``minimum`` when given."""
    if not _is_real(value):
        raise ArgumentTypeError(f"{owner}: {name} must be a real number, got {value!r} "
                                f"({type(value).__name__})")
    number = float(value)
    if math.isnan(number) or (finite and math.isinf(number)):
        raise ValueError(f"{owner}: {name} must be a {'finite ' if finite else ''}number, "
                         f"got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value!r}")
    return number


def choice(owner: str, name: str, value: object, choices: Collection) -> object:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}; "
                         f"got {value!r}")
    return value


def flag(owner: str, name: str, value: object) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return value
