"""The memory estimate of a fit (engine/memory.py): the shards' sizes, the refusal of a fit that
cannot fit with the numbers and what would make it fit, before D or any shard is built."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.sparse as sp
from support import SAMPLE

from dask_coded_als import CodedALS
from dask_coded_als.cli import EXIT_CODES, main
from dask_coded_als.coding import theory
from dask_coded_als.coding.codes import ALSCode
from dask_coded_als.coding.points import choose_points
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest
from dask_coded_als.engine import memory
from dask_coded_als.engine.memory import WorkerMemory, memory_problems, shard_bytes
from dask_coded_als.errors import ClusterError, UnreachableStoreError

GiB = 2**30


@pytest.mark.parametrize("points", [None, "circle", "real"])
@pytest.mark.parametrize(("partition", "n_workers"), [((2, 2), 8), ((3, 1), 8), ((3, 3), 13)])
def test_the_shard_estimate_is_the_shard(partition, n_workers, points):
    size = 61
    shard, working, what = shard_bytes(size, 3, n_workers, "coded", partition, 0, points)
    p, r = partition
    chosen = points or choose_points(n_workers, theory.partition_threshold(p, r), r)
    code = ALSCode(partition, n_workers, chosen)
    D = np.ones((size, size))
    assert shard == max(s.nbytes for s in code.encode_data(D))
    assert working > 0 and f"partition ({p}, {r})" in what


@pytest.mark.parametrize(
    ("mode", "n_stragglers", "rows"), [("uncoded", 0, 8), ("replication", 1, 16)]
)
def test_the_row_block_estimate(mode, n_stragglers, rows):
    shard, _, what = shard_bytes(61, 3, 8, mode, None, n_stragglers)
    assert shard == 8 * rows * 61 and f"{rows} of D's 61 rows" in what


def limited(n: int, limit: float, used: float = 0.2 * GiB) -> list[WorkerMemory]:
    return [
        WorkerMemory(f"tcp://10.0.0.{i}:1", f"10.0.0.{i}", int(limit), int(used)) for i in range(n)
    ]


def test_a_worker_limit_too_small_is_refused_with_what_would_fit():
    # the ML-25M shape: D is 62423 x 62423, 29 GiB; h = 2 puts a quarter of it on each worker
    workers = limited(8, 4 * GiB)
    (problem,) = memory_problems(workers, {}, 62423, 32, "coded", (2, 2), 1)
    assert "each worker holds 7.32 GiB (its shard of D, partition (2, 2)" in problem
    assert "has 3 GiB (80% of its memory_limit of 4 GiB, less the 205 MiB it uses)" in problem
    assert problem.endswith("or partition=(10, 1) with n_workers=11"), problem
    # and the advice is right: that partition fits, the one before it does not
    for n, fits in ((10, True), (9, False)):
        need = sum(shard_bytes(62423, 32, max(8, n + 1), "coded", (n, 1), 1)[:2])
        assert (need <= workers[0].capacity(0.8)) == fits


def test_row_block_modes_are_told_how_many_workers():
    (problem,) = memory_problems(limited(8, 4 * GiB), {}, 62423, 32, "uncoded", None)
    assert "uncoded: 7803 of D's 62423 rows" in problem and problem.endswith("n_workers=10")


def test_workers_without_a_limit_are_counted_per_host():
    workers = [WorkerMemory(f"tcp://10.0.0.1:{i}", "10.0.0.1", 0, 0) for i in range(8)]
    hosts = {"10.0.0.1": (20 * GiB, 25 * GiB)}
    (problem,) = memory_problems(workers, hosts, 62423, 32, "coded", (2, 2), 1)
    assert "the fit's 8 workers on host 10.0.0.1 (no memory_limit) hold 58.5 GiB" in problem
    assert "together (7.32 GiB each: its shard of D, partition (2, 2)" in problem
    assert "the host has 20 GiB available (of 25 GiB): spread the workers" in problem
    # the shards of all 8 take 2 D's: no partition makes them fit in less than one
    assert problem.endswith("more hosts (dtype='float32' needs half)"), problem
    in_float32 = memory_problems(workers, hosts, 62423, 32, "coded", (2, 2), 1, dtype="float32")
    assert "3.66 GiB each" in in_float32[0] and "float32" not in in_float32[0]
    assert memory_problems(workers, hosts, 20000, 32, "coded", (2, 2), 1) == []


def test_d_added_up_on_a_worker_and_auto_partitions():
    workers = limited(8, 4 * GiB)
    (problem,) = memory_problems(workers, {}, 30000, 8, "coded", None, gram_on_cluster=True)
    assert "D (30000 x 30000) is added up on one worker" in problem and "13.4 GiB" in problem
    # "auto" before calibration: the shards are checked once the partition is chosen
    assert memory_problems(workers, {}, 30000, 8, "coded", None) == []
    assert memory_problems(limited(8, 0), {}, 30000, 8, "coded", (2, 2)) == []


class Lazy:
    """A D as large as any: only its shape is ever looked at."""

    def __init__(self, size: int) -> None:
        self.shape = (size, size)

    def __getitem__(self, key):
        raise AssertionError("D was read")


@pytest.mark.parametrize("gram", ["given", "computed"])
def test_a_fit_that_cannot_fit_stops_before_d_or_any_shard(client, gram):
    size = 2_000_000  # D of 29 TiB: on no test machine
    R = sp.identity(size, format="csr")
    model = CodedALS(2, n_workers=8, max_iter=1, seed=0)
    keys = set(client.who_has())
    start = time.perf_counter()
    with pytest.raises(ClusterError, match="not enough memory") as info:
        model.fit(R, client=client, gram=Lazy(size) if gram == "given" else None)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    if gram == "given":
        assert "on host 127.0.0.1 (no memory_limit) hold 58.2 TiB together" in message, message
    else:
        assert "D: 2000000 x 2000000 float64 takes 29.1 TiB, this machine has" in message
    assert set(client.who_has()) == keys  # nothing was scattered


def test_cli_refuses_to_form_a_d_this_machine_cannot_hold(tmp_path, client, monkeypatch, capsys):
    store = tmp_path / "s.zarr"
    ingest(SAMPLE / "ratings.csv", store)
    before = sorted(p.name for p in store.iterdir())
    monkeypatch.setattr(memory, "_available", lambda: (100_000, 200_000))
    # workers that share this file system compute D themselves: here they cannot

    def unreachable(*args):
        raise UnreachableStoreError("the workers cannot open the store")

    monkeypatch.setattr(stores, "check_workers_read", unreachable)
    code = main(["fit", str(store), "--factors", "2", "--scheduler", client.scheduler.address])
    err = capsys.readouterr().err
    assert code == EXIT_CODES["cluster"], err
    assert err.count("\n") == 2 and "D and the shards are made here" in err
    assert "not enough memory for D: 250 x 250 float64 takes 488 KiB" in err
    assert "this machine has 97.7 KiB available (of 195 KiB)" in err
    assert sorted(p.name for p in store.iterdir()) == before  # no gram/ written
