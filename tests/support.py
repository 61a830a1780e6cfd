"""What the tests share (imported as ``support``): the size of the session's cluster, the
repository's scripts, small data and the distance between two fits."""

from __future__ import annotations

import importlib.util
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: Workers of the LocalCluster shared by the session (the ``client`` fixture).
N_WORKERS = 8
ROOT = Path(__file__).resolve().parents[1]
#: The bundled sample (package data).
SAMPLE = Path(str(resources.files("dask_coded_als.data") / "sample"))


def load_script(name: str, relative: str) -> Any:
    """Import a script of the repository (not a package module) from its path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_campaign() -> Any:
    """pipelines/fault_campaign.py, the harness of the fault campaigns."""
    return load_script("dask_coded_als_pipelines_fault_campaign", "pipelines/fault_campaign.py")


def load_generator() -> Any:
    """datasets/generate.py, the generator of MovieLens-style ratings."""
    return load_script("dask_coded_als_datasets_generate", "datasets/generate.py")


def low_rank(m: int, n: int, rank: int = 4, noise: float = 1e-2, seed: int = 0) -> np.ndarray:
    """A rank-``rank`` m x n matrix plus Gaussian noise of standard deviation ``noise``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) + noise * (
        rng.standard_normal((m, n))
    )


def product_gap(model: Any, reference: Any) -> float:
    """Relative distance of the fitted model's U V^T from the reference fit's."""
    P = model.user_factors_ @ model.item_factors_.T
    Q = reference.user_factors @ reference.item_factors.T
    return float(np.linalg.norm(P - Q) / np.linalg.norm(Q))
