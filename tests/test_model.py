"""The fitted model: weighting, parameters, fold-in, recommendations by id, batch, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from support import low_rank

from dask_coded_als import CodedALS
from dask_coded_als._util import jsonable
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest_matrix
from dask_coded_als.engine.estimator import default_n_factors
from dask_coded_als.errors import InputError
from dask_coded_als.recsys.batch import recommend_all, recommendations_table, write_table
from dask_coded_als.recsys.recommend import recommend
from dask_coded_als.recsys.topk import top_k
from dask_coded_als.recsys.weighting import fit_weighting

M, N, D = 90, 40, 5


def ratings(m: int = M, n: int = N, seed: int = 0) -> sp.csr_matrix:
    """Stars 1-5 on a random 30% of the pairs, plus one explicit 0 rating."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((m, n)) < 0.3, rng.integers(1, 6, (m, n)), 0).astype(float)
    rows, cols = np.nonzero(dense)
    zero = int(np.flatnonzero(dense[0] == 0)[0])  # stored, rated 0: seen, weighs 0
    rows, cols = np.append(rows, 0), np.append(cols, zero)
    return sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=(m, n))


def bm25_reference(dense_stored: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """BM25 written out on dense arrays: users are documents, items terms (k1 = 100, b = 0.8)."""
    m = dense_stored.shape[0]
    idf = np.log(m) - np.log(1.0 + stored.sum(axis=0))
    lengths = dense_stored.sum(axis=1)
    norm = 0.2 + 0.8 * lengths / lengths.mean()
    weights = dense_stored * 101.0 / (100.0 * norm[:, None] + dense_stored) * idf[None, :]
    return np.where(stored, weights, 0.0)


USER_IDS = np.array([f"user-{i:03d}" for i in np.random.default_rng(1).permutation(M)])
TITLES = [f"film {j}" for j in range(N)]


# -- weighting -------------------------------------------------------------------------------


def test_weightings_against_dense_numpy():
    R = ratings()
    dense, stored = R.toarray(), np.zeros((M, N), dtype=bool)
    stored[R.nonzero()] = True
    stored[0, R[0].indices] = True  # the explicit 0 is stored too
    assert fit_weighting("none", R).apply(R) is R
    np.testing.assert_array_equal(fit_weighting("binary", R).apply(R).toarray(), stored * 1.0)
    np.testing.assert_allclose(
        fit_weighting("bm25", R).apply(R).toarray(), bm25_reference(dense, stored), rtol=1e-13
    )
    assert fit_weighting("binary", R).apply(R).nnz == R.nnz  # the 0 rating counts as seen


def test_bm25_weighs_new_users_with_the_training_statistics():
    R = ratings()
    weighting = fit_weighting("bm25", R)
    row = sp.csr_matrix(([4.0, 2.0], [3, 7], [0, 2]), shape=(1, N))
    lengths = np.asarray(R.sum(axis=1)).ravel()
    norm = 0.2 + 0.8 * 6.0 / lengths.mean()
    idf = np.log(M) - np.log1p(np.bincount(R.indices, minlength=N))
    expected = np.array([4.0, 2.0]) * 101.0 / (100.0 * norm + np.array([4.0, 2.0])) * idf[[3, 7]]
    np.testing.assert_allclose(weighting.apply(row).data, expected, rtol=1e-13)


@pytest.mark.parametrize(
    ("name", "R", "match"),
    [
        ("tf-idf", np.ones((3, 2)), "weighting must be one of"),
        ("bm25", -np.ones((3, 2)), "weighting='bm25' needs ratings >= 0"),
        ("bm25", sp.csr_matrix((3, 2)), "do not all sum to 0"),
    ],
)
def test_weighting_errors(name, R, match):
    with pytest.raises(InputError, match=match):
        fit_weighting(name, R)


# -- parameters --------------------------------------------------------------------------------


def test_get_params_set_params_round_trip():
    model = CodedALS(n_factors=7, weighting="bm25", partition=(3, 1), regularization=0.5)
    params = model.get_params()
    assert params["n_factors"] == 7 and params["weighting"] == "bm25"
    assert params["partition"] == (3, 1)
    twin = CodedALS().set_params(**params)
    assert twin.get_params() == params
    assert CodedALS(**params).get_params() == params
    assert twin.set_params(n_workers=3) is twin and twin.n_workers == 3
    with pytest.raises(InputError, match="no parameter 'factors'"):
        twin.set_params(factors=3)


def test_sklearn_clone():
    from sklearn.base import clone  # a test dependency only: the package does not need it

    model = CodedALS(n_factors=3, weighting="binary", seed=4)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()


def test_default_n_factors():
    assert default_n_factors(300, 250) == 16
    assert default_n_factors(1, 10) == 1
    assert default_n_factors(10**6, 10**5) == 150
    with pytest.raises(InputError, match="weighting must be one of"):
        CodedALS(weighting="tfidf")._settings((10, 10))


def same(records: list[dict], expected: list[dict]) -> None:
    """The same ids (and titles) in the same order, the same scores up to rounding."""
    assert [{k: v for k, v in r.items() if k != "score"} for r in records] == [
        {k: v for k, v in r.items() if k != "score"} for r in expected
    ]
    np.testing.assert_allclose([r["score"] for r in records], [r["score"] for r in expected])


# -- a fitted model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(cluster_client):
    """bm25-weighted fit of a tall R (m >= n: the engine's B is V) with string ids and titles."""
    model = CodedALS(
        n_factors=D, n_workers=7, n_stragglers=1, weighting="bm25", max_iter=15, seed=0
    )
    return model.fit(ratings(), client=cluster_client, user_ids=USER_IDS, titles=TITLES)


def test_fit_is_the_fit_of_the_weighted_matrix(fitted, client):
    """The weighting happens before anything else: the same fit on bm25(R) weighted by hand
    (a dense numpy reference) gives the same factors."""
    R = ratings()
    stored = np.zeros((M, N), dtype=bool)
    stored[R.nonzero()] = True
    stored[0, R[0].indices] = True
    by_hand = bm25_reference(R.toarray(), stored)
    params = fitted.get_params() | {"weighting": "none"}
    reference = CodedALS(**params).fit(by_hand, client=client)
    np.testing.assert_allclose(fitted.item_factors_, reference.item_factors_, atol=1e-9)
    np.testing.assert_allclose(fitted.user_factors_, reference.user_factors_, atol=1e-9)
    assert fitted.n_factors_ == D and fitted.n_factors == D
    assert fitted.ratings_.nnz == R.nnz  # the seen items: R as given


def test_fold_in_gives_back_a_training_users_vector(fitted):
    R = ratings()
    scale = np.abs(fitted.user_factors_).max()
    for row in (0, 17, 89):
        items = R[row].indices
        given = {int(j): float(R[row, j]) for j in items}
        u = fitted.fold_in(given)
        np.testing.assert_allclose(u, fitted.user_factors_[row], atol=1e-10 * scale)
    user = USER_IDS[17]
    given = {int(j): float(R[17, j]) for j in R[17].indices}
    by_fold_in = fitted.recommend_for_ratings(given, n=6)
    by_id = fitted.recommend(user, n=6)
    assert [r["item_id"] for r in by_fold_in] == [r["item_id"] for r in by_id]
    np.testing.assert_allclose([r["score"] for r in by_fold_in], [r["score"] for r in by_id])


def test_fold_in_of_a_wide_fit_is_the_least_squares_fit(client):
    """m < n (the engine's B is U): the fold-in is r's least-squares fit to V (numpy's lstsq),
    which at convergence is the user's row of U."""
    R = low_rank(30, 70, rank=4, noise=1e-2, seed=3)
    model = CodedALS(n_factors=4, n_workers=7, max_iter=100, tol=1e-12, seed=0)
    model.fit(R, client=client)
    assert model.converged_
    for row in (2, 11):
        u = model.fold_in(dict(enumerate(R[row])))
        lstsq = np.linalg.lstsq(model.item_factors_, R[row], rcond=None)[0]
        np.testing.assert_allclose(u, lstsq, rtol=1e-10)
        np.testing.assert_allclose(u, model.user_factors_[row], rtol=1e-6)


def test_recommend_by_id_matches_the_reference_function(fitted):
    R = ratings()
    for row in (0, 5, 60):
        records = fitted.recommend(USER_IDS[row], n=8)
        items, scores = recommend(fitted.user_factors_, fitted.item_factors_, R, row, n=8)
        assert [r["item_id"] for r in records] == items.tolist()
        np.testing.assert_allclose([r["score"] for r in records], scores, rtol=1e-12)
        assert [r["title"] for r in records] == [TITLES[j] for j in items]
    many = fitted.recommend(list(USER_IDS[[5, 0]]), n=8)
    assert len(many) == 2
    same(many[0], fitted.recommend(USER_IDS[5], n=8))
    same(many[1], fitted.recommend(USER_IDS[0], n=8))
    everything = fitted.recommend(USER_IDS[0], n=N, exclude_seen=False)
    assert len(everything) == N
    assert len(fitted.recommend(USER_IDS[0], n=N)) == N - R[0].nnz
    with pytest.raises(InputError, match="^unknown user id nobody$"):
        fitted.recommend("nobody")
    with pytest.raises(InputError, match="unknown item id 999"):
        fitted.recommend_for_ratings({999: 5.0})
    with pytest.raises(InputError, match="n must be an integer >= 1"):
        fitted.recommend(USER_IDS[0], n=0)


def test_similar_items_and_users_by_cosine(fitted):
    for factors, kind, method, ids in (
        (fitted.item_factors_, "item", fitted.similar_items, np.arange(N)),
        (fitted.user_factors_, "user", fitted.similar_users, USER_IDS),
    ):
        unit = factors / np.linalg.norm(factors, axis=1, keepdims=True)
        cosine = unit @ unit[3]
        cosine[3] = -np.inf
        expected = np.argsort(-cosine, kind="stable")[:4]
        records = method(ids[3], n=4)
        assert [r[f"{kind}_id"] for r in records] == ids[expected].tolist()
        np.testing.assert_allclose([r["score"] for r in records], cosine[expected])


def test_batch_equals_per_user_recommend(fitted, client):
    R = ratings()
    items, scores = recommend_all(
        fitted.user_factors_, fitted.item_factors_, R, n=N, client=client, block_rows=16
    )
    assert items.shape == scores.shape == (M, N)
    for row in range(M):
        expected, expected_scores = recommend(
            fitted.user_factors_, fitted.item_factors_, R, row, n=N
        )
        left = len(expected)
        assert items[row, :left].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[row, :left], expected_scores, rtol=1e-12)
        assert (items[row, left:] == -1).all() and np.isnan(scores[row, left:]).all()
    local = recommend_all(fitted.user_factors_, fitted.item_factors_, R, n=3, block_rows=7)
    np.testing.assert_array_equal(local[0], items[:, :3])
    table = fitted.recommend_all(n=3, client=client)
    assert table.num_rows == 3 * M
    first = table.slice(0, 3).to_pylist()
    expected = fitted.recommend(USER_IDS[0], n=3)
    assert [(r["user_id"], r["item_id"], r["title"]) for r in first] == [
        (USER_IDS[0], e["item_id"], e["title"]) for e in expected
    ]


def test_recommendations_table_and_files(tmp_path):
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    items = np.array([[2, 0], [1, -1]])
    scores = np.array([[0.9, 0.5], [0.7, np.nan]])
    table = recommendations_table(items, scores, np.array(["b", "a"]), np.array([5, 6, 7]))
    rows = [(r["user_id"], r["rank"], r["item_id"], r["score"]) for r in table.to_pylist()]
    assert rows == [("b", 1, 7, 0.9), ("b", 2, 5, 0.5), ("a", 1, 6, 0.7)]
    write_table(table, tmp_path / "r.parquet")
    write_table(table, tmp_path / "r.csv")
    assert pq.read_table(tmp_path / "r.parquet").to_pylist() == table.to_pylist()
    assert pa_csv.read_csv(tmp_path / "r.csv").column("user_id").to_pylist() == ["b", "b", "a"]
    with pytest.raises(InputError, match="must end in .parquet or .csv"):
        write_table(table, tmp_path / "r.txt")


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / "model.zarr"
    fitted.save(path)  # no store there: one is made from the training ratings
    loaded = CodedALS.load(path)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.history_ == jsonable(fitted.history_)
    assert loaded.weighting_.name == "bm25"
    # the store orders users by id; the model is the same by id
    assert loaded.user_ids_.tolist() == sorted(USER_IDS.tolist())
    for user in USER_IDS[[0, 44]]:
        same(loaded.recommend(user, n=5), fitted.recommend(user, n=5))
        same(loaded.similar_users(user, n=3), fitted.similar_users(user, n=3))
    given = {3: 5.0, 8: 1.0, 20: 4.0}
    np.testing.assert_allclose(loaded.fold_in(given), fitted.fold_in(given), rtol=1e-14)
    same(loaded.similar_items(4, n=3), fitted.similar_items(4, n=3))
    # saving again into that store: same factors, in the store's order
    loaded.save(path)
    U, V, attrs = stores.read_factors(path)
    np.testing.assert_array_equal(U, loaded.user_factors_)
    assert attrs["estimator"]["parameters"]["weighting"] == "bm25"


def test_save_refuses_a_store_of_other_users(fitted, tmp_path):
    other = tmp_path / "other.zarr"
    ingest_matrix(ratings(), other)  # ids 0..89, not the model's
    with pytest.raises(InputError, match="the store's users are not the model's"):
        fitted.save(other)
    with pytest.raises(InputError, match="not fitted yet"):
        CodedALS().recommend(0)


def test_load_factors_written_without_a_model(tmp_path):
    """Factors written by an older fit (no parameters, no weighting) load with the defaults."""
    R = ratings()
    path = tmp_path / "plain.zarr"
    ingest_matrix(R, path)
    rng = np.random.default_rng(2)
    U, V = rng.standard_normal((M, 3)), rng.standard_normal((N, 3))
    stores.write_factors(path, U, V, {"parameters": {"regularization": 0.25, "factors": 3}})
    model = CodedALS.load(path)
    assert model.regularization == 0.25 and model.weighting_.name == "none"
    given = {1: 4.0, 2: 3.0}
    r = np.zeros(N)
    r[[1, 2]] = [4.0, 3.0]
    expected = np.linalg.solve(V.T @ V + 0.25 * np.eye(3), V.T @ r)
    np.testing.assert_allclose(model.fold_in(given), expected, rtol=1e-12)


def test_top_k_against_a_sort():
    """The partition-based top-k equals a full stable sort, ties and -inf included."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        rows, cols = rng.integers(1, 6), rng.integers(1, 25)
        scores = rng.integers(0, 4, (rows, cols)).astype(float)
        scores[rng.random((rows, cols)) < 0.2] = -np.inf
        full = np.argsort(-scores, axis=1, kind="stable")
        for k in range(1, cols + 2):
            np.testing.assert_array_equal(top_k(scores, k), full[:, :k])


def test_ingest_matrix_keeps_every_row_and_column_in_id_order(tmp_path):
    R = ratings().tolil()
    R[5, :] = 0  # a user without ratings stays a user
    R = R.tocsr()
    R.eliminate_zeros()
    users = np.array([f"u{i}" for i in range(M)])[::-1].copy()
    items = np.arange(N)[::-1] * 10
    ingest_matrix(R, tmp_path / "m.zarr", user_ids=users, item_ids=items, titles=TITLES)
    st = stores.open_store(tmp_path / "m.zarr")
    assert st.user_ids.tolist() == sorted(users.tolist())
    assert st.item_ids.tolist() == sorted(items.tolist())
    by_user, by_item = np.argsort(users), np.argsort(items)
    np.testing.assert_array_equal(
        stores.ratings_matrix(st).toarray(), R.toarray()[by_user][:, by_item]
    )
    assert st.titles.tolist() == [TITLES[j] for j in by_item]
    with pytest.raises(InputError, match="user_ids are not unique"):
        ingest_matrix(R, tmp_path / "d.zarr", user_ids=np.zeros(M, dtype=int))
    with pytest.raises(InputError, match="store exists"):
        ingest_matrix(R, tmp_path / "m.zarr")


def test_fit_of_a_dataframe_is_the_fit_of_its_matrix(client):
    """A DataFrame of (user, item, rating) rows, shuffled, with string user ids: the same
    factors as the matrix it describes, rows and columns in sorted id order."""
    import pandas as pd

    R = ratings(40, 25, seed=3).tocoo()
    users = np.array([f"u{i:02d}" for i in range(40)])
    df = pd.DataFrame({"userId": users[R.row], "movieId": R.col + 100, "rating": R.data})
    df = df.sample(frac=1.0, random_state=0)
    params = {"n_factors": 3, "n_workers": 7, "n_stragglers": 1, "max_iter": 5, "seed": 0}
    from_frame = CodedALS(**params).fit(df, client=client)
    reference = CodedALS(**params).fit(R.tocsr(), client=client)
    assert from_frame.user_ids_.tolist() == users.tolist()
    assert from_frame.item_ids_.tolist() == list(range(100, 125))
    np.testing.assert_allclose(from_frame.item_factors_, reference.item_factors_, atol=1e-9)
    np.testing.assert_allclose(from_frame.user_factors_, reference.user_factors_, atol=1e-9)
    assert from_frame.recommend("u05", n=3)[0]["item_id"] in range(100, 125)
    with pytest.raises(InputError, match="a DataFrame carries its own ids"):
        CodedALS(**params).fit(df, client=client, user_ids=users)
