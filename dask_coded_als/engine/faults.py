"""Injecting the straggler model's faults into a fit: delays for the tasks, kills for the workers.

:class:`dask_coded_als.engine.stragglers.StragglerModel` decides (seeded, with no knowledge of Dask)
who is late and who dies when; this module carries it out on the cluster. A kill is a SIGKILL of
the worker process, fired from a timer thread while the round runs; it is recorded once the
scheduler no longer lists the worker, not when it is scheduled. Kills still pending when the fit
ends are cancelled, so no process dies after ``fit`` has returned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from distributed import Client

from dask_coded_als.engine.cluster import worker_addresses
from dask_coded_als.engine.stragglers import Kill, StragglerModel, TaskDelay

__all__ = ["FaultInjector"]

logger = logging.getLogger(__name__)

#: Seconds a fired kill may take to show in the scheduler's worker list before it is recorded as
#: not confirmed.
DEATH_TIMEOUT = 10.0


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjector:
    """The faults of one fit.

    Parameters
    ----------
    model : StragglerModel
        Who is late, by how much, and who dies in which round.
    client : distributed.Client
        The cluster the fit runs on.
    address_of : callable
        The current address of a worker index (it changes when a shard moves).
    """

    def __init__(
        self, model: StragglerModel, client: Client, address_of: Callable[[int], str]
    ) -> None:
        self.model = model
        self._client = client
        self._address_of = address_of
        self._fired: set[Kill] = set()
        self._timers: list[threading.Timer] = []
        self._finished = threading.Event()  # the fit has ended: stop watching for deaths
        self._lock = threading.Lock()
        #: The kills that happened: worker, round, address and seconds until the scheduler saw
        #: the worker gone.
        self.kills: list[dict] = []

    def delays(self, round: int, stage: int) -> list[TaskDelay]:
        """The delay of every worker's task in one exchange of one round."""
        return self.model.delays(round, stage)

    def start_round(self, round: int) -> None:
        """Schedule the kills of ``round`` (once: a round that is run again does not kill again)."""
        for kill in self.model.kills_at(round):
            if kill in self._fired:
                continue
            self._fired.add(kill)
            timer = threading.Timer(kill.after, self._fire, (kill, self._address_of(kill.worker)))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()

    def _fire(self, kill: Kill, address: str) -> None:
        logger.warning("killing worker %d (%s) in round %d", kill.worker, address, kill.round)
        start = time.monotonic()
        with contextlib.suppress(Exception):
            # The worker dies before it can answer: whatever run() reports is expected.
            self._client.run(_kill_self, workers=[address], on_error="ignore")
        while time.monotonic() - start < DEATH_TIMEOUT and not self._finished.is_set():
            with contextlib.suppress(Exception):
                if address not in worker_addresses(self._client):
                    with self._lock:
                        self.kills.append(
                            {
                                "worker": kill.worker,
                                "round": kill.round,
                                "address": address,
                                "seconds": time.monotonic() - start,
                            }
                        )
                    return
            time.sleep(0.05)
        if not self._finished.is_set():
            logger.warning("worker %d (%s) was killed but is still listed", kill.worker, address)

    def finish(self, timeout: float = DEATH_TIMEOUT) -> None:
        """Cancel the kills not fired yet and wait (bounded) for the fired ones to be seen."""
        deadline = time.monotonic() + timeout
        for timer in self._timers:
            timer.cancel()
        for timer in self._timers:
            timer.join(max(0.0, deadline - time.monotonic()))
        # A kill still unseen now is not recorded (its worker may live on): its timer stops
        # watching instead of outliving the fit by up to DEATH_TIMEOUT.
        self._finished.set()
        self._timers = []
