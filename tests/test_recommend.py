"""Recommendations and neighbours from factors, and the recommend and similar commands."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds
from support import SAMPLE

from dask_coded_als.cli import main
from dask_coded_als.data import store as stores
from dask_coded_als.data.ingest import ingest
from dask_coded_als.errors import InputError
from dask_coded_als.recsys.recommend import recommend, recommend_by_id, similar_by_id, similar_items

# Planted blocks: users 0-9 rate items 0-7, users 10-19 rate items 8-19 (different sizes, so the
# two singular values differ). User 0 has not rated item 3, which the block says they would like.
GROUPS = [(range(0, 10), range(0, 8)), (range(10, 20), range(8, 20))]
HELD_OUT_USER, HELD_OUT_ITEM = 0, 3


def _planted() -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    dense = np.zeros((20, 20))
    for users, items in GROUPS:
        dense[np.ix_(list(users), list(items))] = 5.0
    dense[HELD_OUT_USER, HELD_OUT_ITEM] = 0.0
    ratings = sp.csr_matrix(dense)
    u, s, vt = svds(ratings, k=2)
    root = np.sqrt(s)
    return ratings, u * root, vt.T * root


def test_known_answer_held_out_item_first():
    ratings, user_factors, item_factors = _planted()
    items, scores = recommend(user_factors, item_factors, ratings, HELD_OUT_USER, n=5)
    assert items[0] == HELD_OUT_ITEM
    assert scores[0] > 1.0  # the other candidates (the second block) score about 0
    assert np.all(np.diff(scores) <= 0)


def test_rated_items_excluded_and_count():
    ratings, user_factors, item_factors = _planted()
    for user in (1, 15):
        items, _ = recommend(user_factors, item_factors, ratings, user, n=20)
        rated = set(ratings[user].indices.tolist())
        assert not rated & set(items.tolist())
        assert len(items) == 20 - len(rated)  # n above the candidates: all of them


def test_include_rated_and_exact_scores():
    ratings, user_factors, item_factors = _planted()
    items, scores = recommend(user_factors, item_factors, None, 12, n=3, exclude_rated=False)
    np.testing.assert_allclose(scores, (user_factors[12] @ item_factors.T)[items])
    assert set(items.tolist()) <= set(range(8, 20))


def test_ties_broken_by_index():
    user_factors = np.array([[1.0]])
    item_factors = np.array([[1.0], [2.0], [1.0], [2.0], [1.0], [0.0]])
    ratings = sp.csr_matrix((1, 6))
    items, scores = recommend(user_factors, item_factors, ratings, 0, n=3)
    assert items.tolist() == [1, 3, 0]
    assert scores.tolist() == [2.0, 2.0, 1.0]
    assert items.dtype == np.int64


def test_accepts_csr_array_and_coo():
    ratings, user_factors, item_factors = _planted()
    expected = recommend(user_factors, item_factors, ratings, 0, n=4)[0]
    for other in (sp.csr_array(ratings), ratings.tocoo()):
        np.testing.assert_array_equal(
            recommend(user_factors, item_factors, other, 0, 4)[0], expected
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be an integer >= 1"),
        ({"n": 2.5}, "n must be an integer"),
        ({"n": True}, "n must be an integer"),
        ({"user_index": 20}, "out of range"),
        ({"user_index": -1}, "user_index must be an integer >= 0"),
        ({"ratings_csr": np.zeros((20, 20))}, "scipy.sparse"),
        ({"ratings_csr": sp.csr_matrix((20, 19))}, "shape"),
        ({"ratings_csr": None}, "required"),
    ],
)
def test_bad_input(kwargs, match):
    ratings, user_factors, item_factors = _planted()
    args = {"ratings_csr": ratings, "user_index": 0, "n": 3} | kwargs
    with pytest.raises(InputError, match=match):
        recommend(user_factors, item_factors, **args)


def test_bad_factors():
    with pytest.raises(InputError, match="ranks differ"):
        recommend(np.ones((2, 3)), np.ones((4, 2)), sp.csr_matrix((2, 4)), 0)
    with pytest.raises(InputError, match="NaN"):
        recommend(np.full((2, 2), np.nan), np.ones((4, 2)), sp.csr_matrix((2, 4)), 0)
    with pytest.raises(InputError, match="2-D"):
        similar_items(np.ones(4), 0)


def test_recommend_by_id_int_ids_from_strings_and_titles():
    ratings, user_factors, item_factors = _planted()
    user_ids = np.arange(100, 120, dtype=np.int64)
    item_ids = np.arange(500, 520, dtype=np.int64)
    titles = [f"film {i}" for i in range(20)]
    for key in (100, "100", np.int32(100)):
        records = recommend_by_id(
            user_ids, item_ids, user_factors, item_factors, ratings, key, n=2, titles=titles
        )
        assert records[0] == {
            "item_id": 503,
            "score": pytest.approx(records[0]["score"]),
            "title": "film 3",
        }
        assert type(records[0]["item_id"]) is int
        assert type(records[0]["score"]) is float
    mapping = {503: "the held-out film"}
    records = recommend_by_id(
        user_ids, item_ids, user_factors, item_factors, ratings, 100, n=2, titles=mapping
    )
    assert [r["title"] for r in records] == ["the held-out film", None]


def test_recommend_by_id_string_ids_and_unknown():
    ratings, user_factors, item_factors = _planted()
    user_ids = np.array([f"u{i}" for i in range(20)])
    item_ids = np.array([f"i{i}" for i in range(20)], dtype=object)
    records = recommend_by_id(user_ids, item_ids, user_factors, item_factors, ratings, "u0", n=1)
    assert records == [{"item_id": "i3", "score": records[0]["score"], "title": None}]
    with pytest.raises(InputError, match="^unknown user id u99$"):
        recommend_by_id(user_ids, item_ids, user_factors, item_factors, ratings, "u99")
    int_ids = np.arange(20)
    for bad in ("abc", 20, "20", 1.5):
        with pytest.raises(InputError, match=f"^unknown user id {bad}$"):
            recommend_by_id(int_ids, int_ids, user_factors, item_factors, ratings, bad)
    with pytest.raises(InputError, match="user ids have shape"):
        recommend_by_id(int_ids[:5], int_ids, user_factors, item_factors, ratings, 0)
    with pytest.raises(InputError, match="titles has 3 entries"):
        recommend_by_id(int_ids, int_ids, user_factors, item_factors, ratings, 0, titles="abc")


def test_similar_items_cosine_not_dot():
    item_factors = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.9, 0.1, 0.0],  # the planted neighbour of item 0 (cosine 0.994)
            [0.0, 1.0, 0.0],
            [-1.0, 0.0, 0.0],
            [10.0, 5.0, 0.0],  # larger dot product with item 0, smaller cosine (0.894)
            [0.0, 0.0, 0.0],  # zero row: similarity 0
        ]
    )
    indices, scores = similar_items(item_factors, 0, n=10)
    assert indices.tolist() == [1, 4, 2, 5, 3]  # itself excluded; n above candidates: all
    np.testing.assert_allclose(scores, [0.9 / np.sqrt(0.82), 10 / np.sqrt(125), 0, 0, -1])
    assert similar_items(item_factors, 5, n=2)[0].tolist() == [0, 1]  # all tie at 0


def test_similar_items_planted_blocks():
    _, _, item_factors = _planted()
    indices, scores = similar_items(item_factors, 10, n=11)
    assert set(indices.tolist()) == set(range(8, 20)) - {10}
    np.testing.assert_allclose(scores, 1.0)


def test_similar_by_id_and_errors():
    item_factors = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.1]])
    records = similar_by_id([7, 8, 9], item_factors, "7", n=1, titles={9: "nine"})
    assert records == [{"item_id": 9, "score": pytest.approx(2 / np.sqrt(4.01)), "title": "nine"}]
    with pytest.raises(InputError, match="^unknown item id 6$"):
        similar_by_id([7, 8, 9], item_factors, 6)
    with pytest.raises(InputError, match="n must be an integer >= 1"):
        similar_items(item_factors, 0, n=0)
    with pytest.raises(InputError, match="out of range"):
        similar_items(item_factors, 3)


# -- the command line: fit --weighting, recommend --ratings / --all, similar --user ----------------


@pytest.fixture(scope="module")
def fitted_store(tmp_path_factory, cluster_client):
    """The sample, fitted by the command line with bm25 and the default n_factors."""
    path = tmp_path_factory.mktemp("recommend") / "sample.zarr"
    ingest(SAMPLE / "ratings.csv", path, movies=SAMPLE / "movies.csv")
    argv = ["fit", str(path), "--weighting", "bm25", "--iterations", "4", "--json"]
    assert main([*argv, "--scheduler", cluster_client.scheduler.address]) == 0
    return path


def test_fit_uses_the_gram_matrix_of_its_weighting(fitted_store, client, tmp_path, capsys):
    R = stores.ratings_matrix(fitted_store)
    assert stores.gram_weighting(fitted_store) == "bm25"
    with pytest.raises(InputError, match="weighting='bm25', not 'none'"):
        stores.gram_array(fitted_store)
    _, _, attrs = stores.read_factors(fitted_store)
    assert attrs["estimator"]["parameters"]["weighting"] == "bm25"
    assert stores.read_factors(fitted_store)[0].shape[1] == 16  # the default d for 250 items
    # a fit with another weighting replaces D by that of its own R (numpy reference)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(fitted_store, copy)
    argv = ["fit", str(copy), "--weighting", "binary", "--factors", "3", "--iterations", "1"]
    assert main([*argv, "--json", "--scheduler", client.scheduler.address]) == 0
    capsys.readouterr()
    D, transposed = stores.gram_array(copy, "binary")
    ones = sp.csr_matrix((np.ones(R.nnz), R.indices, R.indptr), shape=R.shape)
    assert not transposed
    np.testing.assert_allclose(D[...], (ones.T @ ones).toarray(), rtol=1e-12)


def cli_rows(argv: list[str], capsys) -> list[dict]:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ratings_file_folds_in_a_new_user(fitted_store, tmp_path, capsys):
    """A new user who rated what a training user rated gets that user's recommendations (the
    sample has more users than items, so fold-in gives back a training user's vector)."""
    st = stores.open_store(fitted_store)
    R = stores.ratings_matrix(st)
    row = 7
    lines = ["movieId,rating"] + [
        f"{st.item_ids[j]},{R[row, j]:g}" for j in R[row].indices.tolist()
    ]
    (tmp_path / "new.csv").write_text("\n".join(lines) + "\n")
    new = cli_rows(["recommend", str(fitted_store), "--ratings", str(tmp_path / "new.csv")], capsys)
    known = cli_rows(["recommend", str(fitted_store), "--user", str(st.user_ids[row])], capsys)
    assert [r["item_id"] for r in new] == [r["item_id"] for r in known]
    np.testing.assert_allclose([r["score"] for r in new], [r["score"] for r in known], rtol=1e-9)
    rated = set(st.item_ids[R[row].indices].tolist())
    assert not rated & {r["item_id"] for r in new}
    assert all(r["title"] for r in new)
    (tmp_path / "bad.csv").write_text("movieId,rating\n999999,5\n")
    assert main(["recommend", str(fitted_store), "--ratings", str(tmp_path / "bad.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith("unknown item id 999999")


def test_recommend_all_equals_one_user_at_a_time(fitted_store, client, tmp_path, capsys):
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    st = stores.open_store(fitted_store)
    cluster = ["--scheduler", client.scheduler.address]
    base = ["recommend", str(fitted_store), "--all", "--n", "7", *cluster]
    assert main([*base, "--out", str(tmp_path / "recs.parquet")]) == 0
    assert main([*base, "--out", str(tmp_path / "recs.csv")]) == 0
    assert main(base) == 0
    table = pq.read_table(tmp_path / "recs.parquet").to_pylist()
    assert len(table) == 7 * st.n_users
    assert pa_csv.read_csv(tmp_path / "recs.csv").to_pylist() == table
    items, scores, attrs = stores.read_recommendations(st)
    assert items.shape == (st.n_users, 7) and attrs == {"n": 7, "exclude_seen": True}
    by_user: dict = {}
    for row in table:
        by_user.setdefault(row["user_id"], []).append(row)
    for position in (0, 150, st.n_users - 1):
        user = st.user_ids[position]
        one = cli_rows(["recommend", str(fitted_store), "--user", str(user), "-n", "7"], capsys)
        batch = by_user[user]
        assert [r["rank"] for r in batch] == list(range(1, 8))
        assert [r["item_id"] for r in batch] == [r["item_id"] for r in one]
        assert [r["title"] for r in batch] == [r["title"] for r in one]
        np.testing.assert_allclose([r["score"] for r in batch], [r["score"] for r in one])
        assert st.item_ids[items[position]].tolist() == [r["item_id"] for r in one]


def test_similar_users(fitted_store, capsys):
    st = stores.open_store(fitted_store)
    U, _, _ = stores.read_factors(st)
    unit = U / np.linalg.norm(U, axis=1, keepdims=True)
    cosine = unit @ unit[4]
    cosine[4] = -np.inf
    rows = cli_rows(
        ["similar", str(fitted_store), "--user", str(st.user_ids[4]), "-n", "3"], capsys
    )
    assert [r["user_id"] for r in rows] == st.user_ids[np.argsort(-cosine)[:3]].tolist()
