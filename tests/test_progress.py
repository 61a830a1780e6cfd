"""Progress: the library's hooks (bytes read, blocks of D, shards placed) and the command line's
bars, drawn only on a terminal and never into stdout."""

from __future__ import annotations

import bz2
import fcntl
import gzip
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import SAMPLE

from dask_coded_als import CodedALS
from dask_coded_als.cli import main, progress
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]
#: What a drawn bar holds and a plain line never does.
BAR = "%|"


def screen(text: str) -> list[str]:
    """The lines a terminal shows after receiving ``text`` (a carriage return writes over the
    line from its start)."""
    shown = []
    for raw in text.split("\n"):
        line = ""
        for piece in raw.split("\r"):
            line = piece + line[len(piece) :]
        if line.strip():
            shown.append(line.rstrip())
    return shown


def calls(record: list) -> callable:
    return lambda done, total: record.append((done, total))


def check_progress(record: list[tuple[int, int]], total: int) -> None:
    """Calls that only move forward and end with (total, total)."""
    assert record, "no progress reported"
    assert {t for _, t in record} == {total}
    done = [d for d, _ in record]
    assert done == sorted(done) and 0 < done[0] and done[-1] == total


# ---- the library's hooks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "compress", [None, gzip.compress, bz2.compress], ids=["plain", "gz", "bz2"]
)
def test_ingest_reports_the_bytes_read(tmp_path, compress):
    text = (SAMPLE / "ratings.csv").read_bytes()
    source = tmp_path / "ratings.csv"
    source.write_bytes(text if compress is None else compress(text))
    record: list = []
    # small batches, so that the file is read in many pieces
    ingest(source, tmp_path / "r.zarr", chunk_rows=500, progress=calls(record))
    check_progress(record, source.stat().st_size)
    assert len(record) > 2


def test_ingest_reports_parts_and_parquet_rows(tmp_path):
    lines = (SAMPLE / "ratings.csv").read_text().splitlines()
    parts = tmp_path / "parts"
    parts.mkdir()
    for k in range(3):  # text part files: one total, the bytes of all parts
        (parts / f"part.{k}.csv").write_text("\n".join([lines[0], *lines[1 + k :: 3]]) + "\n")
    record: list = []
    ingest(parts, tmp_path / "text.zarr", progress=calls(record))
    check_progress(record, sum(p.stat().st_size for p in parts.iterdir()))

    table = pa.table({"u": np.arange(1000) % 37, "i": np.arange(1000) % 41, "r": np.ones(1000)})
    pq.write_table(table, tmp_path / "r.parquet", row_group_size=100)
    record = []
    ingest(tmp_path / "r.parquet", tmp_path / "pq.zarr", chunk_rows=100, progress=calls(record))
    size = (tmp_path / "r.parquet").stat().st_size
    check_progress(record, size)
    assert len(record) == 10  # one call per batch of 100 rows, estimated from the rows read
    assert record[4][0] == round(0.5 * size)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "sample.zarr"
    ingest(SAMPLE / "ratings.csv", path)
    return path


@pytest.mark.parametrize(
    "options,blocks",
    # R is 300 x 250: D = R^T R from 10 blocks of 30 rows, or 3 blocks of (at most) 100 columns
    [({"rows_per_chunk": 30}, 10), ({"column_block": 100}, 3)],
    ids=["row-blocks", "column-blocks"],
)
def test_compute_gram_reports_the_blocks_done(store, options, blocks):
    record: list = []
    D, _ = stores.compute_gram(store, overwrite=True, progress=calls(record), **options)
    assert record == [(k, blocks) for k in range(1, blocks + 1)]
    R = stores.ratings_matrix(store)
    assert np.allclose(D, (R.T @ R).toarray())


def test_fit_reports_the_shards_placed_before_the_rounds(client):
    R = np.random.default_rng(0).standard_normal((60, 40))
    events: list = []
    model = CodedALS(n_factors=3, n_workers=5, n_stragglers=1, max_iter=2, seed=0)
    model.fit(
        R,
        client=client,
        progress=lambda done, total: events.append(("placed", done, total)),
        callback=lambda entry: events.append(("round", entry["iteration"])),
    )
    assert events == [("placed", w, 5) for w in range(1, 6)] + [("round", t) for t in range(3)]


# ---- the command line ----------------------------------------------------------------------


def scheduler_args(client) -> list[str]:
    return ["--scheduler", client.scheduler.address]


@pytest.fixture
def terminal(monkeypatch):
    """Bars drawn into the captured stderr, as on a terminal."""
    monkeypatch.setattr(progress, "on_terminal", lambda: True)


def test_no_bars_away_from_a_terminal(tmp_path, capsys):
    assert main(["ingest", str(SAMPLE / "ratings.csv"), str(tmp_path / "r.zarr")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith("ingested 15000 ratings")


def test_ingest_bar_on_a_terminal_and_quiet(tmp_path, capsys, terminal):
    argv = ["ingest", str(SAMPLE / "ratings.csv"), str(tmp_path / "r.zarr")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    size = (SAMPLE / "ratings.csv").stat().st_size
    assert out.startswith("ingested 15000 ratings") and BAR not in out
    (last,) = screen(err)  # the bar as it was left
    assert last.startswith("ingest: 100%|") and f"{size / 1024:.0f}k/{size / 1024:.0f}k" in last
    assert "sorting, writing the store" in last
    for quiet in (["-q"], ["--quiet"]):  # before or after the subcommand
        assert main([*quiet, *argv, "--overwrite"]) == 0
        assert capsys.readouterr().err == ""
        assert main([*argv, "--overwrite", *quiet]) == 0
        assert capsys.readouterr().err == ""


def test_an_error_erases_the_bar(tmp_path, capsys, terminal):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating\n1,2,3\n1,2,x\n")
    assert main(["ingest", str(bad), str(tmp_path / "r.zarr")]) == 2
    err = capsys.readouterr().err
    assert "ingest: 100%|" in err  # drawn, then cleared: the error's line stands alone
    (line,) = screen(err)
    assert line.startswith("dask-coded-als: error: ") and line.endswith("'x' is not a number")


def test_fit_bars_on_a_terminal_and_json_unchanged(store, client, capsys, terminal):
    fit = ["fit", str(store), "--factors", "4", "--workers", "6", "--stragglers", "1"]
    fit += ["--iterations", "3", "--tol", "0", *scheduler_args(client)]
    assert main(fit) == 0
    out, err = capsys.readouterr()
    assert BAR not in out and out.startswith("fit coded: 3 iterations")
    drawn = screen(err)
    shards = next(line for line in drawn if line.startswith("shards:"))
    assert "100%|" in shards and "6/6" in shards
    rounds = next(line for line in drawn if line.startswith("fit:"))
    assert "100%|" in rounds and "4/4" in rounds
    entry = stores.read_factors(store)[2]["history"][-1]
    late = len(entry["stages"]["E"]["late"]) + len(entry["stages"]["E"]["failed"])
    assert f"objective {entry['objective']:.4e}, used 5/6, late {late}" in rounds

    assert main([*fit, "--json"]) == 0  # no bars with --json, and stdout is the summary
    out, err = capsys.readouterr()
    assert BAR not in err
    summary = json.loads(out)
    assert summary["iterations"] == 3 and summary["n_workers"] == 6


def test_fit_bar_of_d_on_a_terminal(tmp_path, client, capsys, terminal):
    path = tmp_path / "fresh.zarr"
    ingest(SAMPLE / "ratings.csv", path)  # no D yet: the fit computes it
    argv = ["fit", str(path), "--factors", "3", "--workers", "4", "--iterations", "1"]
    assert main([*argv, *scheduler_args(client)]) == 0
    drawn = screen(capsys.readouterr().err)
    assert any(line.startswith("D: 100%|") for line in drawn), drawn
    assert stores.open_store(path).has_gram


def test_a_fit_away_from_a_terminal_prints_one_line_per_round(store, client, capsys):
    argv = ["fit", str(store), "--factors", "3", "--workers", "4", "--iterations", "2"]
    assert main([*argv, "--tol", "0", *scheduler_args(client)]) == 0
    err = capsys.readouterr().err
    assert BAR not in err
    assert [line.split()[:2] for line in err.splitlines()] == [
        ["iteration", str(t)] for t in range(3)
    ]
    assert main([*argv, "--tol", "0", "-q", *scheduler_args(client)]) == 0
    assert capsys.readouterr().err == ""


def _run_on_a_terminal(argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal of 100 columns; (exit code, stdout,
    what the terminal received)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_coded_als.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    os.close(follower)
    received = b""
    deadline = time.monotonic() + timeout
    while select.select([leader], [], [], max(0.0, deadline - time.monotonic()))[0]:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(leader)
    out = proc.communicate(timeout=timeout)[0]
    return proc.returncode, out.decode(), received.decode(errors="replace")


def test_a_real_terminal_gets_the_bar(tmp_path):
    # (a pipe gets none: see test_no_bars_away_from_a_terminal, whose stderr is no terminal)
    argv = ["ingest", str(SAMPLE / "ratings.csv"), str(tmp_path / "a.zarr")]
    code, out, terminal = _run_on_a_terminal(argv)
    assert code == 0 and out.startswith("ingested 15000 ratings"), terminal
    assert "ingest: 100%|" in terminal and "B/s" in terminal
