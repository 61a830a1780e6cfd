"""Fault campaigns on the shared LocalCluster: worker processes SIGKILLed during fits.

Every run is planned from a seed by ``pipelines/fault_campaign.py`` (the same harness runs the
larger campaign of docs/reliability.md) and must end with the fault-free factors of
:func:`dask_coded_als.fit_als` (same seed and ``max_iter``, ``tol=0``; U V^T within 1e-9) or,
when more workers die than the cluster can replace in time, with a ClusterError: never with
other factors, never hanging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from distributed import Client
from support import N_WORKERS, load_campaign

from dask_coded_als.coding import theory
from dask_coded_als.engine import master

campaign = load_campaign()
#: Seconds any one fit may take before the harness calls it a hang.
DEADLINE = 60.0


@pytest.fixture(scope="module")
def fault_client(cluster_client) -> Iterator[Client]:
    """A second client of the shared cluster; the cluster is whole again afterwards.

    Two waits of the engine are shortened here, both bounded anyway (see docs/reliability.md):
    a scatter to a worker the scheduler has just removed waits ``SCATTER_TIMEOUT`` (10 s) for it
    to reappear, and one to a worker that has just died retries connecting for the client's
    ``timeout``. At the defaults an unlucky kill stalls a fit 10 to 30 s; the outcome is the
    same.
    """
    loggers = [logging.getLogger(name) for name in ("distributed", "dask_coded_als")]
    levels = [logger.level for logger in loggers]
    campaign.heal(cluster_client, N_WORKERS)
    try:
        with (
            pytest.MonkeyPatch.context() as patch,
            Client(cluster_client.scheduler.address, timeout="5s", set_as_default=False) as client,
        ):
            for logger in loggers:  # deaths are the point here, not news
                logger.setLevel(logging.CRITICAL)
            patch.setattr(master, "SCATTER_TIMEOUT", 1.0)
            yield client
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        campaign.settle_kills()
        campaign.heal(cluster_client, N_WORKERS)


def run(client: Client, cluster_client: Client, plan):
    """One run of the harness on the shared cluster (whole before it starts)."""
    if isinstance(plan, int):
        plan = campaign.plan_run(plan, N_WORKERS, extra_kills=False, recovery_timeout=30.0)
    return campaign.run_one(client, plan, DEADLINE, cluster_client.cluster, N_WORKERS)


def test_plans_are_seeded_and_extra_kills_exceed_the_tolerance():
    for seed in range(50):
        plan = campaign.plan_run(seed)
        assert plan == campaign.plan_run(seed)
        assert 1 <= plan.n_stragglers < plan.n_workers
        assert 0 <= plan.extra_after < plan.max_iter
        K = theory.recovery_threshold(theory.best_h(plan.n_workers, plan.n_stragglers))
        if plan.extra_kills:
            # with the s kills of the model, fewer than K workers can be left
            assert plan.n_workers - plan.n_stragglers - len(plan.extra_kills) < K
            assert len(set(plan.extra_kills)) == len(plan.extra_kills)
    plans = [campaign.plan_run(seed) for seed in range(50)]
    assert len({p.n_stragglers for p in plans}) == 3
    assert 10 < sum(1 for p in plans if p.extra_kills) < 40
    assert campaign.plan_run(0) != campaign.plan_run(1)


#: Seeds whose s kills (s = 3, 1, 2) all fire: none is scheduled after the last update.
UP_TO_S = [0, 2, 5]


def test_up_to_s_kills_give_the_fault_free_factors(fault_client, cluster_client):
    results = [run(fault_client, cluster_client, seed) for seed in UP_TO_S]
    table = campaign.table(results)
    assert [r.outcome for r in results] == ["identical"] * len(UP_TO_S), table
    for r in results:
        assert r.gap < 1e-9
        assert r.kills <= r.plan.n_stragglers
    assert sum(r.kills for r in results) >= len(UP_TO_S), table
    assert {r.plan.n_stragglers for r in results} == {1, 2, 3}, table


def test_more_kills_than_s_recover_with_the_fault_free_factors(fault_client, cluster_client):
    # 1. All 8 workers in the fit, s = 1 (K = 5), 4 more killed after the second update: the
    #    fit waits for the nannies to restart them and gives their shards to the new processes.
    restart = campaign.plan_run(1, N_WORKERS, extra_kills=True, recovery_timeout=30.0)
    # 2. 6 of the 8 workers in the fit (K = 5), s = 1 and one more killed: the two spare workers
    #    take the shards at once.
    spare = campaign.Plan(
        seed=11,
        m=45,
        n=32,
        d=3,
        n_workers=6,
        n_stragglers=1,
        max_iter=4,
        extra_kills=(2,),
        extra_after=1,
        recovery_timeout=30.0,
    )
    results = [run(fault_client, cluster_client, plan) for plan in (restart, spare)]
    table = campaign.table(results)
    assert [r.outcome for r in results] == ["identical"] * 2, table
    for r in results:
        assert r.recoveries >= 1, table  # shards went to other processes
        assert r.gap < 1e-9
    K = theory.recovery_threshold(theory.best_h(N_WORKERS, 1))
    assert results[0].kills >= N_WORKERS - K + 1, table  # more than the code tolerates


def test_more_kills_than_can_be_replaced_in_time_end_with_a_cluster_error(
    fault_client, cluster_client
):
    # Four of eight workers die after the first update and the fit may wait only 0.2 s for
    # replacements: a ClusterError, in bounded time (identical factors only if the nannies were
    # faster than that).
    plan = campaign.Plan(
        seed=7,
        m=40,
        n=30,
        d=3,
        n_workers=N_WORKERS,
        n_stragglers=1,
        max_iter=4,
        extra_kills=(0, 2, 4, 6),
        extra_after=0,
        recovery_timeout=0.2,
    )
    start = time.monotonic()
    result = run(fault_client, cluster_client, plan)
    assert result.outcome in ("ClusterError", "identical"), result
    if result.outcome == "ClusterError":
        assert "recovery_timeout=0.2" in result.error or "results it needs" in result.error
    assert time.monotonic() - start < 30
