"""Connecting to a Dask cluster: an existing scheduler (optionally over TLS) or a LocalCluster.

The engine takes any Client; this module is how the command line gets one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from distributed import Client

from dask_coded_als.engine import local_cluster
from dask_coded_als.errors import ClusterError

__all__ = ["connect"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def connect(
    n_workers: int,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    timeout: float = 20.0,
    tls_ca_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Iterator[Client]:
    """A Client on the named scheduler, or on a new LocalCluster of ``n_workers`` processes.

    Parameters
    ----------
    n_workers : int
        Worker processes of the LocalCluster started when no scheduler is named.
    scheduler : str or None
        Scheduler address, e.g. ``tcp://127.0.0.1:8786``.
    scheduler_file : str or None
        A scheduler file written by ``dask scheduler --scheduler-file``.
    timeout : float
        Seconds to wait for the connection.
    tls_ca_file, tls_cert, tls_key : str or None
        Certificates for a TLS-secured scheduler (not implemented yet: an error).

    Raises
    ------
    ClusterError
        The scheduler cannot be reached in time, or the scheduler file does not exist.
    """
    if tls_ca_file or tls_cert or tls_key:
        raise ClusterError("TLS connections are not supported yet")
    if scheduler or scheduler_file:
        target = scheduler or f"scheduler file {scheduler_file}"
        if scheduler_file and not Path(scheduler_file).is_file():
            raise ClusterError(f"scheduler file {scheduler_file} does not exist")
        try:
            client = Client(
                address=scheduler,
                scheduler_file=scheduler_file,
                timeout=f"{timeout}s",
                set_as_default=False,
            )
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"cannot connect to {target}: {_first_line(exc)}") from None
        with client:
            yield client
        return
    with local_cluster(n_workers) as cluster, Client(cluster, timeout=f"{timeout}s") as client:
        yield client
