"""Acceptance on the bundled sample: the coded fit ranks as well as scipy's truncated SVD."""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as sla
from support import SAMPLE

from dask_coded_als import CodedALS
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest
from dask_coded_als.recsys.evaluation import evaluate_factors, train_test_split


def test_precision_matches_svds_factors(client, tmp_path):
    # Unregularized ALS on the zero-filled R converges to the top-d singular subspace, so its
    # ranking must match scipy's svds factors on the same split (same objective, same subspace).
    ingest(SAMPLE / "ratings.csv", tmp_path / "s.zarr")
    R = stores.ratings_matrix(stores.open_store(tmp_path / "s.zarr"))
    train, test = train_test_split(R, test_fraction=0.2, seed=0)
    d = 10
    model = CodedALS(d, n_workers=8, n_stragglers=2, max_iter=60, tol=1e-12, seed=0)
    model.fit(train, client=client)
    u, sigma, vt = sla.svds(train, k=d)
    oracle = evaluate_factors(u * np.sqrt(sigma), vt.T * np.sqrt(sigma), train, test, k=10)
    ours = evaluate_factors(model.user_factors_, model.item_factors_, train, test, k=10)
    assert abs(ours["precision@k"] - oracle["precision@k"]) <= 0.002
    assert abs(ours["ndcg@k"] - oracle["ndcg@k"]) <= 0.002
