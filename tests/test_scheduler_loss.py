"""A ``dask scheduler`` killed in the middle of ``dask-coded-als fit``: the fit ends within the
connect timeout with the cluster exit code, the checkpointed iteration and the command that
resumes it; that command, on another cluster, ends with the factors of an uninterrupted fit."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from support import SAMPLE
from test_cluster import ROOT, dask_cluster

from dask_coded_als.cli import EXIT_CODES, main
from dask_coded_als.cli import fit as fit_cli
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest

#: Rounds of at least 0.3 s (one worker of two is held back, and uncoded waits for both), so
#: that the scheduler dies in the middle of the fit.
FIT = ["--factors", "4", "--workers", "2", "--iterations", "6", "--tol", "0", "--seed", "1"]
SLOW = ["--mode", "uncoded", "--straggler-model", "fixed", "--stragglers", "1"]
SLOW += ["--straggler-delay", "0.3"]
CONNECT_TIMEOUT = 5.0


def cli(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dask_coded_als.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_a_killed_scheduler_ends_the_fit_with_the_resume_command(tmp_path, client, capsys):
    store = tmp_path / "s.zarr"
    ingest(SAMPLE / "ratings.csv", store)
    reference = tmp_path / "reference.zarr"
    ingest(SAMPLE / "ratings.csv", reference)
    argv = ["fit", str(reference), *FIT, "--mode", "uncoded", "--json"]
    assert main([*argv, "--scheduler", client.scheduler.address]) == 0

    with dask_cluster(tmp_path, n_workers=2) as cluster:
        fit = cli(
            ["fit", str(store), *FIT, *SLOW, "--scheduler-file", str(cluster.scheduler_file)]
            + ["--connect-timeout", str(CONNECT_TIMEOUT)]
        )
        for line in fit.stderr:  # the progress lines: one per round
            if line.startswith("iteration   2"):
                break
        else:
            raise AssertionError(f"the fit ended early: {fit.communicate()}")
        killed = time.monotonic()
        os.kill(cluster.processes[0].pid, signal.SIGKILL)  # the scheduler
        _, err = fit.communicate(timeout=120)
        seconds = time.monotonic() - killed
    assert fit.returncode == EXIT_CODES["cluster"], err
    assert seconds < CONNECT_TIMEOUT + 5, seconds
    lines = [line for line in err.splitlines() if not line.startswith("iteration")]
    assert len(lines) == 1 and "Traceback" not in err, err
    message = lines[0]
    assert message.startswith("dask-coded-als: cluster error: lost the connection to the scheduler")
    saved = stores.read_checkpoint(store)[1]["iteration"]
    assert saved >= 2 and f"the checkpoint holds iteration {saved};" in message, message
    command = shlex.split(message.split("to continue from it run: ", 1)[1])
    assert command[:3] == ["dask-coded-als", "fit", str(store)] and command[-1] == "--resume"

    # The command as printed, on another cluster: the session's.
    at = command.index("--scheduler-file")
    command[at : at + 2] = ["--scheduler", client.scheduler.address]
    assert main(command[1:]) == 0
    assert f"resuming from the checkpoint at iteration {saved}" in capsys.readouterr().err
    U, V, _ = stores.read_factors(store)
    U0, V0, _ = stores.read_factors(reference)
    gap = np.linalg.norm(U @ V.T - U0 @ V0.T) / np.linalg.norm(U0 @ V0.T)
    assert gap < 1e-9, gap
    assert not (Path(store) / "checkpoint").exists()


def test_the_resume_command_is_the_command_as_typed():
    args = argparse.Namespace(argv=["-v", "fit", "my store.zarr", "--factors", "4"])
    hint = fit_cli._resume_hint(args, 3)
    assert hint == (
        "the checkpoint holds iteration 3; to continue from it run: "
        "dask-coded-als fit 'my store.zarr' --factors 4 --resume"
    )
    args.argv.append("--resume")  # a resumed fit cut short again
    assert fit_cli._resume_hint(args, 5).endswith("--factors 4 --resume")
