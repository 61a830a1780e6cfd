"""Batch recommendations at the ML-20M shape: ``dask-coded-als recommend STORE --all`` timed,
with the peak memory of the command and its cluster.

    python pipelines/bench_recommend.py --workdir /tmp/recs [--users 138493 --items 26744 \\
        --ratings 20000000 --factors 64 --n 20 --workers 2] [--out recs.parquet] [--json r.json]

The store is made once in WORKDIR (kept for later runs): ratings written by
``datasets/generate.py`` and ingested, random factors (d = FACTORS, seeded) written as ``fit``
writes them, titles included. Then the command runs in a child process:
``dask-coded-als recommend STORE --all --n N --workers W --out OUT``. Peak memory is the
resident memory of that process and all its children (the LocalCluster's scheduler, nannies
and workers) together, sampled every 0.1 s; CPU seconds are those of the command and every
process it waited for (its cluster's), from ``getrusage(RUSAGE_CHILDREN)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]

from dask_coded_als.data import store as stores  # noqa: E402
from dask_coded_als.data.ingest import ingest  # noqa: E402


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass  # a process that ended meanwhile
    return total


def make_store(work: Path, args: argparse.Namespace) -> Path:
    path = work / "ml.zarr"
    if path.exists():
        return path
    data = work / "data"
    command = [sys.executable, str(ROOT / "datasets" / "generate.py"), "--format", "ml-latest"]
    command += ["--users", str(args.users), "--items", str(args.items)]
    command += ["--ratings", str(args.ratings), "--out", str(data), "--seed", "0"]
    subprocess.run(command, check=True)
    ingest(data / "ratings.csv", path, movies=data / "movies.csv")
    st = stores.open_store(path)
    rng = np.random.default_rng(0)
    U = rng.standard_normal((st.n_users, args.factors))
    V = rng.standard_normal((st.n_items, args.factors))
    stores.write_factors(st, U, V, {"parameters": {"random": True}})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--ratings", type=int, default=20_000_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="recs.parquet", help="file name in WORKDIR")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = make_store(args.workdir, args)
    out = args.workdir / args.out
    command = [sys.executable, "-m", "dask_coded_als.cli", "recommend", str(store), "--all"]
    command += ["--n", str(args.n), "--workers", str(args.workers), "--out", str(out), "--json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the generator's, if it ran
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = 0
    watched = psutil.Process(child.pid)

    def sample() -> None:
        nonlocal peak
        while child.poll() is None:
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.Error:
                break
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, _ = child.communicate()
    wall = time.perf_counter() - start
    thread.join()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its cluster, waited
    load = os.getloadavg()[0]
    if child.returncode != 0:
        raise SystemExit(f"the command failed with exit code {child.returncode}")
    reported = json.loads(stdout.strip().splitlines()[-1])
    result = {
        "command": " ".join(command[1:]),
        "wall_seconds": wall,
        "job_seconds": reported["seconds"],
        "cpu_seconds": used.ru_utime + used.ru_stime - before.ru_utime - before.ru_stime,
        "load_average_1min_after": load,
        "peak_rss_gib": peak / 2**30,
        "users": reported["users"],
        "n": args.n,
        "workers": args.workers,
        "out_bytes": out.stat().st_size,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
