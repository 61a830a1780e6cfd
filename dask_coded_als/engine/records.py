"""What a fit records: one :class:`StageRecord` per exchange, and the phase timings of a fit."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

__all__ = ["StageRecord", "Timings"]

logger = logging.getLogger(__name__)


@dataclass
class StageRecord:
    """One exchange of a round: who answered, who was late or failed, what it cost.

    Attributes
    ----------
    seconds : float
        Wall time from sending the operands to holding enough answers.
    used : list of int
        Workers whose answers were decoded.
    late : list of int
        Workers that had a task but whose answers were not waited for.
    stopped : list of int
        Late workers whose task ended early on the stop signal (known when the fit ends).
    failed : list of int
        Workers that could not be reached or whose task was lost.
    compute : float
        Median compute seconds (wall, inside the task) of the used workers.
    send, queue, returned : float
        Median seconds, over the used workers, of the steps of an exchange around the
        computation: placing the worker's operands, from submitting its task to its start on
        the worker, and from its end to its answer at the master. ``queue`` and ``returned``
        compare the worker's clock with the master's (exact on one machine, as good as the
        clocks' synchronization across machines).
    cpu_seconds : float
        Thread CPU seconds of every task of the exchange (the late ones' are added when the fit
        ends).
    late_cpu_seconds : float
        The part of ``cpu_seconds`` spent by tasks whose answers were not used.
    wrong : list of int
        Workers whose answers disagreed with the others' and were left out of the decoding
        (``verify``).
    """

    seconds: float
    used: list[int]
    late: list[int]
    failed: list[int]
    compute: float
    cpu_seconds: float
    send: float = 0.0
    queue: float = 0.0
    returned: float = 0.0
    stopped: list[int] = field(default_factory=list)
    late_cpu_seconds: float = 0.0
    wrong: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Timings(dict):
    """Seconds per phase of a fit (``timings_``), accumulated by :meth:`phase`."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self[name] = self.get(name, 0.0) + seconds
            logger.debug("%s: %.3f s", name, seconds)
