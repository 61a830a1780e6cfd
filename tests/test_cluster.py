"""Real Dask clusters: scheduler and workers started from the command line, TLS, a soak.

The fit on a cluster started with ``dask scheduler`` / ``dask worker`` gives the factors of the
same fit on a LocalCluster; a TLS cluster accepts only clients with certificates of its CA; the
processes started here never outlive their fixture; thirty fits in a row leave no tasks, keys or
memory behind.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed import Client
from support import SAMPLE

from dask_coded_als import CodedALS, fit_als
from dask_coded_als.cli import EXIT_CODES, main
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest
from dask_coded_als.engine.cluster import connect, tls_security, worker_addresses
from dask_coded_als.errors import ClusterError, InputError

ROOT = Path(__file__).resolve().parents[1]
#: The fit every test here runs: small, deterministic, no early stop.
FIT_OPTIONS = ["--factors", "4", "--iterations", "4", "--tol", "0", "--seed", "1"]
START_TIMEOUT = 60.0


# ---- a cluster of real processes ----------------------------------------------------------------


@dataclass
class RealCluster:
    """Scheduler and worker processes started by :func:`dask_cluster`."""

    scheduler_file: Path
    address: str
    n_workers: int
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def process_groups(self) -> list[int]:
        # start_new_session=True: every process leads its own group
        return [p.pid for p in self.processes]

    def members(self) -> list[psutil.Process]:
        """Live (non-zombie) processes in the cluster's process groups."""
        return processes_in_groups(self.process_groups)


def processes_in_groups(groups: list[int]) -> list[psutil.Process]:
    """Processes of the given process groups that are still running (zombies excluded)."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _stop(processes: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM every process group (a graceful stop reaps the worker processes), then SIGKILL
    whatever is left of them; wait for each process, bounded."""
    for proc in reversed(processes):  # workers first, then the scheduler
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    groups = [p.pid for p in processes]
    for _ in range(2):
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        for proc in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        psutil.wait_procs(processes_in_groups(groups), timeout=5)
        if not processes_in_groups(groups):
            return


def _wait_for_file(path: Path, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the scheduler exited with {process.returncode}")
        with contextlib.suppress(OSError, ValueError):
            info = json.loads(path.read_text())
            if info.get("address"):
                return info
        time.sleep(0.05)
    raise TimeoutError(f"no scheduler file {path} after {timeout} s")


@contextlib.contextmanager
def dask_cluster(
    directory: Path, n_workers: int, tls: dict[str, Path] | None = None
) -> Iterator[RealCluster]:
    """``dask scheduler`` and ``dask worker --nworkers n_workers`` on 127.0.0.1 as subprocesses.

    Parameters
    ----------
    directory : Path
        Holds the scheduler file, the logs and the workers' local directories.
    n_workers : int
        Worker processes (one thread each, no memory limit).
    tls : dict or None
        ``ca``, ``scheduler_cert``, ``scheduler_key``, ``worker_cert``, ``worker_key`` and
        ``client_cert``, ``client_key`` files for a TLS cluster.

    Yields
    ------
    RealCluster
        Once every worker has joined; all processes are stopped when the block ends.
    """
    scheduler_file = directory / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    loopback = ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    scheduler_tls, worker_tls = [], []
    if tls is not None:
        scheduler_tls = ["--protocol", "tls", "--tls-ca-file", str(tls["ca"])]
        scheduler_tls += ["--tls-cert", str(tls["scheduler_cert"])]
        scheduler_tls += ["--tls-key", str(tls["scheduler_key"])]
        worker_tls = ["--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["worker_cert"])]
        worker_tls += ["--tls-key", str(tls["worker_key"])]
    dask = [sys.executable, "-m", "dask"]
    cluster = RealCluster(scheduler_file, "", n_workers)
    try:
        with open(directory / "scheduler.log", "wb") as log:
            cluster.processes.append(
                subprocess.Popen(
                    [*dask, "scheduler", "--port", "0", "--scheduler-file", str(scheduler_file)]
                    + loopback
                    + scheduler_tls,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        cluster.address = _wait_for_file(scheduler_file, cluster.processes[0], START_TIMEOUT)[
            "address"
        ]
        with open(directory / "workers.log", "wb") as log:
            cluster.processes.append(
                subprocess.Popen(
                    [*dask, "worker", "--scheduler-file", str(scheduler_file)]
                    + ["--nthreads", "1", "--nworkers", str(n_workers), "--memory-limit", "0"]
                    + ["--local-directory", str(directory / "workers")]
                    + loopback
                    + worker_tls,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        security = None
        if tls is not None:
            security = tls_security(tls["ca"], tls["client_cert"], tls["client_key"])
        with Client(cluster.address, security=security, timeout="30s") as client:
            client.wait_for_workers(n_workers, timeout=START_TIMEOUT)
        yield cluster
    finally:
        _stop(cluster.processes)


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory) -> Iterator[RealCluster]:
    """Four worker processes under a ``dask scheduler``, for this module; none left after it."""
    with dask_cluster(tmp_path_factory.mktemp("real-cluster"), n_workers=4) as cluster:
        yield cluster
        groups = cluster.process_groups
    assert processes_in_groups(groups) == [], "the cluster's processes outlived the fixture"


# ---- data and the reference fit -------------------------------------------------------------


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cluster-store") / "sample.zarr"
    ingest(SAMPLE / "ratings.csv", path)
    return path


def product(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    return U @ V.T


def gap(P: np.ndarray, Q: np.ndarray) -> float:
    return float(np.linalg.norm(P - Q) / np.linalg.norm(Q))


@pytest.fixture(scope="module")
def local_product(store_path, cluster_client) -> np.ndarray:
    """U V^T of the fit by the command line on 4 workers of the shared LocalCluster."""
    address = cluster_client.scheduler.address
    argv = ["fit", str(store_path), *FIT_OPTIONS, "--workers", "4", "--json"]
    assert main([*argv, "--scheduler", address]) == 0
    U, V, _ = stores.read_factors(store_path)
    return product(U, V)


def run_cli(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dask_coded_als.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# ---- a real cluster -----------------------------------------------------------------------------


def test_cli_fit_on_a_scheduler_file_equals_the_local_cluster_fit(
    real_cluster, store_path, local_product
):
    proc = run_cli(
        [
            "fit",
            str(store_path),
            *FIT_OPTIONS,
            "--workers",
            "4",
            "--scheduler-file",
            str(real_cluster.scheduler_file),
            "--json",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 4 and summary["n_workers"] == 4
    U, V, attrs = stores.read_factors(store_path)
    assert attrs["parameters"]["scheduler_file"] == str(real_cluster.scheduler_file)
    assert gap(product(U, V), local_product) < 1e-9


def test_python_api_on_a_scheduler_file_equals_the_local_cluster_fit(
    real_cluster, store_path, local_product
):
    R = stores.ratings_matrix(store_path)
    with Client(scheduler_file=str(real_cluster.scheduler_file), timeout="30s") as client:
        workers = worker_addresses(client)
        model = CodedALS(4, n_workers=4, max_iter=4, tol=0, seed=1)
        model.fit(R, client=client)
    assert set(model.workers_.values()) == workers  # every stage ran on the real workers
    assert len(workers) == 4
    assert gap(product(model.user_factors_, model.item_factors_), local_product) < 1e-9


def test_the_cluster_runs_in_its_process_groups_and_listens_on_loopback_only(real_cluster):
    # the scheduler, the worker launcher (it runs the nannies) and 4 worker processes
    members = real_cluster.members()
    assert len(members) >= 2 + real_cluster.n_workers
    listening = [
        c.laddr
        for p in members
        for c in p.net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(listening) >= 2 + real_cluster.n_workers
    assert {address.ip for address in listening} == {"127.0.0.1"}, listening


# ---- TLS ----------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(directory: Path, ca_name: str = "dask-coded-als test CA") -> dict[str, Path]:
    """A CA and scheduler, worker and client certificates it signs (SANs localhost, 127.0.0.1).

    Returns
    -------
    dict
        ``ca`` and ``<role>_cert``, ``<role>_key`` for the roles scheduler, worker and client.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": directory / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    sans = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    usage = x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    for role in ("scheduler", "worker", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"dask-coded-als test {role}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(sans, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        files[f"{role}_cert"] = directory / f"{role}.pem"
        files[f"{role}_key"] = directory / f"{role}-key.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_tls_cluster(tmp_path, store_path, capsys):
    """A TLS scheduler and workers: a fit with the client certificate succeeds; without it, with
    certificates of another CA, or over plain TCP, the fit is a one-line cluster error in bounded
    time; the processes are gone afterwards."""
    certs = make_certificates(tmp_path / "certs")
    strangers = make_certificates(tmp_path / "other", ca_name="another CA")
    R = stores.ratings_matrix(store_path)
    reference = fit_als(R, 4, max_iter=4, tol=0, seed=1)
    expected = product(reference.user_factors, reference.item_factors)
    with dask_cluster(tmp_path, n_workers=2, tls=certs) as cluster:
        assert cluster.address.startswith("tls://127.0.0.1:")
        tls_options = [
            "--tls-ca-file",
            str(certs["ca"]),
            "--tls-cert",
            str(certs["client_cert"]),
            "--tls-key",
            str(certs["client_key"]),
        ]
        fit = ["fit", str(store_path), *FIT_OPTIONS, "--workers", "2", "--json"]
        capsys.readouterr()
        assert run([*fit, "--scheduler", cluster.address, *tls_options]) == 0
        U, V, _ = stores.read_factors(store_path)
        assert gap(product(U, V), expected) < 1e-9
        # a scheduler file of a TLS scheduler works the same way
        assert run([*fit, "--scheduler-file", str(cluster.scheduler_file), *tls_options]) == 0
        capsys.readouterr()

        host_port = cluster.address.removeprefix("tls://")
        other_ca = [
            "--tls-ca-file",
            str(strangers["ca"]),
            "--tls-cert",
            str(strangers["client_cert"]),
            "--tls-key",
            str(strangers["client_key"]),
        ]
        # the scheduler's CA with a client certificate it did not sign
        foreign_client = [*tls_options[:2], *other_ca[2:]]
        failures = [
            (["--scheduler", cluster.address], "is a TLS scheduler"),
            (["--scheduler-file", str(cluster.scheduler_file)], "is a TLS scheduler"),
            (["--scheduler", cluster.address, *other_ca], "TLS handshake failed"),
            (["--scheduler", cluster.address, *foreign_client], "cannot connect"),
            (["--scheduler", f"tcp://{host_port}"], "cannot connect"),
        ]
        for extra, message in failures:
            start = time.monotonic()
            assert run([*fit, "--connect-timeout", "2", *extra]) == EXIT_CODES["cluster"], extra
            seconds = time.monotonic() - start
            line = one_line(capsys.readouterr().err)
            assert message in line and line.startswith("dask-coded-als: cluster error:"), line
            assert seconds < 10, (extra, seconds)

        # without certificates, from a real process, with the connect timeout the brief names
        start = time.monotonic()
        proc = run_cli([*fit, "--scheduler", cluster.address, "--connect-timeout", "5"], 60)
        assert proc.returncode == EXIT_CODES["cluster"]
        assert "is a TLS scheduler" in one_line(proc.stderr)
        assert time.monotonic() - start < 30
        groups = cluster.process_groups
        assert len(processes_in_groups(groups)) >= 2 + 2
    assert processes_in_groups(groups) == []


def test_tls_files_are_checked_before_connecting(tmp_path):
    certs = make_certificates(tmp_path / "certs")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    good = (str(certs["ca"]), str(certs["client_cert"]), str(certs["client_key"]))
    assert tls_security(*good).require_encryption
    cases = [
        ((str(tmp_path / "missing.pem"), good[1], good[2]), ClusterError, "does not exist"),
        ((good[0], str(tmp_path), good[2]), ClusterError, "is not a file"),
        ((good[0], str(garbage), good[2]), ClusterError, "not a usable"),
        ((str(garbage), good[1], good[2]), ClusterError, "not a usable"),
        ((good[0], good[1], str(certs["worker_key"])), ClusterError, "not a usable"),
        ((None, good[1], good[2]), InputError, "needs tls_ca_file"),
        ((good[0], None, good[2]), InputError, "needs tls_cert"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            tls_security(*args)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(tls_ca_file="ca.pem"), InputError, "need scheduler= or scheduler_file="),
        (
            dict(scheduler="tcp://127.0.0.1:1", tls_ca_file="ca.pem", tls_cert="c.pem"),
            InputError,
            "need a tls:// scheduler address",
        ),
        (dict(scheduler="tls://127.0.0.1:1"), ClusterError, "is a TLS scheduler"),
        (dict(scheduler_file="{tmp}/none.json"), ClusterError, "does not exist"),
        (dict(scheduler_file="{tmp}/bad.json"), ClusterError, "holds no scheduler address"),
        (dict(scheduler="tcp://127.0.0.1:1", timeout=1.0), ClusterError, "cannot connect"),
    ],
)
def test_connect_errors(tmp_path, kwargs, error, message):
    (tmp_path / "bad.json").write_text('{"id": "no address"}')
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(error, match=message):
        with connect(2, **kwargs):
            pytest.fail("connected")


# ---- soak -----------------------------------------------------------------------------------


def _scheduler_counts(dask_scheduler) -> dict[str, int]:
    return {
        "tasks": len(dask_scheduler.tasks),
        "keys_in_memory": sum(len(ws.has_what) for ws in dask_scheduler.workers.values()),
        "keys_wanted_by_clients": sum(len(cs.wants_what) for cs in dask_scheduler.clients.values()),
    }


def _worker_keys(dask_worker) -> int:
    return len(dask_worker.data)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


SOAK_FITS = 30
#: Growth of a worker's resident memory over the soak that counts as a leak.
RSS_BOUND = 150 * 2**20


def test_soak_leaves_no_tasks_keys_or_memory_behind():
    """30 fits with random stragglers on one cluster: afterwards the scheduler holds as many
    tasks and keys as before (after a short bounded wait), the workers hold no data, and no
    worker grew by more than 150 MB."""
    rng = np.random.default_rng(0)
    R = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 30))
    options = dict(
        n_workers=4,
        n_stragglers=1,
        straggler_model="random",
        straggler_delay=0.02,
        max_iter=1,
        tol=0,
        stage_timeout=30.0,
        recovery_timeout=30.0,
    )
    gram = R.T @ R  # given to most fits: they are then only the coded rounds
    reference = fit_als(R, 3, max_iter=1, tol=0, seed=0)
    expected = product(reference.user_factors, reference.item_factors)
    with connect(4, timeout=30) as client:  # a LocalCluster of its own
        assert len(client.cluster.workers) == 4
        client.wait_for_workers(4, timeout=START_TIMEOUT)
        before = client.run_on_scheduler(_scheduler_counts)
        assert before == {"tasks": 0, "keys_in_memory": 0, "keys_wanted_by_clients": 0}

        def settle() -> dict[str, int]:
            # releasing a fit's futures reaches the scheduler asynchronously
            gc.collect()
            deadline = time.monotonic() + 10
            while (now := client.run_on_scheduler(_scheduler_counts)) != before:
                if time.monotonic() > deadline:
                    return now
                time.sleep(0.1)
            return now

        CodedALS(3, seed=0, **options).fit(R, client=client, gram=gram)  # warm-up
        assert settle() == before
        rss_before = client.run(_rss)
        for seed in range(SOAK_FITS):
            # every tenth fit computes D on the cluster too
            given = None if seed % 10 == 0 else gram
            model = CodedALS(3, seed=seed, **options).fit(R, client=client, gram=given)
            if seed == 0:
                assert gap(product(model.user_factors_, model.item_factors_), expected) < 1e-9
        del model
        after = settle()
        assert after == before, f"the scheduler still holds {after} after {SOAK_FITS} fits"
        assert set(client.run(_worker_keys).values()) == {0}
        assert not client.futures
        rss_after = client.run(_rss)
        cluster = client.cluster
        assert all(w.startswith("tcp://127.0.0.1:") for w in rss_after)
    assert client.status == "closed" and cluster.status.name == "closed"
    growth = {w: (rss_after[w] - rss_before[w]) / 2**20 for w in rss_before}
    assert max(growth.values()) < RSS_BOUND / 2**20, f"worker memory growth (MiB): {growth}"
