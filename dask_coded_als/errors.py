"""The exceptions this package raises on purpose, one family; the CLI maps them to exit codes.

- :class:`InputError` (exit 2): bad input, a malformed file, a wrong store, an impossible
  parameter. Also a ``ValueError``.
- :class:`ClusterError` (exit 3): the cluster cannot finish the work (too few workers alive, a
  scheduler not reachable). Also a ``RuntimeError``. :class:`UnreachableStoreError`: the
  workers cannot open a store this process can (the work can be done here instead).
- :class:`NumericalError` (exit 4): data or factors the method cannot handle numerically:
  :class:`RankDeficientError` (also a ``ValueError``) and :class:`NonFiniteFactorsError` (also a
  ``FloatingPointError``).

Messages name the library's parameters (``overwrite=True``, ``n_factors``); the command line
translates them to its flags.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "CodedALSError",
    "InputError",
    "NonFiniteFactorsError",
    "NumericalError",
    "RankDeficientError",
    "UnreachableStoreError",
]


class CodedALSError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(CodedALSError, ValueError):
    """Bad user input: a malformed file, a wrong store layout, an impossible parameter."""


class ClusterError(CodedALSError, RuntimeError):
    """The cluster cannot finish the work: too few workers alive, a scheduler not reachable."""


class UnreachableStoreError(ClusterError):
    """Some workers cannot open a store that this process can (another machine's disk)."""


class NumericalError(CodedALSError, ArithmeticError):
    """The data or the factors cannot be handled numerically."""


class RankDeficientError(NumericalError, ValueError):
    """R (or the current factor) has numerical rank below ``n_factors`` and no effective ridge."""


class NonFiniteFactorsError(NumericalError, FloatingPointError):
    """A factor or a d x d master-side quantity became NaN or infinite."""
