"""Argument checks shared by the public API; failures are one-line InputErrors."""

from __future__ import annotations

import numbers
from typing import Any

from dask_coded_als.errors import InputError


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
