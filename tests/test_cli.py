"""The command line: subcommands end to end, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dask_coded_als import store as stores
from dask_coded_als.cli import EXIT_CODES, main

SAMPLE = Path(__file__).resolve().parent.parent / "datasets" / "sample"


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "sample.zarr"
    assert (
        main(
            [
                "ingest",
                str(SAMPLE / "ratings.csv"),
                str(path),
                "--movies",
                str(SAMPLE / "movies.csv"),
            ]
        )
        == 0
    )
    return path


def run(argv: list[str]) -> int:
    """Exit code of the command, whether main returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def scheduler_args(client) -> list[str]:
    return ["--scheduler", client.scheduler.address]


def test_fit_recommend_similar(sample_store, client, capsys):
    code = main(
        [
            "fit",
            str(sample_store),
            "--factors",
            "6",
            "--workers",
            "8",
            "--stragglers",
            "1",
            "--iterations",
            "5",
            "--json",
            *scheduler_args(client),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 5 and summary["h"] == 2
    U, V, attrs = stores.read_factors(sample_store)
    store = stores.open_store(sample_store)
    assert U.shape == (store.n_users, 6) and V.shape == (store.n_items, 6)
    assert len(attrs["history"]) == 6

    user = str(store.user_ids[0])
    assert main(["recommend", str(sample_store), "--user", user, "-n", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5
    rated = set(store.item_ids[stores.ratings_matrix(store)[0].indices].tolist())
    assert not rated & {row["item_id"] for row in rows}
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)

    item = str(store.item_ids[3])
    assert main(["similar", str(sample_store), "--item", item, "-n", "4"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["fit", "{store}", "--factors", "5", "--h", "3"], "input", "h=3 needs 11"),
        (["fit", "{store}", "--factors", "5", "--stragglers", "8"], "input", "n_stragglers=8"),
        (["fit", "{store}", "--factors", "999"], "input", "exceeds min"),
        (["fit", "{store}", "--factors", "0"], "input", "expected an integer >= 1"),
        (["fit", "/nonexistent/x.zarr", "--factors", "5"], "input", "no such store"),
        (
            [
                "fit",
                "{store}",
                "--factors",
                "5",
                "--scheduler",
                "tcp://127.0.0.1:1",
                "--connect-timeout",
                "2",
            ],
            "cluster",
            "cannot connect",
        ),
        (
            ["fit", "{store}", "--factors", "5", "--scheduler-file", "/nonexistent.json"],
            "cluster",
            "does not exist",
        ),
        (["recommend", "{store}", "--user", "no-such-user"], "input", ""),
        (["ingest", "/nonexistent.csv", "{tmp}/x.zarr"], "input", "nonexistent.csv"),
        (["fit", "{store}", "--factors", "5", "--straggler-delay", "-1"], "input", ""),
    ],
)
def test_errors_are_one_line_with_exit_codes(sample_store, tmp_path, capsys, argv, code, message):
    argv = [a.format(store=sample_store, tmp=tmp_path) for a in argv]
    assert run(argv) == EXIT_CODES[code]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert message in err


def test_no_traceback_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x00\xff\x13garbage\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dask_coded_als.cli", "ingest", str(bad), str(tmp_path / "o.zarr")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CODES["input"]
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_fit_without_resume_support_says_so(sample_store, capsys):
    assert main(["fit", str(sample_store), "--factors", "3", "--resume"]) == EXIT_CODES["input"]
    assert "--resume" in capsys.readouterr().err


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("ingest", "fit", "recommend", "similar", "evaluate", "demo"):
        assert name in out
