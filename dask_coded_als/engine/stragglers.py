"""Seeded straggler and fault models: who is late, by how much, who dies when, and who answers
wrongly.

The engine asks this module, per stage, for the delay each worker's task must add; the delay is
slept inside the task, so the master measures real waiting. Nothing here knows Dask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["STRAGGLER_MODELS", "StragglerModel", "TaskDelay", "Kill"]

STRAGGLER_MODELS = ("none", "fixed", "random", "shifted-exponential", "kill", "corrupt")
#: A kill lands this many seconds (uniform) or less after its round starts: while the round's
#: first exchange is under way in every mode and protocol.
KILL_WINDOW = 0.05


@dataclass(frozen=True)
class TaskDelay:
    """What a task adds to its own running time, ``seconds + slowdown * compute_time``, and the
    relative size of the error it adds to its answer (``corrupt``; 0 for an honest task)."""

    seconds: float = 0.0
    slowdown: float = 0.0
    corrupt: float = 0.0


@dataclass(frozen=True)
class Kill:
    """SIGKILL the process of ``worker`` ``after`` seconds into round ``round``."""

    worker: int
    round: int
    after: float


class StragglerModel:
    """Seeded straggler model of one fit.

    Parameters
    ----------
    model : {"none", "fixed", "random", "shifted-exponential", "kill", "corrupt"}
        ``fixed``: ``n_stragglers`` workers chosen once are late by ``delay`` seconds in every
        task. ``random``: ``n_stragglers`` workers drawn anew for every stage are late by
        ``delay``. ``shifted-exponential``: every task's time is scaled by ``1 + X`` with X
        exponential of mean ``delay`` (the shifted-exponential model of the coded-computing
        literature). ``kill``: ``n_stragglers`` worker processes are killed, each in a random
        round, at most :data:`KILL_WINDOW` seconds after the round starts. ``corrupt``:
        ``n_stragglers`` workers chosen once add an error of relative size ``delay`` (Gaussian,
        seeded) to every answer they return, computed inside the task.
    n_workers : int
        W.
    n_stragglers : int
        How many workers the model slows down or kills.
    delay : float
        Seconds (``fixed``, ``random``), mean of the exponential (``shifted-exponential``) or
        relative size of the error (``corrupt``).
    n_rounds : int
        Rounds of the fit, to place the kills.
    seed : int or None
        Seed; the same seed gives the same stragglers, delays and kills.

    Attributes
    ----------
    fixed : list of int
        The workers chosen once: the late ones of ``fixed``, the wrong ones of ``corrupt``.

    Examples
    --------
    >>> model = StragglerModel("fixed", n_workers=5, n_stragglers=2, delay=1.0, seed=0)
    >>> delays = model.delays(round=0, stage=1)
    >>> sorted(w for w, d in enumerate(delays) if d.seconds == 1.0) == sorted(model.fixed)
    True
    """

    def __init__(
        self,
        model: str,
        n_workers: int,
        n_stragglers: int = 0,
        delay: float = 0.0,
        n_rounds: int = 1,
        seed: int | None = None,
    ):
        if model not in STRAGGLER_MODELS:
            raise ValueError(f"straggler_model must be one of {STRAGGLER_MODELS}, got {model!r}")
        if not 0 <= n_stragglers < n_workers:
            raise ValueError(
                f"n_stragglers must be between 0 and n_workers - 1 = {n_workers - 1}, "
                f"got {n_stragglers}"
            )
        if not np.isfinite(delay) or delay < 0:
            raise ValueError(f"straggler_delay must be a finite number >= 0, got {delay!r}")
        self.model = model
        self.n_workers = n_workers
        self.n_stragglers = n_stragglers
        self.delay = float(delay)
        self._seed = np.random.SeedSequence(seed)
        rng = np.random.default_rng(self._seed.spawn(1)[0])
        chosen = rng.choice(n_workers, n_stragglers, replace=False)
        self.fixed = [int(w) for w in chosen] if model in ("fixed", "corrupt") else []
        self.kills: list[Kill] = []
        if model == "kill":
            self.kills = sorted(
                (
                    Kill(int(w), int(rng.integers(n_rounds)), float(rng.uniform(0, KILL_WINDOW)))
                    for w in chosen
                ),
                key=lambda k: (k.round, k.after),
            )

    def delays(self, round: int, stage: int) -> list[TaskDelay]:
        """The delay of every worker's task in one stage (exchange) of one round; stages count
        from 1 in the order a round runs them."""
        none = TaskDelay()
        if self.model in ("none", "kill"):
            return [none] * self.n_workers
        if self.model in ("fixed", "corrupt"):
            chosen = set(self.fixed)
            delay = (
                TaskDelay(corrupt=self.delay) if self.model == "corrupt" else TaskDelay(self.delay)
            )
            return [delay if w in chosen else none for w in range(self.n_workers)]
        # Per-stage draws come from their own stream so they do not depend on call order.
        rng = np.random.default_rng([self._seed.entropy, round, stage])
        if self.model == "random":
            late = set(rng.choice(self.n_workers, self.n_stragglers, replace=False).tolist())
            return [TaskDelay(self.delay) if w in late else none for w in range(self.n_workers)]
        slowdowns = rng.exponential(self.delay, self.n_workers) if self.delay > 0 else None
        if slowdowns is None:
            return [none] * self.n_workers
        return [TaskDelay(0.0, float(x)) for x in slowdowns]

    def kills_at(self, round: int) -> list[Kill]:
        """Kills scheduled for this round."""
        return [k for k in self.kills if k.round == round]
