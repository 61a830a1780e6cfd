"""One exchange between the master and the workers, described as data.

An :class:`Exchange` says which function every worker runs on what (its shard, operands sent to
it directly, results of earlier exchanges still on it, small values inline) and, through a
collection rule, when the master holds enough answers. The master
(:meth:`dask_coded_als.engine.master.Master.exchange`) runs every exchange of every mode and
protocol the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from distributed import Future

from dask_coded_als.engine.records import StageRecord

__all__ = ["Answers", "Exchange", "FirstCopies", "Scatter", "Threshold"]

#: A coded exchange with a cheap product keeps collecting answers (up to its ``at_most``) while
#: a decode from those in would be less accurate than this.
DECODE_ERROR_TARGET = 1e-12


class Scatter(NamedTuple):
    """An operand sent straight to the worker that uses it (one message per worker)."""

    data: np.ndarray


class Threshold:
    """Any ``need`` answers decode (a coded exchange).

    It collects up to ``at_most`` answers: with ``estimate`` (the relative decoding error
    expected from a set of workers) only while that estimate exceeds
    :data:`DECODE_ERROR_TARGET`, without it always (answers beyond ``need`` check the others,
    see :mod:`dask_coded_als.coding.checking`). With ``patience`` it waits for them at most that
    many times as long again as it took to hold ``need``; it never waits past its timeout once it
    holds ``need``.
    """

    def __init__(
        self,
        need: int,
        estimate: Callable[[Sequence[int]], float] | None = None,
        at_most: int | None = None,
        patience: float | None = None,
    ) -> None:
        self.need = need
        self.estimate = estimate
        self.at_most = need if at_most is None else max(need, at_most)
        self.patience = patience

    def sufficient(self, answered: Collection[int]) -> bool:
        return len(answered) >= self.need

    def satisfied(self, answered: Sequence[int]) -> bool:
        if not self.sufficient(answered):
            return False
        if len(answered) >= self.at_most:
            return True
        return self.estimate is not None and self.estimate(self.used(answered)) <= (
            DECODE_ERROR_TARGET
        )

    def possible(self, candidates: Collection[int]) -> bool:
        return len(candidates) >= self.need

    def used(self, answered: Sequence[int]) -> list[int]:
        """The first ``at_most`` answers (``answered`` is in order of arrival), or with an
        estimate the shortest prefix of at least ``need``, up to ``at_most``, expected to decode
        accurately."""
        if self.estimate is not None:
            for k in range(self.need, min(len(answered), self.at_most) + 1):
                if self.estimate(sorted(answered[:k])) <= DECODE_ERROR_TARGET:
                    return sorted(answered[:k])
        return sorted(answered[: self.at_most])


class FirstCopies:
    """The first answer for every block (the uncoded and replication baselines)."""

    def __init__(self, block_of: Mapping[int, int], n_blocks: int) -> None:
        self.block_of = block_of
        self.n_blocks = n_blocks

    def _blocks(self, workers: Collection[int]) -> set[int]:
        return {self.block_of[w] for w in workers}

    def sufficient(self, answered: Collection[int]) -> bool:
        return len(self._blocks(answered)) == self.n_blocks

    satisfied = sufficient

    def possible(self, candidates: Collection[int]) -> bool:
        return self.sufficient(candidates)

    def used(self, answered: Sequence[int]) -> list[int]:
        """One worker per block: the first to answer (``answered`` is in order of arrival)."""
        first: dict[int, int] = {}
        for w in answered:
            first.setdefault(self.block_of[w], w)
        return sorted(first.values())


@dataclass
class Exchange:
    """One exchange of a round.

    Attributes
    ----------
    name : str
        What it computes (``"E"``, ``"S"``, ``"B"``, ``"H"``); also in the task keys.
    stage : int
        Its place in the round (1, 2, ...): the straggler model's delays depend on it.
    function : callable
        What a worker runs: ``function(*args, interrupt=...)``; returns None when interrupted.
    workers : list of int
        Workers that take part.
    args : callable
        ``args(w)``: worker w's arguments. A :class:`Scatter` is sent to w directly, a Future
        (a shard, an operand of an earlier exchange) stays where it is, anything else travels
        inline with the task (keep those small).
    rule : Threshold or FirstCopies
        When the answers in hand are enough.
    """

    name: str
    stage: int
    function: Callable[..., Any]
    workers: list[int]
    args: Callable[[int], tuple]
    rule: Threshold | FirstCopies


@dataclass
class Answers:
    """The outcome of an exchange: the answers used, its record, and the operands placed on
    each worker (futures an exchange that follows can use)."""

    values: dict[int, Any]
    record: StageRecord
    operands: dict[int, list[Future]]
