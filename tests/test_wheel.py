"""The package as users get it: a wheel installed into a fresh virtual environment runs the demo
from outside the source tree (the bundled sample is package data)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

pytestmark = pytest.mark.slow


def run(argv: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_wheel_in_a_fresh_venv_runs_the_demo(tmp_path):
    dist = tmp_path / "dist"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, ROOT], tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("dask_coded_als-*.whl")

    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", venv], tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # The dependencies come from this environment (installing them again would take minutes);
    # a path in a .pth file adds that directory without running its own .pth files, so an
    # editable install of this project there stays inactive.
    purelib = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
    )
    deps = [p for p in (*site.getsitepackages(), site.getusersitepackages()) if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "_dependencies.pth").write_text("\n".join(deps) + "\n")
    installed = run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]

    where = run([python, "-c", "import dask_coded_als; print(dask_coded_als.__file__)"], tmp_path)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    out = tmp_path / "demo"
    demo = run(
        [
            venv / "bin" / "dask-coded-als",
            "demo",
            "--iterations",
            "3",
            "--straggler-delay",
            "0.1",
            "--out",
            out,
        ],
        tmp_path,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "the model beats popularity" in demo.stdout
    assert (out / "sample.zarr" / "factors").is_dir()
