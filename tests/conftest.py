"""Shared fixtures: one LocalCluster of worker processes for the whole session."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest
from distributed import Client

from dask_coded_als.engine import local_cluster

N_WORKERS = 8
ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, relative: str):
    """Import a script of the repository (not a package module) from its path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_campaign():
    """pipelines/fault_campaign.py, the harness of the fault campaigns."""
    return load_script("dask_coded_als_pipelines_fault_campaign", "pipelines/fault_campaign.py")


def load_generator():
    """datasets/generate.py is a script, not a package module: import it from its path."""
    name = "dask_coded_als_datasets_generate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "datasets" / "generate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def cluster_client():
    with local_cluster(N_WORKERS) as cluster, Client(cluster, timeout="60s") as client:
        client.wait_for_workers(N_WORKERS, timeout=60)
        yield client


@pytest.fixture
def client(cluster_client):
    """The shared client, with all workers back (a test may have killed some, and the
    LocalCluster may have given up on a nanny whose worker died twice in a row)."""
    load_campaign().heal(cluster_client, N_WORKERS, timeout=60)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    return cluster_client
