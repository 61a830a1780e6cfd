"""The distributed engine against the in-memory reference ALS and scipy's SVD."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import N_WORKERS

from dask_coded_als import CodedALS, fit_als
from dask_coded_als.als import RankDeficientError
from dask_coded_als.errors import ClusterError, InputError


def low_rank(m: int, n: int, rank: int = 4, noise: float = 1e-2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) + noise * (
        rng.standard_normal((m, n))
    )


def product_gap(model: CodedALS, reference) -> float:
    P = model.user_factors_ @ model.item_factors_.T
    Q = reference.user_factors @ reference.item_factors.T
    return float(np.linalg.norm(P - Q) / np.linalg.norm(Q))


@pytest.mark.parametrize("shape", [(50, 37), (29, 52)])  # m >= n and m < n; 37 and 29 need padding
@pytest.mark.parametrize("h", [1, 2])
def test_coded_fit_equals_reference_als(client, shape, h):
    R = low_rank(*shape)
    reference = fit_als(R, 4, max_iter=8, tol=0, seed=3)
    model = CodedALS(4, n_workers=N_WORKERS, h=h, max_iter=8, tol=0, seed=3).fit(R, client=client)
    assert model.user_factors_.shape == (shape[0], 4)
    assert model.item_factors_.shape == (shape[1], 4)
    assert model.n_iter_ == 8
    assert product_gap(model, reference) < 1e-9
    np.testing.assert_allclose(
        [e["objective"] for e in model.history_], reference.objective_history, rtol=1e-9
    )


@pytest.mark.parametrize(
    "straggler_model,n_stragglers,delay",
    [("fixed", 2, 0.3), ("random", 3, 0.2), ("shifted-exponential", 2, 2.0)],
)
def test_straggler_models_give_the_same_factors(client, straggler_model, n_stragglers, delay):
    R = low_rank(40, 30, seed=1)
    reference = fit_als(R, 3, max_iter=4, tol=0, seed=0, regularization=0.1)
    model = CodedALS(
        3,
        n_workers=N_WORKERS,
        n_stragglers=n_stragglers,
        straggler_model=straggler_model,
        straggler_delay=delay,
        max_iter=4,
        tol=0,
        seed=0,
        regularization=0.1,
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9
    if straggler_model == "fixed":
        # the master never waited for the two slow workers in the costly stage
        slow = set(model._stragglers.fixed)
        for entry in model.history_:
            assert not slow & set(entry["stages"]["E"]["used"])
            assert slow <= set(entry["stages"]["E"]["late"])


def test_history_records_every_stage(client):
    R = low_rank(30, 20)
    model = CodedALS(3, n_workers=N_WORKERS, h=2, max_iter=3, tol=0, seed=0).fit(R, client=client)
    assert [e["iteration"] for e in model.history_] == [0, 1, 2, 3]
    for entry in model.history_[:-1]:
        assert set(entry["stages"]) == {"E", "F", "S", "B"}
        assert len(entry["stages"]["E"]["used"]) == 5  # h^2 + h - 1
        assert entry["time"] > 0 and entry["bytes_sent"] > 0 and entry["bytes_received"] > 0
        for info in entry["stages"].values():
            assert set(info["used"]).isdisjoint(info["late"])
    assert "H" in model.history_[-1]["stages"]  # the post-computation ran coded too


@pytest.mark.parametrize("mode", ["uncoded", "replication"])
def test_baselines_equal_reference(client, mode):
    R = low_rank(45, 33, seed=2)
    reference = fit_als(R, 4, max_iter=6, tol=0, seed=1)
    model = CodedALS(
        4, n_workers=N_WORKERS, n_stragglers=1, mode=mode, max_iter=6, tol=0, seed=1
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9


def test_converges_to_the_svd_optimum(client):
    R = low_rank(60, 40, rank=5, noise=1e-3, seed=4)
    model = CodedALS(5, n_workers=N_WORKERS, max_iter=200, tol=1e-14, seed=0).fit(R, client=client)
    assert model.converged_
    sigma = np.linalg.svd(R, compute_uv=False)
    optimum = np.sqrt(np.sum(sigma[5:] ** 2))
    residual = np.linalg.norm(R - model.user_factors_ @ model.item_factors_.T)
    assert abs(residual / optimum - 1) < 1e-10


def test_sparse_and_dask_inputs(client):
    R = low_rank(40, 25, seed=5)
    R[np.abs(R) < 1.0] = 0.0  # a sparse pattern
    reference = fit_als(R, 3, max_iter=5, tol=0, seed=2)
    for data in (sp.csr_matrix(R), da.from_array(R, chunks=(16, 25))):
        model = CodedALS(3, n_workers=N_WORKERS, max_iter=5, tol=0, seed=2).fit(data, client=client)
        assert product_gap(model, reference) < 1e-9


def test_killed_workers_up_to_s_give_the_same_factors(client):
    R = low_rank(40, 30, seed=6)
    reference = fit_als(R, 3, max_iter=6, tol=0, seed=0)
    model = CodedALS(
        3,
        n_workers=N_WORKERS,
        n_stragglers=2,
        straggler_model="kill",
        max_iter=6,
        tol=0,
        seed=0,
    ).fit(R, client=client)
    assert len(model.kills_) == 2
    assert product_gap(model, reference) < 1e-9


def test_own_local_cluster_when_no_client():
    R = low_rank(20, 12, seed=7)
    reference = fit_als(R, 2, max_iter=3, tol=0, seed=0)
    model = CodedALS(2, n_workers=3, max_iter=3, tol=0, seed=0).fit(R)
    assert model.h_ == 1
    assert product_gap(model, reference) < 1e-9


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(h=3), "h=3 needs 11 answering workers"),
        (dict(n_stragglers=8), "n_stragglers=8 must be smaller than n_workers=8"),
        (dict(n_stragglers=-1), "n_stragglers must be >= 0"),
        (dict(mode="fast"), "mode must be one of"),
        (dict(straggler_model="slow"), "straggler_model must be one of"),
        (dict(tol=float("nan")), "tol must be a finite number"),
    ],
)
def test_bad_parameters(client, kwargs, message):
    with pytest.raises((InputError, ValueError), match=message):
        CodedALS(2, n_workers=N_WORKERS, **kwargs).fit(low_rank(10, 8), client=client)


def test_bad_data(client):
    with pytest.raises(InputError, match="exceeds min"):
        CodedALS(9, n_workers=N_WORKERS).fit(low_rank(10, 8), client=client)
    bad = low_rank(10, 8)
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        CodedALS(2, n_workers=N_WORKERS).fit(bad, client=client)


def test_rank_deficient_data_is_a_clear_error(client):
    R = low_rank(30, 20, rank=2, noise=0.0)
    with pytest.raises(RankDeficientError):
        CodedALS(4, n_workers=N_WORKERS, max_iter=3, seed=0).fit(R, client=client)


def test_too_few_workers_is_a_bounded_error(client):
    with pytest.raises(ClusterError, match="needs n_workers=12"):
        CodedALS(2, n_workers=12, recovery_timeout=1.0).fit(low_rank(10, 8), client=client)


@pytest.mark.parametrize("mode", ["coded", "uncoded"])
def test_resume_from_a_checkpoint_gives_the_same_factors(client, mode):
    R = low_rank(40, 30, seed=8)
    states = []

    def keep(state):
        states.append({**state, "history": list(state["history"])})

    options = dict(n_workers=N_WORKERS, mode=mode, max_iter=6, tol=0, seed=4)
    full = CodedALS(3, **options).fit(R, client=client, checkpoint=keep)
    assert [s["iteration"] for s in states] == [1, 2, 3, 4, 5, 6]
    resumed = CodedALS(3, **options).fit(R, client=client, resume=states[2])
    assert resumed.n_iter_ == 6 and len(resumed.history_) == 7
    P = full.user_factors_ @ full.item_factors_.T
    Q = resumed.user_factors_ @ resumed.item_factors_.T
    assert np.linalg.norm(P - Q) / np.linalg.norm(P) < 1e-9
    bad = {**states[2], "B": states[2]["B"][:, :2]}
    with pytest.raises(InputError, match="shape"):
        CodedALS(3, **options).fit(R, client=client, resume=bad)


def test_a_client_that_is_not_the_default_one(client):
    from distributed import Client

    R = low_rank(20, 12, seed=9)
    reference = fit_als(R, 2, max_iter=3, tol=0, seed=0)
    with Client(client.scheduler.address, set_as_default=False, timeout="30s") as other:
        model = CodedALS(2, n_workers=N_WORKERS, max_iter=3, tol=0, seed=0).fit(R, client=other)
    assert product_gap(model, reference) < 1e-9


def _kill_self():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_more_kills_than_tolerated_recover_on_restarted_workers(client):
    # s = 1 but four of eight workers die at once: fewer than K = 5 remain until the nannies
    # restart them; the lost shards go to the restarted workers and the fit ends as without faults.
    R = low_rank(40, 30, seed=10)
    reference = fit_als(R, 3, max_iter=5, tol=0, seed=0)
    model = CodedALS(3, n_workers=N_WORKERS, n_stragglers=1, max_iter=5, tol=0, seed=0)

    def kill_four(entry):
        if entry["iteration"] == 1:
            victims = [model._address[w] for w in range(4)]
            client.run(_kill_self, workers=victims, on_error="ignore")

    model.fit(R, client=client, callback=kill_four)
    assert model.recoveries_ >= 4
    assert product_gap(model, reference) < 1e-9


def test_workers_that_never_come_back_give_a_bounded_error():
    from distributed import Client

    from dask_coded_als.engine import local_cluster

    R = low_rank(20, 12, seed=11)
    with local_cluster(4) as cluster, Client(cluster, timeout="30s") as own:
        own.wait_for_workers(4, timeout=60)
        model = CodedALS(2, n_workers=4, max_iter=20, tol=0, recovery_timeout=2.0)

        def shut_down_all(entry):
            if entry["iteration"] == 1:
                cluster.scale(0)  # the cluster will not start them again

        with pytest.raises(ClusterError, match="workers hold their shard|results it needs"):
            model.fit(R, client=own, callback=shut_down_all)


def test_a_gram_matrix_stored_on_disk(client, tmp_path):
    import zarr

    R = low_rank(30, 22, seed=12)
    stored = zarr.create_array(tmp_path / "D.zarr", shape=(22, 22), chunks=(7, 7), dtype="f8")
    stored[...] = R.T @ R
    reference = fit_als(R, 3, max_iter=4, tol=0, seed=0)
    for mode in ("coded", "uncoded"):
        model = CodedALS(3, n_workers=N_WORKERS, mode=mode, max_iter=4, tol=0, seed=0)
        model.fit(R, client=client, gram=stored)
        assert product_gap(model, reference) < 1e-9
