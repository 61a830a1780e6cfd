"""Will a fit fit in memory? Estimates of D and the shards, checked before either is built.

A fit holds, at most:

- **D, dense** (``l x l`` float64, l = min(m, n)) in the master's process when D is computed
  there or on the cluster (then also on the worker that adds the tree's last partial sums: at
  least two copies there, the sum and one part);
- **one shard per worker**: ``8 P^2 / (p r)`` bytes for the coded modes (D padded to
  ``P = ALSCode.padded_size(l)``, split p ways by output rows and r ways by contraction), a
  block of ``ceil(l / blocks)`` rows of D for the uncoded and replication modes;
- **a round's operands and answers** on each worker, small next to its shard (``l d``).

The check compares those with what the workers report: their ``memory_limit`` (times the
fraction at which distributed pauses a worker, less what the worker process already uses), or,
for workers without a limit, the memory available on their host for all of the fit's workers
there together. It refuses only what cannot fit: the estimates count the arrays themselves,
not the temporaries around them. The message gives the numbers and what would make the fit
fit (a larger partition, more workers, more memory per worker, more hosts).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from dask_coded_als.errors import ClusterError

__all__ = [
    "WorkerMemory",
    "check_gram_here",
    "check_workers",
    "gram_bytes",
    "memory_problems",
    "shard_bytes",
    "worker_memory",
]

#: Bytes of one float64.
ITEMSIZE = 8


def _size(n: float) -> str:
    """Bytes as KiB/MiB/GiB/TiB with three digits."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def gram_bytes(size: int) -> int:
    """Bytes of a dense ``size x size`` D."""
    return ITEMSIZE * size * size


def shard_bytes(
    size: int,
    n_factors: int,
    n_workers: int,
    mode: str,
    partition: tuple[int, int] | None,
    n_stragglers: int = 0,
    points: str | None = None,
    dtype: str = "float64",
) -> tuple[int, int, str]:
    """What one worker holds for a fit on a D of side ``size``.

    Parameters
    ----------
    size : int
        D's side l.
    n_factors, n_workers, mode, n_stragglers, points, dtype
        As for :class:`dask_coded_als.CodedALS`.
    partition : (int, int) or None
        (p, r) of a coded mode (not ``"auto"``); None for the other modes.

    Returns
    -------
    shard : int
        Bytes of the worker's shard of D.
    working : int
        Bytes of a round's operand and answer on the worker (twice: one task may still hold the
        previous round's).
    what : str
        The shard in words, for messages.
    """
    d = int(n_factors)
    itemsize = np.dtype(dtype).itemsize
    if mode == "coded":
        from dask_coded_als.coding import theory
        from dask_coded_als.coding.codes import ALSCode
        from dask_coded_als.coding.points import choose_points

        p, r = partition
        chosen = points or choose_points(n_workers, theory.partition_threshold(p, r), r, dtype)
        padded = ALSCode((p, r), n_workers, chosen).padded_size(size)
        shard = itemsize * padded * padded // (p * r)
        # operand (P/r x d) and answer (P/p x d), complex (two planes) on the circle
        working = 2 * 2 * itemsize * d * (padded // r + padded // p)
        return shard, working, f"partition ({p}, {r}): 1/{p * r} of D padded to {padded}"
    blocks = max(1, n_workers // _copies(mode, n_stragglers))
    rows = -(-size // blocks)
    working = 2 * itemsize * (size + rows) * d
    return itemsize * rows * size, working, f"{mode}: {rows} of D's {size} rows"


def _copies(mode: str, n_stragglers: int) -> int:
    """Workers per block of D in the row-block modes."""
    return n_stragglers + 1 if mode == "replication" else 1


@dataclass(frozen=True)
class WorkerMemory:
    """What a worker reports: its host, its memory limit (0: none), what its process uses."""

    address: str
    host: str
    limit: int
    used: int

    def capacity(self, pause: float) -> int:
        """Bytes the worker can take before distributed pauses it (limit > 0 only)."""
        return max(0, int(pause * self.limit) - self.used)


def _pause_fraction() -> float:
    """The fraction of its memory limit at which distributed pauses a worker (or kills it)."""
    for key in ("distributed.worker.memory.pause", "distributed.worker.memory.terminate"):
        value = dask.config.get(key, False)
        if value:
            return float(value)
    return 1.0


def _available() -> tuple[int, int]:
    """(available, total) bytes of this host's memory."""
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total)


def worker_memory(client: Any, addresses: Iterable[str]) -> tuple[list[WorkerMemory], dict]:
    """The workers' memory as the scheduler lists it, and the memory of the hosts of workers
    without a limit (asked of one worker per host).

    Returns
    -------
    workers : list of WorkerMemory
    hosts : dict
        host -> (available, total) bytes, for the hosts of workers with ``memory_limit=0``.
    """
    info = client.sync(client.scheduler.identity, n_workers=-1)["workers"]
    workers = []
    for address in addresses:
        w = info.get(address, {})
        workers.append(
            WorkerMemory(
                address,
                str(w.get("host", address)),
                int(w.get("memory_limit") or 0),
                int(w.get("metrics", {}).get("memory") or 0),
            )
        )
    ask = {}
    for w in workers:
        if w.limit == 0:
            ask.setdefault(w.host, w.address)
    hosts = {}
    if ask:
        import psutil

        # psutil's own function: one of this package would be imported on the worker's event
        # loop, blocking a fresh worker for seconds.
        answers = client.run(psutil.virtual_memory, workers=list(ask.values()), on_error="return")
        for host, address in ask.items():
            value = answers.get(address)
            if hasattr(value, "available"):
                hosts[host] = (int(value.available), int(value.total))
    return workers, hosts


def check_gram_here(size: int, where: str = "this machine") -> None:
    """Refuse a dense D that this process's host cannot hold.

    Raises
    ------
    ClusterError
        With D's size, the memory available, and what would make it fit.
    """
    need = gram_bytes(size)
    available, total = _available()
    if need > available:
        raise ClusterError(
            f"not enough memory for D: {size} x {size} float64 takes {_size(need)}, {where} "
            f"has {_size(available)} available (of {_size(total)}); run the fit on a machine "
            "with more memory, or on fewer items or users (D's side is the smaller of the two)"
        )


def check_workers(
    client: Any,
    addresses: list[str],
    size: int,
    n_factors: int,
    mode: str,
    partition: tuple[int, int] | None,
    n_stragglers: int = 0,
    points: str | None = None,
    gram_on_cluster: bool = False,
    dtype: str = "float64",
) -> None:
    """Refuse a fit whose shards (and D, when it is computed on the cluster) cannot fit in the
    memory of the fit's workers ``addresses`` (see :func:`memory_problems`).

    Raises
    ------
    ClusterError
        Naming the worker or host, the bytes needed and those it has, and what would help.
    """
    workers, hosts = worker_memory(client, addresses)
    problems = memory_problems(
        workers,
        hosts,
        size,
        n_factors,
        mode,
        partition,
        n_stragglers,
        points,
        gram_on_cluster,
        dtype,
    )
    if problems:
        raise ClusterError("not enough memory for the fit: " + "; ".join(problems))


def memory_problems(
    workers: list[WorkerMemory],
    hosts: dict[str, tuple[int, int]],
    size: int,
    n_factors: int,
    mode: str,
    partition: tuple[int, int] | None,
    n_stragglers: int = 0,
    points: str | None = None,
    gram_on_cluster: bool = False,
    dtype: str = "float64",
) -> list[str]:
    """Why the fit cannot fit in the memory of ``workers`` (those of the fit), one sentence per
    worker or host short of memory; empty when it fits.

    Parameters
    ----------
    workers : list of WorkerMemory
    hosts : dict
        host -> (available, total) bytes, for the hosts of workers without a limit.
    size, n_factors, mode, partition, n_stragglers, points, dtype
        The fit (see :func:`shard_bytes`); ``partition`` None with ``mode="coded"`` (``"auto"``
        before calibration) checks D only.
    gram_on_cluster : bool
        D is computed on the cluster (it is added up on one worker).
    """
    pause = _pause_fraction()
    n_workers = len(workers)
    problems = []
    if gram_on_cluster:
        need = 2 * gram_bytes(size)
        largest = max(_room(w, hosts, pause) for w in workers)
        if need > largest:
            problems.append(
                f"D ({size} x {size}) is added up on one worker, which then holds at least "
                f"{_size(need)}; the largest worker has {_size(largest)}: give D precomputed "
                "(gram=) or use workers with more memory"
            )
    if mode == "coded" and partition is None:
        return problems
    shard, working, what = shard_bytes(
        size, n_factors, n_workers, mode, partition, n_stragglers, points, dtype
    )
    need = shard + working
    # float32 halves the shards and the rounds' operands
    half = " (dtype='float32' needs half)" if np.dtype(dtype).itemsize > 4 else ""
    parts = f"its shard of D, {what}, and a round's operands"
    short = [w for w in workers if w.limit > 0 and need > w.capacity(pause)]
    if short:
        w = min(short, key=lambda w: w.capacity(pause))
        room = w.capacity(pause)
        advice = _advice(size, room - working, mode, n_workers, n_stragglers)
        problems.append(
            f"each worker holds {_size(need)} ({parts}); worker {w.address} has "
            f"{_size(room)} ({pause:.0%} of its memory_limit of {_size(w.limit)}, less the "
            f"{_size(w.used)} it uses): use workers with more memory{half}{advice}"
        )
    by_host = defaultdict(list)
    for w in workers:
        if w.limit == 0 and w.host in hosts:
            by_host[w.host].append(w)
    for host, members in sorted(by_host.items()):
        available, whole = hosts[host]
        if need * len(members) > available:
            room = available - working * len(members)
            advice = _advice(
                size, room, mode, n_workers, n_stragglers, len(members), len(members) == n_workers
            )
            problems.append(
                f"the fit's {len(members)} workers on host {host} (no memory_limit) hold "
                f"{_size(need * len(members))} together ({_size(need)} each: {parts}); the "
                f"host has {_size(available)} available (of {_size(whole)}): spread the workers "
                f"over more hosts{half}{advice}"
            )
    return problems


def _room(w: WorkerMemory, hosts: dict, pause: float) -> float:
    """Bytes worker w can take: under its limit, or what its host has available."""
    if w.limit > 0:
        return w.capacity(pause)
    return hosts.get(w.host, (math.inf, math.inf))[0]


def _advice(
    size: int,
    room: float,
    mode: str,
    n_workers: int,
    n_stragglers: int,
    on_host: int = 1,
    whole_fit: bool = False,
) -> str:
    """``", or ..."``: the smallest code (coded: the partition (n, 1), 1/n of D per worker with
    the fewest workers, n + s) or number of workers (row-block modes) whose shards fit in
    ``room`` bytes on one worker (``on_host=1``) or on a host holding ``on_host`` of the fit's
    workers (all of them, and any added, when ``whole_fit``); "" when there is none."""
    copies = _copies(mode, n_stragglers)
    first = 2 if mode == "coded" else n_workers // copies + 1
    for n in range(first, 8 * n_workers + 1):
        if mode == "coded":
            workers = max(n_workers, n + n_stragglers)
            shard = gram_bytes(size) / n
            change = [f"partition=({n}, 1)"]
        else:
            workers = n * copies
            shard = ITEMSIZE * size * -(-size // n)
            change = []
        if workers > n_workers:
            change.append(f"n_workers={workers}")
        if (workers if whole_fit else on_host) * shard <= room:
            return ", or " + " with ".join(change)
    return ""
