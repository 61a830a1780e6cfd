"""Shared fixtures: one LocalCluster of worker processes for the whole session.

Tests that use it are marked ``cluster`` (and the default run runs them all); helpers shared by
several test files are in ``support``.
"""

from __future__ import annotations

import logging

import pytest
from distributed import Client
from support import N_WORKERS, load_campaign

from dask_coded_als.engine import local_cluster


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"client", "cluster_client"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


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
