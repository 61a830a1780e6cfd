"""Shared fixtures: one LocalCluster of worker processes for the whole session."""

from __future__ import annotations

import logging

import pytest
from distributed import Client

from dask_coded_als.engine import local_cluster

N_WORKERS = 8


@pytest.fixture(scope="session")
def cluster_client():
    with local_cluster(N_WORKERS) as cluster, Client(cluster, timeout="60s") as client:
        client.wait_for_workers(N_WORKERS, timeout=60)
        yield client


@pytest.fixture
def client(cluster_client):
    """The shared client, with all workers back (a test may have killed some)."""
    cluster_client.wait_for_workers(N_WORKERS, timeout=60)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    return cluster_client
