"""Exceptions shared across the package; the CLI maps them to exit codes."""

from __future__ import annotations

__all__ = ["CodedALSError", "InputError", "ClusterError"]


class CodedALSError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(CodedALSError, ValueError):
    """Bad user input: a malformed file, a wrong store layout, an impossible parameter."""


class ClusterError(CodedALSError, RuntimeError):
    """The cluster cannot finish the work: too few workers alive, a scheduler not reachable."""
