"""The Table I and benchmark experiments, in their quick form, on one shared cluster."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from dask_coded_als.bench import (
    BENCH_QUICK,
    PAPER_TABLE1,
    TABLE1_QUICK,
    relative_gap,
    run_bench,
    run_table1,
    table1_cells,
    time_to_gap,
    write_report,
)
from dask_coded_als.engine import local_cluster
from dask_coded_als.errors import InputError

# The quick grid needs W = k + s = 22 workers for k = 20; the bench needs 13.
N_WORKERS = max(TABLE1_QUICK.ks) + TABLE1_QUICK.n_stragglers

# The paper's Table I (k = 10: h = 2 only; k = 20: h = 2, 3, 4), restricted to the quick rows.
QUICK_CELLS = [(10, 2), (20, 2), (20, 3), (20, 4)]


@pytest.fixture(scope="module")
def experiment_client():
    # Threads, not processes: 22 worker processes take longer to start than the experiments
    # take to run on 2 cores; the experiments only need W distinct workers.
    with (
        local_cluster(N_WORKERS, processes=False, protocol="tcp://") as cluster,
        Client(cluster, timeout="60s", set_as_default=False) as client,
    ):
        client.wait_for_workers(N_WORKERS, timeout=60)
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        yield client


def test_cells_follow_the_papers_table():
    assert table1_cells(TABLE1_QUICK.ks, TABLE1_QUICK.hs) == QUICK_CELLS
    full = table1_cells((10, 20, 30, 40, 50), (2, 3, 4, 5, 6))
    assert set(full) == set(PAPER_TABLE1)


def test_time_to_gap():
    assert time_to_gap([1.0, 2.0, 4.0], [1.0, 1e-3, 1e-7], 1e-6) == 7.0
    assert time_to_gap([1.0, 2.0], [1.0, 1e-3], 1e-6) is None
    assert relative_gap(3.0, 2.0) == 0.5


def test_table1_quick(experiment_client, tmp_path: Path):
    result = run_table1(quick=True, seed=0, client=experiment_client)
    result["files"] = [str(f) for f in write_report(result, tmp_path)]
    for path in result["files"]:
        assert Path(path).is_file() and Path(path).stat().st_size > 0
    assert {Path(p).name for p in result["files"]} == {"table1.md", "table1.json", "table1.png"}
    assert [(c["k"], c["h"]) for c in result["cells"]] == QUICK_CELLS
    for cell in result["cells"]:
        assert cell["h"] ** 2 + cell["h"] - 1 <= cell["k"]
        assert cell["W"] == cell["k"] + TABLE1_QUICK.n_stragglers
        assert cell["time"] > 0 and cell["compute"] > 0 and cell["isolated"] > 0
        # The model's normal approximation may go below zero for tasks this small: finite only.
        assert math.isfinite(cell["model"]) and math.isfinite(cell["model_stage1"])
        assert math.isfinite(cell["shared_estimate"]) and cell["shared_estimate"] > 0
        assert math.isfinite(cell["final_gap"])
    assert result["wall_time"] > 0
    assert json.loads(json.dumps(result))["cells"] == result["cells"]
    assert json.loads((tmp_path / "table1.json").read_text())["cells"] == result["cells"]
    assert "| k | h |" in (tmp_path / "table1.md").read_text()
    assert (tmp_path / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_quick(experiment_client, tmp_path: Path):
    result = run_bench(quick=True, seed=0, client=experiment_client)
    result["files"] = [str(f) for f in write_report(result, tmp_path)]
    names = {Path(p).name for p in result["files"]}
    assert names == {"bench.md", "bench.json", "bench_iteration.png", "bench_convergence.png"}
    for path in result["files"]:
        assert Path(path).is_file() and Path(path).stat().st_size > 0
    runs = {(r["straggler_model"], r["method"]) for r in result["runs"]}
    assert runs == {
        (model, method)
        for model in BENCH_QUICK.straggler_models
        for method in ("coded", "coded-paper", "uncoded", "replication")
    }
    for run in result["runs"]:
        assert run["time_per_iteration"] > 0
        assert run["bytes_sent_per_iteration"] > 0
        # Every method computes the same ALS iterates: all reach the optimum.
        assert run["time_to_gap"] is not None and run["time_to_gap"] > 0
        assert abs(run["final_gap"]) < 1e-6
    gaps = {r["method"]: r["gaps"] for r in result["runs"] if r["straggler_model"] == "none"}
    np.testing.assert_allclose(gaps["coded"], gaps["uncoded"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gaps["coded-paper"], gaps["coded"], rtol=1e-6, atol=1e-8)
    for run in result["runs"]:
        assert run["cpu_seconds_per_iteration"] > 0
    svd = result["svd_compressed"]
    assert svd["reached_target"]
    assert all(r["seconds"] > 0 and math.isfinite(r["gap"]) for r in svd["runs"])
    assert result["ratios"]["fixed"]["coded"]["time_per_iteration_vs_coded"] == 1.0
    assert json.loads((tmp_path / "bench.json").read_text())["ratios"] == result["ratios"]


def test_a_quick_run_never_writes_over_a_full_run(tmp_path: Path, capsys):
    from dask_coded_als.bench.report import check_out_dir
    from dask_coded_als.cli import EXIT_CODES, main

    (tmp_path / "bench.json").write_text(json.dumps({"experiment": "bench", "quick": False}))
    check_out_dir("bench", quick=False, out_dir=tmp_path)  # a full run may replace it
    check_out_dir("table1", quick=True, out_dir=tmp_path)  # another experiment's folder
    with pytest.raises(InputError, match="holds the results of a full bench run"):
        check_out_dir("bench", quick=True, out_dir=tmp_path)
    # the command line refuses before it runs anything
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == EXIT_CODES["input"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a quick run does not write over them" in err[0]
