"""The scripts in pipelines/ run end to end on generated MovieLens files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import N_WORKERS, load_generator

from dask_coded_als.data import store as stores

ROOT = Path(__file__).resolve().parents[1]


def test_movielens_pipeline_on_a_generated_ml_1m_file(client, tmp_path):
    gen = load_generator()
    users, items, ratings, timestamps = gen.generate_ratings(120, 80, 3000, seed=1, rating_step=1)
    files = gen.write_movielens(
        tmp_path, "ml-1m", users=users, items=items, ratings=ratings, timestamps=timestamps
    )
    out = tmp_path / "ml.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "pipelines" / "movielens.py"),
            str(files["ratings"]),
            "--movies",
            str(files["movies"]),
            "--out",
            str(out),
            "--factors",
            "4",
            "--workers",
            str(N_WORKERS),
            "--stragglers",
            "1",
            "--iterations",
            "5",
            "--scheduler",
            client.scheduler.address,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert "precision@k" in proc.stdout and "ingest: 3000 ratings" in proc.stdout
    U, V, _ = stores.read_factors(out)
    assert U.shape[1] == V.shape[1] == 4
