"""The command line: subcommands end to end, one-line errors and exit codes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.sparse.linalg import svds
from support import SAMPLE

from dask_coded_als.cli import EXIT_CODES, main
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest
from dask_coded_als.recsys.evaluation import (
    evaluate_factors,
    evaluate_popularity,
    temporal_split,
    train_test_split,
    verdict,
)


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


def test_fit_with_a_partition_and_the_paper_protocol(sample_store, client, capsys):
    argv = ["fit", str(sample_store), "--factors", "4", "--iterations", "2", "--json"]
    for options, partition in ((["--partition", "7,1"], [7, 1]), (["--protocol", "paper"], [2, 2])):
        assert main([*argv, *options, *scheduler_args(client)]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["partition"] == partition and summary["iterations"] == 2


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
        (["fit", "{store}", "--factors", "5", "--h", "3"], "input", "--h 3 needs 11"),
        (["fit", "{store}", "--factors", "5", "--stragglers", "8"], "input", "--stragglers 8"),
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


FIT = [
    "--factors",
    "5",
    "--workers",
    "8",
    "--stragglers",
    "1",
    "--straggler-model",
    "fixed",
    "--straggler-delay",
    "0.2",
    "--iterations",
    "25",
    "--tol",
    "0",
    "--seed",
    "3",
]


def test_resume_after_sigkill_gives_the_uninterrupted_factors(sample_store, client, capsys):
    fit = ["fit", str(sample_store), *FIT, *scheduler_args(client)]
    assert main([*fit, "--json"]) == 0
    U0, V0, _ = stores.read_factors(sample_store)
    assert stores.read_checkpoint(sample_store) is None  # a finished fit leaves none behind

    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_coded_als.cli", *fit, "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = stores.read_checkpoint(sample_store) if proc.poll() is None else None
            if state is not None and state[1]["iteration"] >= 3:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = stores.read_checkpoint(sample_store)[1]["iteration"]
    assert 3 <= killed_at < 25
    capsys.readouterr()
    assert main([*fit, "--resume", "--json"]) == 0
    assert f"resuming from the checkpoint at iteration {killed_at}" in capsys.readouterr().err
    U1, V1, attrs = stores.read_factors(sample_store)
    assert len(attrs["history"]) == 26
    P, Q = U0 @ V0.T, U1 @ V1.T
    assert np.linalg.norm(P - Q) / np.linalg.norm(P) < 1e-9


def test_resume_refuses_missing_mismatched_and_corrupt_checkpoints(sample_store, capsys):
    fit = ["fit", str(sample_store), *FIT]
    stores.clear_checkpoint(sample_store)
    assert main([*fit, "--resume"]) == EXIT_CODES["input"]
    assert "no checkpoint to resume from" in capsys.readouterr().err
    attrs = {"fingerprint": {"factors": 4}, "iteration": 1, "history": [{}]}
    stores.write_checkpoint(sample_store, np.ones((250, 5)), attrs)
    assert main([*fit, "--resume"]) == EXIT_CODES["input"]
    assert "written with other options (factors" in capsys.readouterr().err
    (sample_store / "checkpoint" / "B" / "zarr.json").write_text("{not json")
    assert main([*fit, "--resume"]) == EXIT_CODES["input"]
    err = capsys.readouterr().err
    assert "checkpoint is corrupt" in err and len(err.strip().splitlines()) == 1
    stores.clear_checkpoint(sample_store)


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("ingest", "fit", "recommend", "similar", "evaluate", "demo"):
        assert name in out


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory):
    """The sample with factors fitted (by svds) on the training part of the demo's split."""
    path = tmp_path_factory.mktemp("evaluate") / "sample.zarr"
    ingest(SAMPLE / "ratings.csv", path)
    train, _ = train_test_split(stores.ratings_matrix(path), test_fraction=0.2, seed=0)
    u, s, vt = svds(train, k=8)
    split = {"method": "random", "test_fraction": 0.2, "seed": 0}
    stores.write_factors(path, u * s, vt.T, {"split": split})
    return path


def test_evaluate_scores_the_stored_factors_without_a_cluster(eval_store, capsys):
    assert main(["evaluate", str(eval_store), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["factors"] == "stored" and "fit" not in result
    assert result["split"] == {"method": "random", "test_fraction": 0.2, "seed": 0}
    U, V, _ = stores.read_factors(eval_store)
    train, test = train_test_split(stores.ratings_matrix(eval_store), test_fraction=0.2, seed=0)
    assert result["model"] == evaluate_factors(U, V, train, test, k=10)
    assert result["popularity"] == evaluate_popularity(train, test, k=10)
    # The recorded split's options may be repeated; the table ends with the verdict line.
    argv = ["evaluate", str(eval_store), "--split", "random", "--seed", "0", "-k", "5"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("stored factors (d=8) on a random split (20% of each user's")
    assert lines[1].split() == ["precision@5", "recall@5", "ndcg@5", "map@5"]
    assert lines[-1].startswith("the model beats popularity: precision@5 ")


def test_evaluate_refit_on_a_temporal_split(eval_store, client, capsys):
    argv = ["evaluate", str(eval_store), "--refit", "--factors", "6", "--workers", "8"]
    argv += ["--iterations", "10", "--split", "temporal", "--json", *scheduler_args(client)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["factors"] == "refit" and result["fit"]["iterations"] == 10
    assert result["split"] == {"method": "temporal", "test_fraction": 0.2}
    store = stores.open_store(eval_store)
    R = stores.ratings_matrix(store)
    _, test = temporal_split(R, store.array("ratings/timestamp")[...], 0.2)
    assert result["model"]["n_users"] == np.count_nonzero(test.multiply(test >= 4).getnnz(axis=1))
    for label in ("model", "popularity"):
        assert 0 < result[label]["precision@k"] <= 1
    assert stores.read_factors(eval_store)[0].shape[1] == 8  # a refit leaves the store alone


def test_evaluate_refuses_factors_it_cannot_test_honestly(eval_store, tmp_path, capsys):
    no_stamps = tmp_path / "no-stamps.zarr"
    ratings = (SAMPLE / "ratings.csv").read_text().splitlines()[1:]
    csv = tmp_path / "r.csv"
    csv.write_text("\n".join(",".join(line.split(",")[:3]) for line in ratings) + "\n")
    ingest(csv, no_stamps, format="csv", columns=["user", "item", "rating"])
    fitted_on_everything = tmp_path / "all.zarr"
    ingest(SAMPLE / "ratings.csv", fitted_on_everything)
    st = stores.open_store(fitted_on_everything)
    stores.write_factors(fitted_on_everything, np.ones((st.n_users, 2)), np.ones((st.n_items, 2)))
    cases = [
        ([str(fitted_on_everything)], "fitted on all ratings, test ratings included"),
        ([str(no_stamps)], "no factors stored; pass --refit"),
        ([str(eval_store), "--seed", "1"], "other split options would test them on ratings"),
        ([str(eval_store), "--split", "temporal"], "other split options"),
        ([str(eval_store), "--test-fraction", "0.3"], "other split options"),
        ([str(eval_store), "--factors", "4"], "--factors goes with --refit"),
        (
            [str(no_stamps), "--refit", "--factors", "4", "--split", "temporal"],
            "the ratings have no timestamps, so there is no temporal split (use --split random)",
        ),
    ]
    for argv, message in cases:
        assert run(["evaluate", *argv]) == EXIT_CODES["input"], argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize(
    "model,popular,line",
    [
        (
            (0.2, 0.4),
            (0.1, 0.25),
            "the model beats popularity: precision@10 0.2000 vs 0.1000 (2.00x), "
            "NDCG@10 0.4000 vs 0.2500 (1.60x)",
        ),
        (
            (0.1, 0.2),
            (0.15, 0.3),
            "popularity beats the model: precision@10 0.1000 vs 0.1500 (1.50x), "
            "NDCG@10 0.2000 vs 0.3000 (1.50x)",
        ),
        (
            (0.2, 0.2),
            (0.1, 0.3),
            "no clear winner between the model and popularity: precision@10 0.2000 vs 0.1000 "
            "(2.00x), NDCG@10 0.2000 vs 0.3000 (1.50x)",
        ),
        ((0.0, 0.0), (0.0, 0.0), "the model and popularity tie: precision@10 0.0000 vs 0.0000"),
        ((0.1, 0.1), (0.0, 0.0), "the model beats popularity: precision@10 0.1000 vs 0.0000, "),
    ],
)
def test_verdict_line(model, popular, line):
    def metrics(pair):
        return {"precision@k": pair[0], "ndcg@k": pair[1]}

    assert verdict(metrics(model), metrics(popular), 10).startswith(line)


def test_demo_runs_the_whole_flow(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--iterations", "3", "--straggler-delay", "0.1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for step in ("1. ingested", "3. fit", "4. top 5", "5. held-out evaluation", "done in"):
        assert step in out
    U, V, _ = stores.read_factors(tmp_path / "sample.zarr")
    assert U.shape == (300, 10) and V.shape == (250, 10)
    # The line after the table says who won; `evaluate` rescores the stored factors on the
    # demo's split and says the same.
    lines = out.splitlines()
    verdict = lines[1 + next(i for i, x in enumerate(lines) if x.startswith("popularity "))]
    assert verdict.startswith("the model beats popularity: precision@10 ")
    assert main(["evaluate", str(tmp_path / "sample.zarr")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == verdict


def test_fit_verify_leaves_out_wrong_answers_and_names_their_workers(sample_store, client, capsys):
    from dask_coded_als.engine.stragglers import StragglerModel

    argv = ["fit", str(sample_store), "--factors", "4", "--iterations", "3", "--partition", "3,1"]
    argv += ["--tol", "0", "--json", *scheduler_args(client)]
    assert main(argv) == 0
    honest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    corrupt = ["--straggler-model", "corrupt", "--stragglers", "1", "--straggler-delay", "0.01"]
    assert main([*argv, *corrupt, "--verify", "2"]) == 0
    checked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert checked["objective"] == pytest.approx(honest["objective"], rel=1e-9)
    # 7 of the 8 answers are checked each round: the wrong worker is caught in some round
    wrong = StragglerModel("corrupt", 8, 1, 0.01, seed=0).fixed
    assert {int(w) for w in checked["wrong_answers"]} == set(wrong)


# ---- a command line that explains itself ----------------------------------------------------


@pytest.mark.parametrize(
    "where", [[], ["-v"], ["--verbose"], ["after"]], ids=["plain", "-v", "--verbose", "after"]
)
def test_an_internal_error_is_one_line_and_its_traceback_with_v(
    sample_store, monkeypatch, capsys, where
):
    def broken(path):
        raise RuntimeError("the store reader broke\nsecond line")

    monkeypatch.setattr(stores, "open_store", broken)
    argv = ["recommend", str(sample_store), "--user", "1"]
    argv = [*argv, "-v"] if where == ["after"] else [*where, *argv]
    assert run(argv) == EXIT_CODES["internal"]
    err = capsys.readouterr().err
    line = "dask-coded-als: internal error: RuntimeError: the store reader broke"
    if where:
        assert err.startswith(line + "\n") and "Traceback (most recent call last)" in err
        assert "in broken" in err  # the traceback reaches the failing function
    else:
        assert err == line + " (-v shows the traceback)\n"


def test_verbose_and_quiet_after_the_subcommand_leave_the_earlier_flags(sample_store):
    from dask_coded_als.cli import build_parser, given_options

    parse = build_parser().parse_args
    args = parse(["-v", "recommend", str(sample_store), "--user", "1"])
    assert args.verbose and not args.quiet
    args = parse(["recommend", str(sample_store), "--user", "1", "-q", "--verbose"])
    assert args.verbose and args.quiet
    args = parse(["recommend", str(sample_store), "--user", "1"])
    assert not args.verbose and not args.quiet
    # what the command line gives, as opposed to defaults
    given = given_options(["-q", "fit", str(sample_store), "--workers", "8", "--resume"])
    assert given == {"quiet", "command", "store", "workers", "resume"}


def _interrupted_fit(store, argv: list[str], monkeypatch, after: int) -> int:
    """Run the fit ``argv`` and interrupt it as it writes checkpoint number ``after + 1``."""
    real = stores.write_checkpoint
    written = []

    def write_then_stop(*args, **kwargs):
        if len(written) == after:
            raise KeyboardInterrupt
        written.append(real(*args, **kwargs))

    monkeypatch.setattr(stores, "write_checkpoint", write_then_stop)
    try:
        return main(argv)
    finally:
        monkeypatch.setattr(stores, "write_checkpoint", real)


def test_resume_takes_the_options_from_the_checkpoint(tmp_path, client, capsys, monkeypatch):
    store = tmp_path / "s.zarr"
    ingest(SAMPLE / "ratings.csv", store)
    options = ["--factors", "5", "--workers", "7", "--stragglers", "1", "--seed", "4"]
    options += ["--regularization", "0.5", "--iterations", "8", "--tol", "0"]
    fit = ["fit", str(store), *scheduler_args(client)]
    assert main([*fit, *options, "--json"]) == 0
    U0, V0, _ = stores.read_factors(store)

    assert _interrupted_fit(store, [*fit, *options, "--json"], monkeypatch, 3) == 130
    assert stores.read_checkpoint(store)[1]["iteration"] == 3
    capsys.readouterr()
    # a flag given again must agree; a checkpoint is refused with the options that differ
    for again, differ in (
        (["--factors", "4"], "factors 5, not 4"),
        (["--seed", "0", "--workers", "7"], "seed 4, not 0"),
        (["--regularization", "0"], "regularization 0.5, not 0.0"),
    ):
        assert main([*fit, "--resume", *again]) == EXIT_CODES["input"]
        err = capsys.readouterr().err
        assert f"written with other options ({differ}); leave them out" in err, err
        assert len(err.strip().splitlines()) == 1
    # no flags: every option from the checkpoint, the iterations and tol included
    assert main([*fit, "--resume", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "resuming from the checkpoint at iteration 3 of 8" in err
    summary = json.loads(out)
    assert summary["iterations"] == 8 and summary["n_factors"] == 5 and summary["n_workers"] == 7
    U1, V1, attrs = stores.read_factors(store)
    assert len(attrs["history"]) == 9 and attrs["parameters"]["regularization"] == 0.5
    P, Q = U0 @ V0.T, U1 @ V1.T
    assert np.linalg.norm(P - Q) / np.linalg.norm(P) < 1e-9


def test_resume_needs_a_checkpoint(sample_store, capsys):
    stores.clear_checkpoint(sample_store)
    assert run(["fit", str(sample_store), "--resume"]) == EXIT_CODES["input"]
    err = capsys.readouterr().err
    assert "no checkpoint to resume from; run without --resume to start the fit" in err


def test_dashboard_is_served_on_loopback_while_the_fit_runs(sample_store, monkeypatch, capsys):
    import contextlib
    import urllib.request

    from dask_coded_als.cli import fit as fit_command

    served = {}
    real = fit_command.client_from_args

    @contextlib.contextmanager
    def watching(args, n_workers, dashboard=False):
        with real(args, n_workers, dashboard=dashboard) as own:
            with urllib.request.urlopen(own.dashboard_link, timeout=30) as page:
                served[own.dashboard_link] = page.status
            yield own

    monkeypatch.setattr(fit_command, "client_from_args", watching)
    argv = ["fit", str(sample_store), "--factors", "2", "--workers", "2", "--iterations", "1"]
    assert main([*argv, "--dashboard", "--json"]) == 0
    out, err = capsys.readouterr()
    (link,) = served
    assert served[link] == 200 and link.startswith("http://127.0.0.1:")
    assert f"dashboard: {link}\n" in err
    assert json.loads(out)["iterations"] == 1


def test_dashboard_needs_bokeh_and_a_scheduler_may_have_none(
    sample_store, client, monkeypatch, capsys
):
    argv = ["fit", str(sample_store), "--factors", "2", "--iterations", "0", "--dashboard"]
    assert main([*argv, *scheduler_args(client), "--json"]) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"dashboard: none at http://127\.0\.0\.1:\d+/status \(the scheduler was started without "
        r"one\)\n",
        err,
    ), err
    monkeypatch.setitem(sys.modules, "bokeh", None)  # as if it were not installed
    assert run(argv) == EXIT_CODES["input"]
    err = capsys.readouterr().err
    assert err == (
        "dask-coded-als: error: --dashboard needs bokeh: pip install 'dask-coded-als[dashboard]'\n"
    )


def test_task_stream_names_say_what_the_tasks_are(sample_store, client):
    from distributed import get_task_stream
    from distributed.utils import key_split

    argv = ["fit", str(sample_store), "--factors", "3", "--workers", "5", "--stragglers", "1"]
    argv += ["--iterations", "2", "--protocol", "paper", "--json", *scheduler_args(client)]
    with get_task_stream(client) as stream:
        assert main(argv) == 0
    # the dashboard groups and colours tasks by key_split: the checks that the workers open
    # the store, the building of their shards, and one group per stage of the paper's protocol,
    # each task named by its round and worker
    keys = [record["key"] for record in stream.data]
    assert {key_split(key) for key in keys} == {"probe", "shard", "E", "S", "B", "H"}
    keys = [key for key in keys if key_split(key) not in ("probe", "shard")]
    assert all(re.fullmatch(r"[ESBH]-iter[0-2]-w[0-4]-[0-9a-f]{8}-\d+", key) for key in keys)
    assert {key for key in keys if key.startswith("H-")} <= {
        key for key in keys if "-iter2-" in key
    }
