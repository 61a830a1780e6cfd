"""Connecting to a Dask cluster: an existing scheduler (optionally over TLS) or a LocalCluster.

The engine takes any Client; this module is how the command line gets one.

TLS follows Dask's mutual authentication: the client verifies the scheduler's certificate
against a CA and presents its own certificate, signed by a CA the scheduler trusts. Every
connection then requires encryption (``require_encryption=True``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster
from distributed.security import Security

from dask_coded_als._util import one_line
from dask_coded_als.errors import ClusterError, InputError

__all__ = [
    "DASHBOARD_ADDRESS",
    "cluster_for",
    "connect",
    "local_cluster",
    "probe_workers",
    "tls_security",
    "worker_addresses",
]

#: Where a LocalCluster started with ``dashboard=True`` serves its dashboard (Dask's usual port;
#: a free loopback port when it is taken).
DASHBOARD_ADDRESS = "127.0.0.1:8787"


@contextlib.contextmanager
def cluster_for(
    client: Client | None, n_workers: int, timeout: float = 60.0, **options: Any
) -> Iterator[tuple[Client, LocalCluster | None]]:
    """``client`` itself, or a Client of a new LocalCluster of ``n_workers`` processes
    (:func:`local_cluster` with ``options``) that is closed when the block ends.

    Yields ``(client, cluster)``, the cluster being None when the client was given.
    """
    if client is not None:
        yield client, None
        return
    with (
        local_cluster(n_workers, **options) as cluster,
        Client(cluster, timeout=f"{timeout}s", set_as_default=False) as own,
    ):
        yield own, cluster


def worker_addresses(client: Client) -> set[str]:
    """The addresses of the workers the scheduler lists now.

    Asks the scheduler directly: ``Client.scheduler_info()`` returns a cache that the client's
    periodic update (which asks for no per-worker information) can overwrite between the fetch
    and the read, so it sometimes lists no workers at all.
    """
    return set(client.sync(client.scheduler.identity, n_workers=-1)["workers"])


def probe_workers(
    client: Client,
    probe: Callable[..., Any],
    *args: Any,
    addresses: Iterable[str] | None = None,
    timeout: float = 30.0,
) -> dict[str, str | None]:
    """Run ``probe(*args)`` once on each worker (all of them, or ``addresses``).

    Returns, per address, None when the probe returned None there, else why not: what it
    returned, the error it raised, or that it gave no answer within ``timeout`` seconds.
    """
    addresses = sorted(worker_addresses(client) if addresses is None else addresses)
    token = uuid.uuid4().hex[:8]
    futures = {
        address: client.submit(
            probe,
            *args,
            key=f"probe-{token}-{i}",
            workers=[address],
            allow_other_workers=False,
            pure=False,
        )
        for i, address in enumerate(addresses)
    }
    deadline = time.monotonic() + timeout
    for future in futures.values():
        with contextlib.suppress(Exception):  # its error is reported below
            future.exception(timeout=max(0.0, deadline - time.monotonic()))
    found: dict[str, str | None] = {}
    for address, future in futures.items():
        if future.status == "finished":
            found[address] = future.result()
        elif future.status == "error":
            found[address] = one_line(future.exception())
        else:
            found[address] = f"no answer within {timeout:g} s"
    client.cancel([f for f in futures.values() if f.status == "pending"])
    return found


def local_cluster(n_workers: int, **kwargs: Any) -> LocalCluster:
    """A LocalCluster of worker processes with one thread each, bound to 127.0.0.1, no dashboard.

    Keyword arguments override those defaults (e.g. ``dashboard_address="127.0.0.1:8787"``).
    """
    options = dict(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=0,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    options.update(kwargs)
    with warnings.catch_warnings():
        # The scheduler's HTTP endpoint falls back to a free loopback port when 8787 is taken.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        return LocalCluster(**options)


def _protocol(address: str) -> str | None:
    """``tls`` of ``tls://host:port``; None when the address names no protocol."""
    return address.split("://", 1)[0].lower() if "://" in address else None


def tls_security(
    tls_ca_file: str | os.PathLike | None,
    tls_cert: str | os.PathLike | None,
    tls_key: str | os.PathLike | None = None,
) -> Security:
    """Client-side TLS settings, checked before any connection is tried.

    Parameters
    ----------
    tls_ca_file : str, os.PathLike or None
        PEM file of the CA certificate(s) that signed the scheduler's certificate.
    tls_cert : str, os.PathLike or None
        PEM file of the client certificate (it may also hold the private key).
    tls_key : str, os.PathLike or None
        PEM file of the client's private key, unless ``tls_cert`` holds it.

    Returns
    -------
    distributed.security.Security
        With ``require_encryption=True``.

    Raises
    ------
    InputError
        The CA file or the certificate is not named.
    ClusterError
        A file is missing or unreadable, or its content is not a usable certificate or key.
    """
    missing = [
        option
        for option, value in (("tls_ca_file", tls_ca_file), ("tls_cert", tls_cert))
        if not value
    ]
    if missing:
        raise InputError(
            f"TLS needs {' and '.join(missing)} (and tls_key unless the certificate holds it)"
        )
    for what, name in (("CA file", tls_ca_file), ("certificate", tls_cert), ("key", tls_key)):
        if name is None:
            continue
        path = Path(name)
        if not path.is_file():
            raise ClusterError(f"TLS {what} {name} does not exist or is not a file")
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ClusterError(f"TLS {what} {name} is not readable: {exc.strerror}") from None
    security = Security(
        tls_ca_file=str(tls_ca_file),
        tls_client_cert=str(tls_cert),
        tls_client_key=None if tls_key is None else str(tls_key),
        require_encryption=True,
    )
    try:
        # Builds the SSL context now: loads the CA, the certificate and the key.
        security.get_connection_args("client")
    except (ssl.SSLError, OSError, ValueError) as exc:
        given = ", ".join(str(name) for name in (tls_ca_file, tls_cert, tls_key) if name)
        raise ClusterError(
            f"the TLS files {given} are not a usable CA, certificate and key ({one_line(exc)})"
        ) from None
    return security


def _address_from_file(scheduler_file: str) -> str:
    path = Path(scheduler_file)
    if not path.is_file():
        raise ClusterError(f"scheduler file {scheduler_file} does not exist")
    try:
        address = json.loads(path.read_text(encoding="utf-8"))["address"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ClusterError(
            f"scheduler file {scheduler_file} holds no scheduler address ({one_line(exc)})"
        ) from None
    if not isinstance(address, str) or not address:
        raise ClusterError(f"scheduler file {scheduler_file} holds no scheduler address")
    return address


def _why(exc: BaseException, protocol: str | None) -> str:
    """A one-line reason for a failed connection."""
    text = one_line(exc)
    if isinstance(exc, ssl.SSLError) or "TLS" in text or "SSL" in text:
        return f"TLS handshake failed ({text})"
    if isinstance(exc, AssertionError) and protocol != "tls":
        # distributed's reaction to a TLS server answering a plain TCP handshake
        return "the scheduler did not answer the handshake (is it a tls:// scheduler?)"
    return text


@contextlib.contextmanager
def connect(
    n_workers: int,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    timeout: float = 20.0,
    tls_ca_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    dashboard: bool = False,
) -> Iterator[Client]:
    """A Client on the named scheduler, or on a new LocalCluster of ``n_workers`` processes.

    Parameters
    ----------
    n_workers : int
        Worker processes of the LocalCluster started when no scheduler is named.
    scheduler : str or None
        Scheduler address, e.g. ``tcp://127.0.0.1:8786`` or ``tls://127.0.0.1:8786``. With TLS
        files, an address without a protocol is taken as ``tls://``.
    scheduler_file : str or None
        A scheduler file written by ``dask scheduler --scheduler-file``.
    timeout : float
        Seconds to wait for the connection (distributed may take up to twice as long to give
        up on a server that accepts the connection but never completes the handshake).
    tls_ca_file, tls_cert, tls_key : str or None
        Certificates for a TLS-secured scheduler: the CA that signed the cluster's certificates,
        the client certificate and its private key (see :func:`tls_security`).
    dashboard : bool
        Serve the new LocalCluster's dashboard on :data:`DASHBOARD_ADDRESS` (it needs bokeh;
        ``Client.dashboard_link`` is its address). A named scheduler serves its own, or none.

    Yields
    ------
    distributed.Client
        Closed when the block ends; a LocalCluster started here is closed too.

    Raises
    ------
    InputError
        TLS files without a scheduler, an incomplete set of TLS files, or TLS files with an
        address of another protocol.
    ClusterError
        The scheduler cannot be reached in time, the scheduler file does not exist or holds no
        address, a TLS file is missing, unreadable or unusable, a TLS handshake fails, or a
        ``tls://`` scheduler is named without TLS files.
    """
    use_tls = bool(tls_ca_file or tls_cert or tls_key)
    if not (scheduler or scheduler_file):
        if use_tls:
            raise InputError("the TLS options need scheduler= or scheduler_file=")
        options = {"dashboard_address": DASHBOARD_ADDRESS} if dashboard else {}
        with cluster_for(None, n_workers, timeout, **options) as (client, _):
            yield client
        return

    if scheduler:
        address = scheduler
        if use_tls and _protocol(address) is None:
            address = f"tls://{address}"
        target = address
    else:
        address = _address_from_file(scheduler_file)
        target = f"{address} (from {scheduler_file})"
    protocol = _protocol(address)
    security = None
    if use_tls:
        if protocol != "tls":
            raise InputError(f"the TLS options need a tls:// scheduler address, got {address}")
        security = tls_security(tls_ca_file, tls_cert, tls_key)
    elif protocol == "tls":
        raise ClusterError(f"{address} is a TLS scheduler: give tls_ca_file, tls_cert and tls_key")
    try:
        client = Client(
            address=address,
            security=security,
            timeout=f"{timeout}s",
            set_as_default=False,
        )
    except Exception as exc:  # OSError, TimeoutError, ssl errors, distributed's own
        raise ClusterError(f"cannot connect to {target}: {_why(exc, protocol)}") from None
    with client:
        yield client
