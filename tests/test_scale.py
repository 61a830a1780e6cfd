"""Scale-out: D and the shards built by the workers from the store, float32, and the whole path
on ``dask scheduler`` / ``dask worker`` processes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client
from support import N_WORKERS, ROOT, product_gap

from dask_coded_als import CodedALS, fit_als
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest_dataframe
from dask_coded_als.errors import InputError


def make_store(root: Path, n_users: int = 60, n_items: int = 36, n_ratings: int = 900) -> Path:
    """A ratings store of random float ratings with a D = R^T R (``gram/D``)."""
    rng = np.random.default_rng(n_users)
    pairs = rng.choice(n_users * n_items, size=n_ratings, replace=False)
    frame = pd.DataFrame(
        {"user": pairs // n_items, "item": pairs % n_items, "rating": rng.uniform(1, 5, n_ratings)}
    )
    ingest_dataframe(frame, root / "s.zarr")
    return root / "s.zarr"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = make_store(tmp_path_factory.mktemp("scale"))
    stores.compute_gram(path)
    return path


class MasterOnlySource(stores.GramSource):
    """A source that opens in this process but on no worker (another machine's disk)."""

    def open_array(self):
        from distributed import get_worker

        try:
            get_worker()
        except ValueError:
            return super().open_array()
        raise OSError(f"{self.path}: no such directory on this machine")


def _never_here(self):
    raise AssertionError("D was opened by the master")


@pytest.mark.parametrize("mode", ["coded", "uncoded"])
def test_workers_build_their_shards_from_the_store(client, store_path, monkeypatch, mode):
    R = stores.ratings_matrix(store_path).toarray()
    reference = fit_als(R, 4, max_iter=4, tol=0, seed=0)
    source = stores.gram_source(store_path)
    # the workers unpickle their own GramSource; the master's must never open D
    monkeypatch.setattr(stores.GramSource, "open_array", _never_here)
    model = CodedALS(4, n_workers=N_WORKERS, mode=mode, max_iter=4, tol=0, seed=0)
    model.fit(R, client=client, gram=source)
    assert product_gap(model, reference) < 1e-9


def test_workers_that_cannot_open_the_store_get_their_shards_from_the_master(
    client, store_path, caplog
):
    R = stores.ratings_matrix(store_path)
    reference = fit_als(R.toarray(), 3, max_iter=3, tol=0, seed=1)
    found = stores.gram_source(store_path)
    source = MasterOnlySource(found.path, found.shape, found.dtype)
    with caplog.at_level(logging.WARNING, logger="dask_coded_als.engine.master"):
        model = CodedALS(3, n_workers=N_WORKERS, max_iter=3, tol=0, seed=1)
        model.fit(R, client=client, gram=source)
    assert product_gap(model, reference) < 1e-9
    warned = [r.getMessage() for r in caplog.records if "cannot open" in r.getMessage()]
    assert len(warned) == 1 and f"{N_WORKERS} workers cannot open" in warned[0]
    assert "no such directory on this machine" in warned[0]


def test_a_store_the_workers_cannot_read_is_named_up_front(client, store_path):
    from dask_coded_als.errors import UnreachableStoreError

    # The workers look for the store where this process says it is: a path they lack.
    store = stores.open_store(store_path)
    store = stores.RatingsStore(Path("/nonexistent/s.zarr"), store.attrs)
    with pytest.raises(UnreachableStoreError, match=r"workers cannot open the store"):
        stores.check_workers_read(store, client)


def test_a_source_that_is_not_finite_is_a_clear_error(client, tmp_path):
    import zarr

    path = make_store(tmp_path, 30, 20, 300)
    stores.compute_gram(path)
    zarr.open_array(path / "gram" / "D", mode="r+")[3, 4] = np.nan
    R = stores.ratings_matrix(path)
    with pytest.raises(InputError, match="Gram matrix of R is not finite in float64"):
        CodedALS(2, n_workers=N_WORKERS, max_iter=2, seed=0).fit(
            R, client=client, gram=stores.gram_source(path)
        )


@pytest.mark.parametrize("shape", [(40, 25), (20, 45)], ids=["tall", "wide"])
@pytest.mark.parametrize("name", ["binary", "bm25"])
def test_d_of_a_weighted_r_on_the_workers_equals_the_local_one(client, tmp_path, shape, name):
    from dask_coded_als.recsys.weighting import fit_weighting

    path = make_store(tmp_path, *shape, 400)
    weighting = fit_weighting(name, stores.ratings_matrix(path))
    local, transposed = stores.compute_gram(path, weighting=weighting, column_block=9)
    assert (
        stores.compute_gram_on_cluster(path, client, overwrite=True, weighting=weighting, block=7)
        == transposed
    )
    np.testing.assert_array_equal(stores.gram_array(path, name)[0][...], local)
    assert sorted(p.name for p in (path / "gram").iterdir()) == ["D", "zarr.json"]
    with pytest.raises(InputError, match="weighting='binary'|weighting='bm25'"):
        stores.gram_source(path)  # a D of the weighted R is not the D of R


# -- float32 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,points", [("coded", None), ("coded", "circle"), ("uncoded", None)])
def test_float32_is_close_to_float64_and_moves_half_the_bytes(client, store_path, mode, points):
    R = stores.ratings_matrix(store_path).toarray()
    fits = {}
    for dtype in ("float32", "float64"):
        fits[dtype] = CodedALS(
            4, n_workers=N_WORKERS, mode=mode, points=points, max_iter=6, tol=0, seed=2, dtype=dtype
        ).fit(R, client=client, gram=stores.gram_source(store_path))
    single, double = (f.user_factors_ @ f.item_factors_.T for f in fits.values())
    assert 1e-12 < np.linalg.norm(single - double) / np.linalg.norm(double) < 1e-4
    single, double = (fits[k].history_[1]["bytes_sent"] for k in ("float32", "float64"))
    assert single == pytest.approx(double / 2, rel=0.02)
    # the objective in float32 stays within its rounding of float64's
    assert fits["float32"].history_[-1]["objective"] == pytest.approx(
        fits["float64"].history_[-1]["objective"], rel=1e-5
    )


def test_float32_converges_to_the_svd_optimum(client):
    from scipy.sparse.linalg import svds

    rng = np.random.default_rng(5)
    R = rng.standard_normal((70, 4)) @ rng.standard_normal((4, 40)) + 0.1 * rng.standard_normal(
        (70, 40)
    )
    model = CodedALS(4, n_workers=N_WORKERS, max_iter=60, tol=1e-7, seed=0, dtype="float32")
    model.fit(R, client=client)
    u, s, vt = svds(R, k=4)
    optimum = np.linalg.norm(R - (u * s) @ vt) ** 2
    achieved = np.linalg.norm(R - model.user_factors_ @ model.item_factors_.T) ** 2
    assert model.converged_
    assert abs(achieved - optimum) / optimum < 1e-5


def test_bad_dtype(client):
    with pytest.raises(InputError, match=r"dtype must be one of \('float64', 'float32'\)"):
        CodedALS(2, n_workers=N_WORKERS, dtype="float16").fit(np.eye(8), client=client)


# -- the path on separate scheduler and worker processes ------------------------------------------


SLOW_ONCE = '''
import os, time
from dask_coded_als.data.store import GramSource

_opened = 0


class SlowOnce(GramSource):
    """Opened twice per worker (the check, then the build of its shard): the first worker to
    build writes its pid to a marker file and takes 5 s."""

    def __init__(self, path, shape, dtype, marker):
        super().__init__(path, shape, dtype)
        self.marker = marker

    def open_array(self):
        global _opened
        _opened += 1
        if _opened == 2:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return super().open_array()
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            time.sleep(5)
        return super().open_array()
'''


def _start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture
def processes(tmp_path):
    """A ``dask scheduler`` and 5 ``dask worker`` processes (with nannies) on 127.0.0.1, run
    from a directory of their own; yields (scheduler file, path of the test's helper module)."""
    elsewhere = tmp_path / "elsewhere"
    helpers = tmp_path / "helpers"
    elsewhere.mkdir()
    helpers.mkdir()
    (helpers / "slow_source.py").write_text(SLOW_ONCE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(helpers), str(ROOT)])}
    scheduler_file = tmp_path / "scheduler.json"
    started = [
        _start(
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            elsewhere,
            env,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        started.append(
            _start(
                [
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--nworkers",
                    "5",
                    "--nthreads",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--no-dashboard",
                    "--memory-limit",
                    "0",
                ],
                elsewhere,
                env,
            )
        )
        sys.path.insert(0, str(helpers))
        yield scheduler_file
    finally:
        sys.path.remove(str(helpers))
        for proc in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_dask_processes_build_d_and_the_shards_and_survive_a_kill_during_placement(
    processes, tmp_path, monkeypatch
):
    import slow_source

    path = make_store(tmp_path, 50, 30, 700)
    monkeypatch.chdir(tmp_path)  # the store is named relative to this process only
    local, _ = stores.compute_gram(path, column_block=7)
    R = stores.ratings_matrix(path)
    reference = fit_als(R.toarray(), 3, max_iter=3, tol=0, seed=4)
    marker = tmp_path / "slow.pid"
    with Client(scheduler_file=str(processes), timeout="60s", set_as_default=False) as client:
        client.wait_for_workers(5, timeout=60)
        stores.compute_gram(Path("s.zarr"), client=client, overwrite=True)
        np.testing.assert_array_equal(stores.load_gram(path)[0], local)
        found = stores.gram_source(Path("s.zarr"))
        source = slow_source.SlowOnce(found.path, found.shape, found.dtype, str(marker))
        model = CodedALS(3, n_workers=5, h=2, max_iter=3, tol=0, seed=4, recovery_timeout=60)
        errors: list[BaseException] = []

        def fit() -> None:
            try:
                model.fit(R, client=client, gram=source)
            except BaseException as exc:  # reported by the test's thread
                errors.append(exc)

        thread = threading.Thread(target=fit)
        thread.start()
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < deadline and thread.is_alive(), errors
            time.sleep(0.05)
        os.kill(int(marker.read_text()), signal.SIGKILL)  # a worker building its shard
        thread.join(timeout=180)
        assert not thread.is_alive(), "the fit did not end"
    assert not errors, errors
    assert model.recoveries_ >= 1
    assert product_gap(model, reference) < 1e-9
