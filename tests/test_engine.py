"""The distributed engine against the in-memory reference ALS and scipy's SVD."""

from __future__ import annotations

import os
import threading
import time

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from support import N_WORKERS, low_rank, product_gap

from dask_coded_als import CodedALS, fit_als
from dask_coded_als.als import RankDeficientError
from dask_coded_als.coding.codes import ALSCode, matmul_t
from dask_coded_als.engine import exchange, master, tasks
from dask_coded_als.engine.cluster import worker_addresses
from dask_coded_als.engine.stragglers import StragglerModel, TaskDelay
from dask_coded_als.errors import ClusterError, InputError


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether process ``pid`` has ended (its nanny reaps it) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# -- the iterates of the reference, for every protocol, h, shape and ridge ----------------------


# m >= n and m < n (37 and 29 need padding), h = 1 and 2, with and without the ridge: every
# combination for the default protocol; the paper's (three exchanges a round, the same iterates)
# on two combinations that between them cover each value.
FAST_CASES = [
    ("fast", shape, h, regularization)
    for shape in [(50, 37), (29, 52)]
    for h in [1, 2]
    for regularization in [0.0, 0.5]
]
PAPER_CASES = [("paper", (50, 37), 2, 0.5), ("paper", (29, 52), 1, 0.0)]


@pytest.mark.parametrize("protocol,shape,h,regularization", FAST_CASES + PAPER_CASES)
def test_coded_fit_equals_reference_als(client, protocol, shape, h, regularization):
    R = low_rank(*shape)
    reference = fit_als(R, 4, max_iter=6, tol=0, seed=3, regularization=regularization)
    model = CodedALS(
        4,
        n_workers=N_WORKERS,
        h=h,
        protocol=protocol,
        max_iter=6,
        tol=0,
        seed=3,
        regularization=regularization,
    ).fit(R, client=client)
    assert model.user_factors_.shape == (shape[0], 4)
    assert model.item_factors_.shape == (shape[1], 4)
    assert model.n_iter_ == 6
    assert product_gap(model, reference) < 1e-9
    # the objective is known to its decoding's rounding (near the optimum it is a small
    # difference of terms as large as trace(D))
    rounding = 4 * max(e["decode_error"] for e in model.history_) * np.sum(R * R)
    np.testing.assert_allclose(
        [e["objective"] for e in model.history_],
        reference.objective_history,
        rtol=1e-9,
        atol=rounding,
    )


@pytest.mark.parametrize("shape", [(50, 37), (29, 52)])
@pytest.mark.parametrize("partition", [(1, 1), (7, 1), (3, 2), (1, 3), (1, 4)])
def test_every_partition_gives_the_reference_iterates(client, shape, partition):
    R = low_rank(*shape, seed=13)
    reference = fit_als(R, 3, max_iter=4, tol=0, seed=2)
    model = CodedALS(
        3, n_workers=N_WORKERS, n_stragglers=1, partition=partition, max_iter=4, tol=0, seed=2
    ).fit(R, client=client)
    assert model.partition_ == partition
    assert model.h_ == (partition[0] if partition[0] == partition[1] else None)
    assert product_gap(model, reference) < 1e-9
    p, r = partition
    assert all(len(e["stages"]["E"]["used"]) == p * r + r - 1 for e in model.history_)


@pytest.mark.parametrize("partition", [(7, 1), (3, 2), (1, 3)])
def test_the_paper_protocol_on_other_partitions(client, partition):
    R = low_rank(50, 37, seed=15)
    reference = fit_als(R, 3, max_iter=3, tol=0, seed=2, regularization=0.2)
    model = CodedALS(
        3,
        n_workers=N_WORKERS,
        partition=partition,
        protocol="paper",
        max_iter=3,
        tol=0,
        seed=2,
        regularization=0.2,
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9


@pytest.mark.parametrize("points", [None, "real"])
def test_partition_auto_measures_the_cluster_and_picks_a_feasible_member(client, points):
    R = low_rank(60, 44, seed=14)
    reference = fit_als(R, 4, max_iter=3, tol=0, seed=1)
    model = CodedALS(
        4,
        n_workers=N_WORKERS,
        n_stragglers=2,
        partition="auto",
        points=points,
        max_iter=3,
        tol=0,
        seed=1,
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9
    p, r = model.partition_
    assert p * r + r - 1 + 2 <= N_WORKERS
    rates = model.rates_
    assert rates.op_mean > 0 and rates.bandwidth > 0 and rates.latency > 0
    assert 1 <= rates.concurrency <= N_WORKERS
    assert "calibration" in model.timings_


@pytest.mark.parametrize("protocol", ["fast", "paper"])
@pytest.mark.parametrize(
    "straggler_model,n_stragglers,delay",
    [("fixed", 2, 0.3), ("random", 3, 0.2), ("shifted-exponential", 2, 2.0), ("kill", 2, 0.0)],
)
def test_straggler_models_give_the_same_factors(
    client, protocol, straggler_model, n_stragglers, delay
):
    R = low_rank(40, 30, seed=1)
    reference = fit_als(R, 3, max_iter=4, tol=0, seed=0, regularization=0.1)
    model = CodedALS(
        3,
        n_workers=N_WORKERS,
        n_stragglers=n_stragglers,
        protocol=protocol,
        straggler_model=straggler_model,
        straggler_delay=delay,
        max_iter=4,
        tol=0,
        seed=0,
        regularization=0.1,
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9


@pytest.mark.parametrize("mode", ["uncoded", "replication"])
@pytest.mark.parametrize("straggler_model", ["none", "fixed", "kill"])
def test_baselines_equal_reference(client, mode, straggler_model):
    R = low_rank(45, 33, seed=2)
    reference = fit_als(R, 4, max_iter=5, tol=0, seed=1)
    model = CodedALS(
        4,
        n_workers=N_WORKERS,
        n_stragglers=1,
        mode=mode,
        straggler_model=straggler_model,
        straggler_delay=0.2,
        max_iter=5,
        tol=0,
        seed=1,
        recovery_timeout=60,
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9


# -- one exchange per iteration, late work stopped ---------------------------------------------


@pytest.mark.parametrize("points", [None, "circle", "real"])
def test_fast_protocol_sends_one_operand_per_worker_per_iteration(client, points):
    R = low_rank(30, 20)
    model = CodedALS(3, n_workers=N_WORKERS, h=2, points=points, max_iter=3, tol=0, seed=0)
    model.fit(R, client=client)
    # the default takes real points here: their worst case at W = 8, K = 5 is well conditioned
    assert model.points_ == (points or "real")
    code = ALSCode(2, N_WORKERS, model.points_)
    size = code.padded_size(20)
    operand = code.encode_operand(np.zeros((size, 3)))[0]
    answer = code.product(code.encode_data(np.zeros((size, size)))[0], operand)
    assert [e["iteration"] for e in model.history_] == [0, 1, 2, 3]
    for entry in model.history_:
        assert set(entry["stages"]) == {"E"}
        assert len(entry["stages"]["E"]["used"]) == 5  # h^2 + h - 1
        # f_R(B, x_w) to each of the W workers and nothing else; K answers back
        assert entry["bytes_sent"] == N_WORKERS * operand.nbytes
        assert entry["bytes_received"] == 5 * answer.nbytes
        assert entry["cpu_seconds"] > 0
        assert 0 < entry["decode_error"] < 1e-12


def test_paper_protocol_records_its_three_exchanges(client):
    R = low_rank(30, 20)
    model = CodedALS(3, n_workers=N_WORKERS, h=2, protocol="paper", max_iter=2, tol=0, seed=0)
    model.fit(R, client=client)
    assert [set(e["stages"]) for e in model.history_] == [{"E", "S", "B"}] * 2 + [{"E", "S", "H"}]


def test_late_workers_are_stopped_and_not_waited_for(client):
    # Two workers 5 s late in every task, within the tolerance: no round waits for them, their
    # sleeps end on the stop signal, and the factors are those of the reference.
    R = low_rank(40, 30, seed=3)
    reference = fit_als(R, 3, max_iter=3, tol=0, seed=5)
    delay = 5.0
    options = dict(n_stragglers=2, straggler_model="fixed", straggler_delay=delay, seed=5)
    start = time.monotonic()
    model = CodedALS(3, n_workers=N_WORKERS, max_iter=3, tol=0, **options).fit(R, client=client)
    assert time.monotonic() - start < delay
    assert product_gap(model, reference) < 1e-9
    slow = set(StragglerModel("fixed", N_WORKERS, 2, delay, seed=5).fixed)
    for entry in model.history_:
        stage = entry["stages"]["E"]
        assert entry["time"] < delay
        assert not slow & set(stage["used"])
        assert slow <= set(stage["stopped"]), stage  # their sleep ended early
        assert stage["late_cpu_seconds"] >= 0


def test_the_last_round_and_the_post_computation_are_delayed_too(client):
    # The paper protocol's coded post-computation is an exchange like the others: the fixed
    # stragglers are late in it as well, so it never uses them.
    R = low_rank(40, 30, seed=4)
    options = dict(n_stragglers=2, straggler_model="fixed", straggler_delay=2.0, seed=2)
    model = CodedALS(3, n_workers=N_WORKERS, protocol="paper", max_iter=2, tol=0, **options)
    model.fit(R, client=client)
    slow = set(StragglerModel("fixed", N_WORKERS, 2, 2.0, seed=2).fixed)
    last = model.history_[-1]["stages"]
    for name in ("E", "S", "H"):
        assert not slow & set(last[name]["used"]), name
        assert slow <= set(last[name]["late"]), name


def test_a_task_stops_between_chunks_and_during_its_delay():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((600, 4000)), rng.standard_normal((600, 300))
    product = matmul_t  # a^T b in column chunks of a

    full = tasks.run_task("t", 1, 0, "full", TaskDelay(), product, a, b)
    assert not full.stopped
    np.testing.assert_allclose(full.value, a.T @ b)

    # stopped a few milliseconds into the product: it ends early, having spent less CPU
    timer = threading.Timer(0.005, tasks.stop, ("mid",))
    timer.start()
    stopped = tasks.run_task("t", 2, 0, "mid", TaskDelay(), product, a, b)
    timer.join()
    assert stopped.stopped and stopped.value is None
    assert stopped.cpu_seconds < 0.7 * full.cpu_seconds

    # a straggler's delay ends on the stop signal
    timer = threading.Timer(0.1, tasks.stop, ("sleep",))
    timer.start()
    start = time.perf_counter()
    late = tasks.run_task("t", 3, 0, "sleep", TaskDelay(seconds=10.0), product, a[:, :10], b)
    timer.join()
    assert late.stopped and time.perf_counter() - start < 5.0

    # a task whose exchange is over before it starts does nothing
    idle = tasks.run_task("t", 4, 0, "sleep", TaskDelay(seconds=10.0), product, a, b)
    assert idle.stopped and idle.compute_seconds < 0.01
    assert tasks.take_ledger("t")[0] == (1, 0, full.cpu_seconds, False)
    assert tasks.take_ledger("t") == []


def test_no_cluster_queries_per_round(client, monkeypatch):
    calls = []

    def counting(the_client):
        calls.append(1)
        return worker_addresses(the_client)

    monkeypatch.setattr(master, "worker_addresses", counting)
    per_round = []
    CodedALS(3, n_workers=N_WORKERS, max_iter=8, tol=0, seed=0).fit(
        low_rank(30, 20), client=client, callback=lambda entry: per_round.append(len(calls))
    )
    assert 1 <= per_round[0] and len(per_round) == 9  # joining the cluster, placing the shards
    assert per_round[-1] == per_round[0]  # and not once in any round after


def test_a_stage_holding_its_threshold_decodes_at_its_timeout(client, monkeypatch):
    # The paper's cheap stages collect extra answers while a decode looks inaccurate; here it
    # always does (target 0) and every worker but the threshold is late beyond stage_timeout
    # in stage 2: the stage decodes with what it holds instead of failing.
    monkeypatch.setattr(exchange, "DECODE_ERROR_TARGET", 0.0)
    threshold = 3  # 2h - 1 for h = 2

    def delays(self, round, stage):
        late = TaskDelay(seconds=30.0)
        return [late if stage == 2 and w >= threshold else TaskDelay() for w in range(8)]

    monkeypatch.setattr(StragglerModel, "delays", delays)
    R = low_rank(30, 20, seed=6)
    reference = fit_als(R, 3, max_iter=2, tol=0, seed=0)
    model = CodedALS(
        3, n_workers=N_WORKERS, h=2, protocol="paper", max_iter=2, tol=0, seed=0, stage_timeout=1.0
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9
    assert all(len(e["stages"]["S"]["used"]) == threshold for e in model.history_)


# -- faults ------------------------------------------------------------------------------------


def test_killed_workers_up_to_s_give_the_same_factors_and_are_gone(client):
    pids = worker_pids(client)
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
    assert product_gap(model, reference) < 1e-9
    planned = StragglerModel("kill", N_WORKERS, 2, n_rounds=7, seed=0).kills
    assert {k["worker"] for k in model.kills_} == {k.worker for k in planned}
    for kill in model.kills_:
        assert gone(pids[kill["address"]])


@pytest.mark.parametrize("mode", ["coded", "uncoded", "replication"])
def test_every_mode_fires_its_kills_and_none_lands_after_fit(client, mode):
    # seed 16 kills worker 7 in round 1 and worker 6 in round 4, the last of max_iter=4: that
    # one lands before the fit ends or is cancelled, never after.
    planned = StragglerModel("kill", N_WORKERS, 2, n_rounds=5, seed=16).kills
    assert [(k.worker, k.round) for k in planned] == [(7, 1), (6, 4)]
    pids = worker_pids(client)
    R = low_rank(36, 28, seed=8)
    reference = fit_als(R, 3, max_iter=4, tol=0, seed=16)
    model = CodedALS(
        3,
        n_workers=N_WORKERS,
        n_stragglers=2,
        mode=mode,
        straggler_model="kill",
        max_iter=4,
        tol=0,
        seed=16,
        recovery_timeout=60,
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9
    killed = {k["address"] for k in model.kills_}
    assert {k["worker"] for k in model.kills_} >= {7}
    assert all(gone(pids[a]) for a in killed)
    time.sleep(0.5)  # a kill still pending would land now
    listed = worker_addresses(client)
    assert set(pids) - killed <= listed


def test_an_error_of_the_checkpoint_ends_the_fit_without_an_extra_update(client):
    calls = []

    def checkpoint(state):
        calls.append(state["iteration"])
        if len(calls) == 2:
            raise OSError("disk full")

    seen = []
    model = CodedALS(3, n_workers=N_WORKERS, max_iter=5, tol=0, seed=0)
    with pytest.raises(OSError, match="disk full"):
        model.fit(low_rank(30, 20), client=client, checkpoint=checkpoint, callback=seen.append)
    assert calls == [1, 2]
    assert [e["iteration"] for e in seen] == [0, 1]


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

        start = time.monotonic()
        with pytest.raises(ClusterError, match="workers hold their shard"):
            model.fit(R, client=own, callback=shut_down_all)
        assert time.monotonic() - start < 30


# -- inputs, outputs, errors ----------------------------------------------------------------------


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


def test_own_local_cluster_when_no_client():
    R = low_rank(20, 12, seed=7)
    reference = fit_als(R, 2, max_iter=3, tol=0, seed=0)
    model = CodedALS(2, n_workers=3, max_iter=3, tol=0, seed=0).fit(R)
    assert model.h_ == 1
    assert product_gap(model, reference) < 1e-9
    assert set(model.timings_) >= {"gram", "scatter_data", "iterations", "post", "total"}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(h=3), "h=3 needs 11 answering workers"),
        (dict(partition=(4, 2)), r"partition=\(4, 2\) needs 9 answering workers"),
        (dict(partition=(2, 0)), "r must be an integer >= 1"),
        (dict(partition="best"), "partition must be 'auto' or a pair"),
        (dict(h=2, partition=(2, 2)), "give h or partition, not both"),
        (dict(n_stragglers=8), "n_stragglers=8 must be smaller than n_workers=8"),
        (dict(n_stragglers=-1), "n_stragglers must be an integer >= 0"),
        (dict(mode="fast"), "mode must be one of"),
        (dict(protocol="quick"), "protocol must be one of"),
        (dict(straggler_model="slow"), "straggler_model must be one of"),
        (dict(points="spiral"), "points must be one of"),
        (dict(tol=float("nan")), "tol must be a finite number"),
        (dict(recovery_timeout=-1), "recovery_timeout must be >= 0"),
    ],
)
def test_bad_parameters(client, kwargs, message):
    with pytest.raises(InputError, match=message):
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


# -- answers checked by the code's redundancy ------------------------------------------------------


@pytest.mark.parametrize(
    "partition,verify,n_wrong",
    [((2, 2), 1, 1), ((3, 1), 2, 2), ((3, 1), 2, 1)],
)
def test_verify_finds_wrong_answers_and_gives_the_reference(client, partition, verify, n_wrong):
    R = low_rank(40, 30, seed=21)
    reference = fit_als(R, 3, max_iter=4, tol=0, seed=3)
    model = CodedALS(
        3,
        n_workers=N_WORKERS,
        partition=partition,
        n_stragglers=n_wrong,
        straggler_model="corrupt",
        straggler_delay=1e-3,  # relative size of the wrong answers
        verify=verify,
        max_iter=4,
        tol=0,
        seed=3,
    ).fit(R, client=client)
    assert product_gap(model, reference) < 1e-9
    corrupt = StragglerModel("corrupt", N_WORKERS, n_wrong, 1e-3, seed=3).fixed
    # every round left out exactly the wrong answers it received
    received = 0
    for entry in model.history_:
        stage = entry["stages"]["E"]
        assert set(stage["wrong"]) == set(corrupt) & set(stage["used"])
        received += len(stage["wrong"])
    assert received > 0
    assert sum(model.wrong_answers_.values()) == received
    assert set(model.wrong_answers_) <= set(corrupt)


def test_without_verify_wrong_answers_damage_the_fit(client):
    # why the option exists: one worker off by 1e-3 moves the factors far from the reference.
    # Seed 1 makes worker 0 the wrong one: its operands are sent first, so its answer is among
    # the first K of every round (the workers sent last are the usual late ones).
    assert StragglerModel("corrupt", N_WORKERS, 1, 1e-3, seed=1).fixed == [0]
    R = low_rank(40, 30, seed=21)
    reference = fit_als(R, 3, max_iter=4, tol=0, seed=1)
    options = dict(n_workers=N_WORKERS, h=2, n_stragglers=1, straggler_model="corrupt")
    model = CodedALS(3, straggler_delay=1e-3, max_iter=4, tol=0, seed=1, **options)
    model.fit(R, client=client)
    assert product_gap(model, reference) > 1e-6
    assert model.wrong_answers_ == {}


def test_more_wrong_answers_than_verify_is_a_cluster_error(client):
    R = low_rank(40, 30, seed=22)
    model = CodedALS(
        3,
        n_workers=N_WORKERS,
        partition=(3, 1),
        n_stragglers=3,
        straggler_model="corrupt",
        straggler_delay=1e-2,
        verify=1,
        max_iter=3,
        tol=0,
        seed=0,
    )
    with pytest.raises(ClusterError, match="wrong|disagree|cannot"):
        model.fit(R, client=client)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(h=2, verify=2), "verify=2 needs K \\+ 2 verify = 9 answers"),
        (dict(h=2, verify=1, protocol="paper"), "verify=1 needs mode='coded' and protocol='fast'"),
        (dict(verify=1, mode="uncoded"), "verify=1 needs mode='coded'"),
        (dict(verify=-1), "verify must be an integer >= 0"),
    ],
)
def test_bad_verify(client, kwargs, message):
    with pytest.raises(InputError, match=message):
        CodedALS(2, n_workers=N_WORKERS, **kwargs).fit(low_rank(10, 8), client=client)


def _misaligned(values: np.ndarray) -> np.ndarray:
    """``values`` in memory that starts one byte past an aligned address, as an array can
    arrive in a message."""
    raw = np.zeros(values.nbytes + 1, dtype=np.uint8)
    view = np.frombuffer(raw.data, dtype=values.dtype, count=values.size, offset=1)
    view = view.reshape(values.shape)
    view[...] = values
    return view


def test_tasks_compute_on_aligned_copies_of_misaligned_arrays():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 30)), rng.standard_normal((40, 5))
    shifted = _misaligned(a)
    assert not shifted.flags.aligned
    copy = tasks.aligned(shifted)
    assert copy.flags.aligned and np.array_equal(copy, a)
    assert tasks.aligned(a) is a and tasks.aligned("x") == "x"  # nothing else is copied

    def product(x, y, interrupt):
        assert x.flags.aligned and y.flags.aligned  # numpy's BLAS path needs it
        return matmul_t(x, y, interrupt)

    report = tasks.run_task("fit", 0, 0, "stop-aligned", TaskDelay(), product, shifted, b)
    np.testing.assert_array_equal(report.value, matmul_t(a, b))
