"""Small helpers shared across the package: argument checks and one-line messages."""

from __future__ import annotations

import json
import numbers
import operator
from typing import Any

from dask_coded_als.errors import InputError

__all__ = ["check_int", "jsonable", "one_line"]


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) of at least ``minimum``.

    Raises :class:`~dask_coded_als.errors.InputError` (a ``ValueError``) naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = operator.index(value)
    if value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message with its blanks collapsed (or its type)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[0].split()) if lines else type(exc).__name__


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and other non-JSON leaves turned into plain JSON values."""
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )
