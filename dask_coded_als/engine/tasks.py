"""What runs on the workers: one task per worker per exchange, stoppable once it is not needed.

Every task runs :func:`run_task`. It computes its product in chunks and, between chunks and
during an injected straggler delay, looks at a worker-local *stop flag* named after the exchange.
The master sets that flag (:func:`stop`, sent with ``Client.run``) on the workers whose answers
it no longer needs, so a late task ends within one chunk instead of holding the worker's only
thread into the next round. Each task also notes what it cost (thread CPU seconds) in a
worker-local ledger that the master reads once at the end of a fit (:func:`take_ledger`).

Nothing here is called on the master except by tests; everything here is importable by the
worker processes (the functions travel by reference).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from dask_coded_als._util import one_line
from dask_coded_als.coding.codes import matmul_t
from dask_coded_als.engine.stragglers import TaskDelay

__all__ = [
    "TaskReport",
    "aligned",
    "build_shard",
    "open_source",
    "row_block_product",
    "run_task",
    "stop",
    "take_ledger",
]

#: Stop flags kept per worker process; older ones are dropped (a flag is only looked at by the
#: tasks of one exchange, which end long before this many exchanges have passed).
_MAX_FLAGS = 256
_flags: OrderedDict[str, threading.Event] = OrderedDict()
_ledger: dict[str, list[tuple[int, int, float, bool]]] = {}
_lock = threading.Lock()


def _flag(key: str) -> threading.Event:
    with _lock:
        flag = _flags.get(key)
        if flag is None:
            flag = _flags[key] = threading.Event()
            while len(_flags) > _MAX_FLAGS:
                _flags.popitem(last=False)
        return flag


def stop(key: str) -> None:
    """Tell the tasks of exchange ``key`` on this worker to stop (also those not started yet)."""
    _flag(key).set()


class TaskReport(NamedTuple):
    """What a task sends back: its value (None when stopped), the thread CPU seconds and wall
    seconds of its computation, whether it was stopped, and when it started and ended (epoch
    seconds, to set beside the master's clock)."""

    value: Any
    cpu_seconds: float
    compute_seconds: float
    stopped: bool
    started: float
    ended: float


def run_task(
    fit: str,
    exchange: int,
    worker: int,
    stop_key: str,
    delay: TaskDelay,
    compute: Callable[..., Any],
    *args: Any,
) -> TaskReport:
    """Run ``compute(*args, interrupt=...)``, then sleep the injected delay, both stoppable.

    ``compute`` returns None when ``interrupt()`` became true during it. Stragglers sleep here,
    inside the task, so the master measures real waiting; the sleep ends early on the stop flag.
    """
    flag = _flag(stop_key)
    started = time.time()
    cpu0, start = time.thread_time(), time.perf_counter()
    args = tuple(aligned(a) for a in args)  # an operand arrives in a message (a copy of MBs)
    value = None if flag.is_set() else compute(*args, interrupt=flag.is_set)
    if value is not None and delay.corrupt:
        value = _corrupted(value, delay.corrupt, (exchange, worker))
    compute_seconds = time.perf_counter() - start
    stopped = value is None
    if not stopped:
        pause = delay.seconds + delay.slowdown * compute_seconds
        if pause > 0 and flag.wait(pause):
            stopped, value = True, None  # nobody waits for it any more
    cpu = time.thread_time() - cpu0
    with _lock:
        _ledger.setdefault(fit, []).append((exchange, worker, cpu, stopped))
    return TaskReport(value, cpu, compute_seconds, stopped, started, time.time())


def _corrupted(value: np.ndarray, size: float, seed: tuple[int, int]) -> np.ndarray:
    """``value`` plus a seeded Gaussian error of relative size ``size`` (the ``corrupt`` model)."""
    noise = np.random.default_rng(seed).standard_normal(value.shape)
    return value + size * np.linalg.norm(value) / np.linalg.norm(noise) * noise


def take_ledger(fit: str) -> list[tuple[int, int, float, bool]]:
    """This worker's ``(exchange, worker, cpu_seconds, stopped)`` of every finished task of
    ``fit``, removed from the ledger."""
    with _lock:
        return _ledger.pop(fit, [])


def row_block_product(
    block: np.ndarray, B: np.ndarray, interrupt: Callable[[], bool] | None = None
) -> np.ndarray | None:
    """``block @ B`` (the baselines' product) in row chunks; None if interrupted."""
    return matmul_t(block.T, B, interrupt)


def aligned(value: Any) -> Any:
    """``value``, copied to aligned memory if it is an array that is not.

    An array that arrives in a message may start at any byte of the message's buffer (a
    scattered one at an address that is not a multiple of 8 was seen), and numpy multiplies
    such arrays without BLAS: a worker's product took 0.28 s instead of 0.08 s.
    """
    if isinstance(value, np.ndarray) and not value.flags.aligned:
        return np.require(value, requirements="A")
    return value


def open_source(source: Any) -> str | None:
    """Open the data source here (the check before workers build their shards): None, or why
    this worker cannot (returned, not raised: it is an answer, not a failure of the task)."""
    try:
        source.open_array()
    except Exception as exc:
        return one_line(exc)
    return None


def build_shard(builder: Callable[[Any, int], np.ndarray], source: Any, worker: int) -> np.ndarray:
    """Worker ``worker``'s shard, built here from the source it opens (read block by block);
    the shard stays in this worker's memory as the task's result."""
    return builder(source.open_array(), worker)
