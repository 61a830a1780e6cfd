"""The whole flow on a ratings file: ingest, hold out a split, fit on its training part, write the
factors with the split, recommend, evaluate against popularity. The ``demo`` subcommand runs it on
the bundled sample and ``pipelines/movielens.py`` on a MovieLens download."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from distributed import Client

from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import IngestReport, ingest
from dask_coded_als.recsys.evaluation import (
    evaluate_factors,
    evaluate_popularity,
    split_ratings,
    split_spec,
)

__all__ = ["FlowResult", "run_flow"]


@dataclass
class FlowResult:
    """What :func:`run_flow` did: the ingest report, the store, the split (as recorded with the
    factors) and its matrices, the fitted model, a few recommendations and the metrics."""

    ingest: IngestReport
    store: stores.RatingsStore
    split: dict[str, Any]
    train: Any
    test: Any
    model: Any
    recommendations: list[dict]
    metrics: dict[str, dict]


def run_flow(
    ratings: str | os.PathLike,
    store_path: str | os.PathLike,
    model: Any,
    client: Client | None = None,
    movies: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    k: int = 10,
    n_recommendations: int = 5,
) -> FlowResult:
    """Ingest ``ratings`` into ``store_path`` (replacing it), fit ``model`` (a
    :class:`~dask_coded_als.CodedALS`) on the training part of a random per-user split, store
    the factors with the split (so that ``evaluate`` scores them on the same test ratings),
    recommend ``n_recommendations`` items to the first user and evaluate at ``k``."""
    report = ingest(ratings, store_path, movies=movies, overwrite=True)
    store = stores.open_store(store_path)
    spec = split_spec("random", test_fraction, seed)
    train, test = split_ratings(stores.ratings_matrix(store), spec)
    model.fit(
        train,
        client=client,
        user_ids=store.user_ids,
        item_ids=store.item_ids,
        titles=store.titles,
    )
    model.save(store, {"split": spec})
    rows = model.recommend(store.user_ids[0], n=n_recommendations)
    metrics = {
        "model": evaluate_factors(model.user_factors_, model.item_factors_, train, test, k=k),
        "popularity": evaluate_popularity(train, test, k=k),
    }
    return FlowResult(report, store, spec, train, test, model, rows, metrics)
