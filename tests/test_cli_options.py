"""Nonsense for every option of every subcommand: a non-zero exit (2 for input, 3 for the
cluster), exactly one line on stderr, no traceback, and the store left byte for byte as it was.

The command runs in-process through ``main(argv)`` (argparse errors arrive as SystemExit);
a few cases also run as real processes.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from support import SAMPLE

from dask_coded_als.cli import EXIT_CODES, build_parser, main
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]

BAD = Path(__file__).resolve().parent / "data" / "bad"
INPUT, CLUSTER = EXIT_CODES["input"], EXIT_CODES["cluster"]
#: A port nothing listens on: connections are refused at once.
NOWHERE = "tcp://127.0.0.1:1"


def tree_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file below ``path`` (or of ``path`` itself), by relative path."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(path)) + "/": "dir" for p in path.rglob("*") if p.is_dir()}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """A complete store (ratings, Gram matrix, factors), a fresh one (ratings only) and the
    things that are not stores."""
    root = tmp_path_factory.mktemp("cli-options")
    full = root / "full.zarr"
    ingest(SAMPLE / "ratings.csv", full, movies=SAMPLE / "movies.csv")
    stores.compute_gram(full)
    st = stores.open_store(full)
    rng = np.random.default_rng(0)
    stores.write_factors(
        full, rng.standard_normal((st.n_users, 3)), rng.standard_normal((st.n_items, 3)), {}
    )
    fresh = root / "fresh.zarr"
    ingest(SAMPLE / "ratings.csv", fresh)
    plain = root / "plain-dir"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a store\n")
    group = root / "no-attrs.zarr"
    zarr.open_group(str(group), mode="w")
    other = root / "other-layout.zarr"
    zarr.open_group(str(other), mode="w").attrs.update({"layout": "something/else"})
    a_file = root / "a-file.zarr"
    a_file.write_text("{}\n")
    garbage_pem = root / "garbage.pem"
    garbage_pem.write_text("not a certificate\n")
    return {
        "full": full,
        "fresh": fresh,
        "plain": plain,
        "group": group,
        "other": other,
        "file": a_file,
        "missing": root / "missing.zarr",
        "pem": garbage_pem,
        "tmp": root,
    }


def run(argv: list[str]) -> int:
    """Exit code of the command, whether main returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def check(places, capsys, argv: list[str], code: int, watch: str = "full") -> str:
    """Run ``argv`` (with ``{name}`` replaced by the paths of ``places``) and check the promise;
    return the stderr line."""
    argv = [a.format(**places) for a in argv]
    watched = places[watch]
    before = tree_digest(watched) if watched.exists() else None
    capsys.readouterr()
    assert run(argv) == code, argv
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, (argv, out.err)
    assert "Traceback" not in out.err and "Traceback" not in out.out
    assert lines[0].startswith("dask-coded-als"), lines
    after = tree_digest(watched) if watched.exists() else None
    assert after == before, f"{argv} changed {watched}"
    return lines[0]


# ---- fit and evaluate share the model options ------------------------------------------------

#: (options, what the message says) for options whose values make no sense.
MODEL_NONSENSE = [
    (["--factors", "0"], "expected an integer >= 1"),
    (["--factors", "-2"], "expected an integer >= 1"),
    (["--factors", "abc"], "expected an integer"),
    (["--factors", "2.5"], "expected an integer"),
    (["--factors", "251"], "exceeds min(m, n) = 250"),
    (["--workers", "0"], "expected an integer >= 1"),
    (["--workers", "many"], "expected an integer"),
    (["--stragglers", "-1"], "expected an integer >= 0"),
    (["--stragglers", "8"], "--stragglers 8 must be smaller than --workers 8"),
    (["--stragglers", "3", "--workers", "2"], "must be smaller than --workers 2"),
    (["--h", "3"], "--h 3 needs 11 answering workers"),
    (["--h", "2", "--stragglers", "4"], "--h 2 needs 5 answering workers"),
    (["--h", "0"], "expected an integer >= 1"),
    (["--partition", "4,2"], "--partition 4,2 needs 9 answering workers"),
    (["--partition", "3"], "expected auto or P,R"),
    (["--partition", "0,2"], "expected an integer >= 1"),
    (["--partition", "2,2", "--h", "2"], "give h or partition, not both"),
    (["--mode", "fast"], "invalid choice"),
    (["--protocol", "slow"], "invalid choice"),
    (["--straggler-model", "slow"], "invalid choice"),
    (["--points", "square"], "invalid choice"),
    (["--weighting", "tfidf"], "invalid choice"),
    (["--straggler-delay", "-1"], "expected a finite number >= 0"),
    (["--straggler-delay", "nan"], "expected a finite number >= 0"),
    (["--straggler-delay", "soon"], "expected a number"),
    (["--iterations", "-1"], "expected an integer >= 0"),
    (["--iterations", "1e3"], "expected an integer"),
    (["--tol=-1e-3"], "expected a finite number >= 0"),
    (["--tol", "-1e-3"], "expected one argument"),  # read as an option
    (["--tol", "inf"], "expected a finite number >= 0"),
    (["--regularization", "-0.5"], "expected a finite number >= 0"),
    (["--regularization", "x"], "expected a number"),
    (["--seed", "-7"], "expected an integer >= 0"),
    (["--seed", "0x10"], "expected an integer"),
    (["--stage-timeout", "-1"], "expected a finite number >= 0"),
    (["--connect-timeout", "never"], "expected a number"),
    (["--scheduler", NOWHERE, "--scheduler-file", "s.json"], "not allowed with argument"),
    (["--bogus"], "unrecognized arguments"),
]


@pytest.mark.parametrize("command", ["fit", "evaluate"])
@pytest.mark.parametrize(
    "options,message", MODEL_NONSENSE, ids=[" ".join(o) for o, _ in MODEL_NONSENSE]
)
def test_model_options(places, capsys, command, options, message):
    refit = ["--refit"] if command == "evaluate" else []  # evaluate fits only when asked
    argv = [command, "{full}", "--factors", "3", *refit, *options]
    assert message in check(places, capsys, argv, INPUT)


EVALUATE_NONSENSE = [
    (["--test-fraction", "0"], "between 0 and 1"),
    (["--test-fraction", "1"], "between 0 and 1"),
    (["--test-fraction", "1.5"], "between 0 and 1"),
    (["--test-fraction", "-0.2"], "expected a finite number >= 0"),
    (["--test-fraction", "half"], "expected a number"),
    (["--relevant", "-1"], "expected a finite number >= 0"),
    (["--relevant", "nan"], "expected a finite number >= 0"),
    (["-k", "0"], "expected an integer >= 1"),
    (["-k", "ten"], "expected an integer"),
    (["--split", "sideways"], "invalid choice"),
]


@pytest.mark.parametrize(
    "options,message", EVALUATE_NONSENSE, ids=[" ".join(o) for o, _ in EVALUATE_NONSENSE]
)
def test_evaluate_options(places, capsys, options, message):
    argv = ["evaluate", "{full}", "--factors", "3", *options]
    assert message in check(places, capsys, argv, INPUT)


# ---- stores that are not stores ----------------------------------------------------------------

NOT_A_STORE = [
    ("missing", "no such store"),
    ("plain", "not a Zarr v3 store"),
    ("file", "not a store (a store is a directory)"),
    ("group", "not a ratings store"),
    ("other", "not a ratings store"),
]
COMMANDS = {
    "fit": ["--factors", "3"],
    "evaluate": ["--factors", "3"],
    "recommend": ["--user", "1"],
    "similar": ["--item", "1"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("place,message", NOT_A_STORE, ids=[p for p, _ in NOT_A_STORE])
def test_not_a_store(places, capsys, command, place, message):
    argv = [command, f"{{{place}}}", *COMMANDS[command]]
    line = check(places, capsys, argv, INPUT, watch=place if place != "missing" else "full")
    assert message in line
    assert not places["missing"].exists()


@pytest.mark.parametrize("command", ["recommend", "similar"])
def test_a_store_without_factors(places, capsys, command):
    argv = [command, "{fresh}", *COMMANDS[command]]
    assert "no factors stored" in check(places, capsys, argv, INPUT, watch="fresh")


# ---- recommend and similar ---------------------------------------------------------------------

LOOKUP_NONSENSE = [
    (["recommend", "{full}", "--user", "no-such-user"], ""),
    (["recommend", "{full}", "--user", "99999"], ""),
    (["recommend", "{full}"], "one of the arguments --user --ratings --all is required"),
    (["recommend", "{full}", "--user", "1", "--all"], "not allowed with argument"),
    (["recommend", "{full}", "--ratings", "{tmp}/none.csv"], "none.csv"),
    (["recommend", "{full}", "--user", "1", "--out", "{tmp}/r.csv"], "--out goes with --all"),
    (["recommend", "{full}", "--all", "--out", "{tmp}/r.txt"], "must end in .parquet or .csv"),
    (["recommend", "{full}", "--user", "1", "-n", "0"], "expected an integer >= 1"),
    (["recommend", "{full}", "--user", "1", "-n", "-3"], "expected an integer >= 1"),
    (["recommend", "{full}", "--user", "1", "-n", "all"], "expected an integer"),
    (["recommend", "{full}", "--user", "1", "--bogus"], "unrecognized arguments"),
    (["similar", "{full}", "--item", "no-such-item"], ""),
    (["similar", "{full}", "--item", "-5"], ""),
    (["similar", "{full}"], "one of the arguments --item --user is required"),
    (["similar", "{full}", "--item", "1", "-n", "0"], "expected an integer >= 1"),
    (["similar", "{full}", "--item", "1", "-n", "1.5"], "expected an integer"),
]


@pytest.mark.parametrize(
    "argv,message", LOOKUP_NONSENSE, ids=[" ".join(a[2:]) for a, _ in LOOKUP_NONSENSE]
)
def test_lookup_options(places, capsys, argv, message):
    assert message in check(places, capsys, argv, INPUT)


# ---- ingest ----------------------------------------------------------------------------------

INGEST_NONSENSE = [
    # (argv, watched place, message)
    (["ingest", "{tmp}/none.csv", "{tmp}/new.zarr"], "full", "none.csv"),
    (["ingest", str(SAMPLE / "ratings.csv"), "{full}"], "full", ""),  # exists, no --overwrite
    (["ingest", str(SAMPLE / "ratings.csv"), "{plain}", "--overwrite"], "plain", ""),
    (["ingest", str(SAMPLE / "ratings.csv"), "{file}", "--overwrite"], "file", ""),
    (["ingest", str(SAMPLE / "ratings.csv"), "{tmp}/new.zarr", "--format", "xls"], "full", "xls"),
    (
        ["ingest", str(SAMPLE / "ratings.csv"), "{tmp}/new.zarr", "--columns", "user,item"],
        "full",
        "",
    ),
    (
        ["ingest", str(SAMPLE / "ratings.csv"), "{tmp}/new.zarr", "--columns", "a,b,c,d"],
        "full",
        "",
    ),
    (
        ["ingest", str(SAMPLE / "ratings.csv"), "{tmp}/new.zarr", "--movies", "{tmp}/none.csv"],
        "full",
        "none.csv",
    ),
    (
        ["ingest", str(SAMPLE / "ratings.csv"), "{tmp}/new.zarr", "--movies", "{pem}"],
        "full",
        "",
    ),
    (["ingest", str(BAD / "duplicate-strict.csv"), "{tmp}/new.zarr", "--strict"], "full", ""),
    (["ingest", str(BAD / "binary-garbage.csv"), "{tmp}/new.zarr"], "full", ""),
    (["ingest", str(BAD / "empty.csv"), "{full}", "--overwrite"], "full", ""),
    (["ingest", str(SAMPLE / "ratings.csv")], "full", "required"),
    (["ingest", str(SAMPLE / "ratings.csv"), "{tmp}/new.zarr", "--bogus"], "full", "unrecognized"),
]


@pytest.mark.parametrize(
    "argv,watch,message", INGEST_NONSENSE, ids=[" ".join(a[2:]) for a, _, _ in INGEST_NONSENSE]
)
def test_ingest_options(places, capsys, argv, watch, message):
    assert message in check(places, capsys, argv, INPUT, watch=watch)
    assert not (places["tmp"] / "new.zarr").exists()


def test_unknown_subcommand_and_choice(places, capsys):
    assert "invalid choice: 'train'" in check(places, capsys, ["train", "{full}"], INPUT)
    line = check(places, capsys, ["fit", "{full}", "--factors", "3", "--mode", "??"], INPUT)
    assert "argument --mode: invalid choice" in line


# ---- the cluster -------------------------------------------------------------------------------

CLUSTER_NONSENSE = [
    (["--scheduler", NOWHERE, "--connect-timeout", "2"], CLUSTER, "cannot connect"),
    (["--scheduler-file", "{tmp}/none.json"], CLUSTER, "does not exist"),
    (["--scheduler-file", "{pem}"], CLUSTER, "holds no scheduler address"),
    (["--scheduler", "tls://127.0.0.1:1"], CLUSTER, "is a TLS scheduler"),
    (["--scheduler", "nonsense://x"], CLUSTER, "cannot connect"),
    (
        ["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "{tmp}/none.pem"]
        + ["--tls-cert", "{pem}"],
        CLUSTER,
        "does not exist",
    ),
    (
        ["--scheduler", "tls://127.0.0.1:1", "--tls-ca-file", "{pem}", "--tls-cert", "{pem}"],
        CLUSTER,
        "not a usable",
    ),
    (["--tls-ca-file", "{pem}", "--tls-cert", "{pem}"], INPUT, "need --scheduler"),
    (["--scheduler", NOWHERE, "--tls-cert", "{pem}"], INPUT, "need a tls:// scheduler"),
    (["--scheduler", "tls://127.0.0.1:1", "--tls-key", "{pem}"], INPUT, "TLS needs"),
]


@pytest.mark.parametrize(
    "options,code,message", CLUSTER_NONSENSE, ids=[" ".join(o) for o, _, _ in CLUSTER_NONSENSE]
)
def test_cluster_options_of_fit(places, capsys, options, code, message):
    argv = ["fit", "{full}", "--factors", "3", "--workers", "2", *options]
    line = check(places, capsys, argv, code)
    assert message in line
    if code == CLUSTER:
        assert line.startswith("dask-coded-als: cluster error:")


def test_a_scheduler_that_is_not_there_for_evaluate(places, capsys):
    argv = ["evaluate", "{full}", "--refit", "--factors", "3", "--scheduler", NOWHERE]
    line = check(places, capsys, [*argv, "--connect-timeout", "2"], CLUSTER)
    assert "cannot connect" in line


@pytest.mark.parametrize(
    "options",
    [["--factors", "251"], ["--factors", "3", "--resume"], ["--factors", "3", "--h", "3"]],
    ids=["factors", "resume", "h"],
)
def test_input_errors_leave_a_store_without_gram_unchanged(places, capsys, options):
    # the options are checked before fit computes (and stores) the Gram matrix
    check(places, capsys, ["fit", "{fresh}", *options], INPUT, watch="fresh")


def test_a_failed_connection_leaves_a_store_without_gram_unchanged(places, capsys):
    argv = ["fit", "{fresh}", "--factors", "3", "--scheduler", NOWHERE, "--connect-timeout", "1"]
    check(places, capsys, argv, CLUSTER, watch="fresh")


# ---- real processes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,code",
    [
        (["fit", "{full}", "--factors", "3", "--scheduler", NOWHERE, "--connect-timeout", "2"], 3),
        (["similar", "{group}", "--item", "1"], INPUT),
    ],
    ids=["scheduler", "layout"],
)
def test_real_processes(places, argv, code):
    argv = [a.format(**places) for a in argv]
    before = tree_digest(places["full"])
    proc = subprocess.run(
        [sys.executable, "-m", "dask_coded_als.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_digest(places["full"]) == before


# ---- help ------------------------------------------------------------------------------------

#: Options whose absence needs no words: nothing is used (TLS files, a scheduler file) or the
#: help says when they are needed.
ABSENT_MEANS_UNUSED = {"--tls-ca-file", "--tls-cert", "--tls-key", "--scheduler-file", "--factors"}


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


@pytest.mark.parametrize("command", sorted(subcommand_parsers()))
def test_every_option_has_help_and_shows_its_default(command, capsys):
    parser = subcommand_parsers()[command]
    text = " ".join(parser.format_help().split())
    # one option of a required group of alternatives is always given
    alternatives = {
        action
        for group in parser._mutually_exclusive_groups
        if group.required
        for action in group._group_actions
    }
    for action in parser._actions:
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help, f"{command} {name} has no help"
        if action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool):
            required = action.required or action in alternatives
            if action.default is None and action.option_strings and not required:
                assert name in ABSENT_MEANS_UNUSED or "default" in action.help, name
            continue
        if "default:" in action.help:
            continue  # said in words ("default: one per core")
        shown = f"(default: {action.default})"
        assert shown in text, f"{command} {name}: {shown} not in the help"
    # -h exits 0 with the help on stdout, from every subcommand
    argv = [command, "-h"] if command else ["-h"]
    assert run(argv) == 0
    assert capsys.readouterr().out.startswith("usage: dask-coded-als")


# ---- the library's words in flags, and next steps ---------------------------------------------


def test_library_parameters_become_flags(places, capsys):
    tmp = places["tmp"]
    (tmp / "one-field.txt").write_text("1 2 3\n")
    (tmp / "dup.csv").write_text("user,item,rating\n1,2,3\n1,2,4\n")
    (tmp / "names.csv").write_text("foo,bar,rating\n1,2,3\n")
    pq.write_table(pa.table({"a": [1], "b": [2], "c": [3.0]}), tmp / "r.parquet")
    new = "{tmp}/new.zarr"
    cases = [
        (["{tmp}/one-field.txt", new], "; pass --format or --sep"),
        (["{tmp}/one-field.txt", new, "--format", "ml-1m"], "is --format or --sep wrong?"),
        (["{tmp}/dup.csv", new, "--strict"], "(first at line 2); --strict forbids duplicates"),
        (["{tmp}/names.csv", new], "among foo, bar, rating; name it with --columns ROLE=NAME"),
        (
            ["{tmp}/dup.csv", new, "--format", "ml-100k", "--columns", "user,item,rating"],
            "--sep and --columns apply to --format csv or auto, not 'ml-100k'",
        ),
        (["{tmp}/r.parquet", new, "--sep", ","], "Parquet, not text: --format and --sep do not"),
    ]
    for argv, message in cases:
        assert message in check(places, capsys, ["ingest", *argv], INPUT)
        assert not (tmp / "new.zarr").exists()


def test_messages_name_the_next_step(places, capsys):
    line = check(places, capsys, ["recommend", "{fresh}", "--user", "1"], INPUT, watch="fresh")
    assert line.endswith(
        f"{places['fresh']}: no factors stored; run `dask-coded-als fit "
        f"{places['fresh']} --factors D`"
    )
    line = check(places, capsys, ["similar", "{missing}", "--item", "1"], INPUT)
    assert line.endswith(
        f"{places['missing']}: no such store; `dask-coded-als ingest RATINGS "
        f"{places['missing']}` creates one"
    )
    line = check(places, capsys, ["fit", "{fresh}", "--resume"], INPUT, watch="fresh")
    assert line.endswith("no checkpoint to resume from; run without --resume to start the fit")
