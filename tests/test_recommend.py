"""Tests of recommendations and item neighbours from factors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds

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
