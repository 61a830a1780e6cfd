"""Tests of the hold-out split and the ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_coded_als.errors import InputError
from dask_coded_als.recsys.evaluation import (
    METRICS,
    evaluate_factors,
    evaluate_popularity,
    ranking_metrics,
    temporal_split,
    train_test_split,
)

# 3 users x 6 items. User 2 has no relevant test rating (3 < 4) and is not evaluated.
TRAIN = sp.csr_matrix(
    np.array(
        [
            [5, 4, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 3],
            [0, 0, 4, 0, 0, 0],
        ],
        dtype=float,
    )
)
TEST = sp.csr_matrix(
    np.array(
        [
            [0, 0, 5, 4, 2, 0],  # relevant: items 2, 3
            [5, 0, 0, 0, 0, 0],  # relevant: item 0
            [0, 0, 0, 0, 3, 0],  # none relevant
        ],
        dtype=float,
    )
)
SCORES = np.array(
    [
        [9, 8, 1, 5, 7, 3],  # without 0, 1: ranking 4, 3, 5, 2 -> top 3 hits [0, 1, 0]
        [6, 1, 2, 9, 0, 10],  # without 5: ranking 3, 0, 2, 1, 4 -> top 3 hits [0, 1, 0]
        [1, 1, 1, 1, 1, 1],
    ],
    dtype=float,
)


def test_hand_computed_metrics():
    result = ranking_metrics(lambda users: SCORES[users], TRAIN, TEST, k=3)
    d2 = 1 / math.log2(3)  # discount of rank 2
    # user 0: 1 hit at rank 2, R = 2; user 1: 1 hit at rank 2, R = 1
    precision = (1 / 3 + 1 / 3) / 2
    recall = (1 / 2 + 1 / 1) / 2
    ndcg = (d2 / (1 + d2) + d2 / 1) / 2
    ap = ((1 / 2) * (1 / 2) + (1 / 1) * (1 / 2)) / 2
    assert result["n_users"] == 2
    assert result["k"] == 3
    assert result["precision@k"] == pytest.approx(precision)
    assert result["recall@k"] == pytest.approx(recall)
    assert result["ndcg@k"] == pytest.approx(ndcg)
    assert result["map@k"] == pytest.approx(ap)


def test_hand_computed_k1_and_k_above_items():
    # k = 1: user 0's top is item 4 (miss), user 1's top is item 3 (miss).
    result = ranking_metrics(lambda users: SCORES[users], TRAIN, TEST, k=1)
    assert [result[m] for m in METRICS] == [0.0, 0.0, 0.0, 0.0]
    # k = 10 > 6 items: user 0 hits at ranks 2 and 4, user 1 at rank 2.
    result = ranking_metrics(lambda users: SCORES[users], TRAIN, TEST, k=10)
    d = [1 / math.log2(i + 1) for i in range(1, 5)]
    assert result["precision@k"] == pytest.approx((2 / 10 + 1 / 10) / 2)
    assert result["recall@k"] == pytest.approx(1.0)
    assert result["ndcg@k"] == pytest.approx(((d[1] + d[3]) / (d[0] + d[1]) + d[1]) / 2)
    assert result["map@k"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1 / 2) / 2)


def test_factors_match_score_fn_and_batches():
    expected = ranking_metrics(lambda users: SCORES[users], TRAIN, TEST, k=3)
    assert evaluate_factors(SCORES, np.eye(6), TRAIN, TEST, k=3) == expected
    assert evaluate_factors(SCORES, np.eye(6), TRAIN, TEST, k=3, batch_size=1) == expected


def test_ties_broken_by_item_index():
    train = sp.csr_matrix((1, 4))
    test = sp.csr_matrix(np.array([[0, 0, 5.0, 0]]))
    flat = np.zeros((1, 4))
    assert ranking_metrics(lambda u: flat, train, test, k=2)["precision@k"] == 0.0  # items 0, 1
    assert ranking_metrics(lambda u: flat, train, test, k=3)["map@k"] == pytest.approx(1 / 3)


def test_perfect_scores():
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((30, 40)) < 0.3, rng.integers(1, 6, (30, 40)), 0).astype(float)
    train, test = train_test_split(sp.csr_matrix(dense), test_fraction=0.5, seed=1)
    test_dense = test.toarray()
    n_rel = (test_dense >= 4).sum(axis=1)
    evaluated = n_rel > 0
    for k in (1, 3, 40):
        result = ranking_metrics(lambda users: test_dense[users], train, test, k=k)
        assert result["n_users"] == evaluated.sum()
        best_precision = np.mean(np.minimum(n_rel[evaluated], k) / k)
        assert result["precision@k"] == pytest.approx(best_precision)
        assert result["ndcg@k"] == pytest.approx(1.0)
        assert result["map@k"] == pytest.approx(1.0)
        best_recall = np.mean(np.minimum(n_rel[evaluated], k) / n_rel[evaluated])
        assert result["recall@k"] == pytest.approx(best_recall)
    assert result["recall@k"] == pytest.approx(1.0)  # k = 40 >= every n_relevant


def test_popularity_baseline():
    # Training counts per item: [3, 2, 1, 0, 0]. Item 0 is the most popular.
    train = sp.csr_matrix(
        np.array(
            [
                [5, 5, 5, 0, 0],
                [5, 5, 0, 0, 0],
                [5, 0, 0, 0, 0],
                [0, 0, 0, 0, 0],
            ],
            dtype=float,
        )
    )
    test = sp.csr_matrix(
        np.array(
            [
                [0, 0, 0, 5, 0],  # ranking 3, 4: hit at rank 1
                [0, 0, 4, 0, 0],  # ranking 2, 3, 4: hit at rank 1
                [0, 0, 0, 0, 5],  # ranking 1, 2, 3: miss at k = 2
                [5, 0, 0, 0, 0],  # ranking 0, 1, 2: hit at rank 1
            ],
            dtype=float,
        )
    )
    result = evaluate_popularity(train, test, k=2)
    assert result["n_users"] == 4
    assert result["precision@k"] == pytest.approx((1 / 2 + 1 / 2 + 0 + 1 / 2) / 4)
    assert result["recall@k"] == pytest.approx(3 / 4)
    assert result["ndcg@k"] == pytest.approx(3 / 4)
    assert result["map@k"] == pytest.approx(3 / 4)
    popularity = np.array([3.0, 2.0, 1.0, 0.0, 0.0])
    assert result == ranking_metrics(lambda u: np.tile(popularity, (u.size, 1)), train, test, k=2)


def test_metric_input_errors():
    score_fn = lambda users: SCORES[users]  # noqa: E731
    with pytest.raises(InputError, match="k must be an integer >= 1"):
        ranking_metrics(score_fn, TRAIN, TEST, k=0)
    with pytest.raises(InputError, match="shape"):
        ranking_metrics(score_fn, TRAIN, TEST[:2], k=3)
    with pytest.raises(InputError, match="no user has a test rating >= 6"):
        ranking_metrics(score_fn, TRAIN, TEST, relevant=6)
    with pytest.raises(InputError, match="score_fn returned shape"):
        ranking_metrics(lambda users: SCORES[users, :5], TRAIN, TEST)
    with pytest.raises(InputError, match="NaN"):
        ranking_metrics(lambda users: SCORES[users] * np.nan, TRAIN, TEST)
    with pytest.raises(InputError, match="scipy.sparse"):
        evaluate_popularity(TRAIN.toarray(), TEST)
    with pytest.raises(InputError, match="do not match"):
        evaluate_factors(SCORES, np.eye(5), TRAIN, TEST)


def test_split_counts_and_determinism():
    dense = np.zeros((4, 12))
    dense[0, :10] = 1.0  # 10 ratings: 2 held out at 0.2
    dense[1, :2] = 2.0  # 2 ratings: round(0.4) = 0, raised to 1
    dense[2, 0] = 3.0  # 1 rating: kept in training
    ratings = sp.csr_matrix(dense)
    train, test = train_test_split(ratings, test_fraction=0.2, seed=7)
    assert test.getnnz(axis=1).tolist() == [2, 1, 0, 0]
    assert train.getnnz(axis=1).tolist() == [8, 1, 1, 0]
    again = train_test_split(ratings, test_fraction=0.2, seed=7)
    assert (again[0] != train).nnz == 0 and (again[1] != test).nnz == 0
    other = [train_test_split(ratings, 0.2, seed=s)[1] for s in range(8)]
    assert len({tuple(t.indices.tolist()) for t in other}) > 1
    # test_fraction near 1 still keeps one rating per user in training
    _, test = train_test_split(ratings, test_fraction=0.99, seed=0)
    assert test.getnnz(axis=1).tolist() == [9, 1, 0, 0]
    assert isinstance(train_test_split(sp.csr_array(ratings))[0], sp.csr_array)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, float("nan"), True])
def test_split_bad_fraction(fraction):
    with pytest.raises(InputError, match="test_fraction"):
        train_test_split(TRAIN, test_fraction=fraction)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 8), st.integers(1, 10)),
    density=st.floats(0.0, 1.0),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_properties(shape, density, fraction, seed):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random(shape) < density, rng.integers(1, 6, shape), 0).astype(float)
    ratings = sp.csr_matrix(dense)
    train, test = train_test_split(ratings, test_fraction=fraction, seed=seed)
    assert train.shape == test.shape == ratings.shape
    assert train.multiply(test).nnz == 0  # disjoint supports (ratings are nonzero)
    np.testing.assert_array_equal((train + test).toarray(), dense)
    counts = ratings.getnnz(axis=1)
    n_test = test.getnnz(axis=1)
    assert np.all(train.getnnz(axis=1)[counts >= 1] >= 1)
    assert np.all(n_test[counts <= 1] == 0)
    expected = np.clip(np.floor(fraction * counts + 0.5), 1, np.maximum(counts - 1, 1))
    np.testing.assert_array_equal(n_test[counts >= 2], expected[counts >= 2])


def _naive(scores, train, test, k, relevant):
    """Per-user loops straight from the definitions, ties by item index."""
    rows = []
    for u in range(scores.shape[0]):
        rel = {j for j in range(scores.shape[1]) if test[u, j] != 0 and test[u, j] >= relevant}
        if not rel:
            continue
        candidates = [j for j in range(scores.shape[1]) if train[u, j] == 0]
        ranked = sorted(candidates, key=lambda j: (-scores[u, j], j))[:k]
        hits = [1.0 if j in rel else 0.0 for j in ranked]
        limit = min(k, len(rel))
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        idcg = sum(1 / math.log2(i + 2) for i in range(limit))
        ap = sum(h * sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits)) / limit
        rows.append([sum(hits) / k, sum(hits) / len(rel), dcg / idcg, ap])
    return np.mean(rows, axis=0), len(rows)


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_with_ties(seed):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((12, 9)) < 0.4, rng.integers(1, 6, (12, 9)), 0).astype(float)
    train, test = train_test_split(sp.csr_matrix(dense), test_fraction=0.4, seed=seed)
    scores = rng.integers(0, 3, (12, 9)).astype(float)  # many ties
    for k in (1, 4, 12):
        result = ranking_metrics(lambda u: scores[u], train, test, k=k, batch_size=5)
        expected, n_users = _naive(scores, train.toarray(), test.toarray(), k, 4.0)
        assert result["n_users"] == n_users
        np.testing.assert_allclose([result[m] for m in METRICS], expected)


def test_hand_computed_more_relevant_items_than_k():
    # One user, 3 relevant test items (0, 2, 4), k = 2, ranking 0, 1, 2, ...: a hit at rank 1.
    train = sp.csr_matrix((1, 6))
    test = sp.csr_matrix(np.array([[5.0, 0, 4.0, 0, 4.5, 0]]))
    scores = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    result = ranking_metrics(lambda u: scores, train, test, k=2)
    assert result["precision@k"] == pytest.approx(1 / 2)
    assert result["recall@k"] == pytest.approx(1 / 3)  # not 1 / min(k, 3) = 1 / 2
    assert result["ndcg@k"] == pytest.approx(1 / (1 + 1 / math.log2(3)))  # ideal: 2 hits
    assert result["map@k"] == pytest.approx(1 / 2)  # (1/1) / min(k, 3)
    # implicit's precision would be 1 / min(k, 3) = 1 / 2 here too, but 1 / 1 for R = 1:
    one = sp.csr_matrix(np.array([[5.0, 0, 0, 0, 0, 0]]))
    assert ranking_metrics(lambda u: scores, train, one, k=2)["precision@k"] == 1 / 2


def test_temporal_split_holds_out_the_newest():
    ratings = sp.csr_matrix(
        np.array(
            [
                [5.0, 4.0, 3.0, 2.0, 1.0],  # times 50, 10, 40, 20, 30: 20% of 5 -> 1 held out
                [1.0, 0, 2.0, 0, 3.0],  # times 7, 7, 7 (a tie): item 4 counts as the newest
                [0, 4.0, 0, 0, 0],  # a single rating stays in training
            ]
        )
    )
    stamps = np.array([50, 10, 40, 20, 30, 7, 7, 7, 99])
    train, test = temporal_split(ratings, stamps, 0.2)
    assert test.toarray().tolist() == [[5, 0, 0, 0, 0], [0, 0, 0, 0, 3], [0, 0, 0, 0, 0]]
    np.testing.assert_array_equal((train + test).toarray(), ratings.toarray())
    train, test = temporal_split(ratings, stamps, 0.5)  # 2.5 -> 3 of 5; 1.5 -> 2 of 3
    assert test.toarray().tolist() == [[5, 0, 3, 0, 1], [0, 0, 2, 0, 3], [0, 0, 0, 0, 0]]
    # float times, and the same counts per user as the random split
    random_test = train_test_split(ratings, 0.5, seed=3)[1]
    assert test.getnnz(axis=1).tolist() == random_test.getnnz(axis=1).tolist()
    assert (temporal_split(ratings, stamps / 3.0, 0.5)[1] != test).nnz == 0
    assert isinstance(temporal_split(sp.csr_array(ratings), stamps)[0], sp.csr_array)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 8), st.integers(1, 10)),
    density=st.floats(0.0, 1.0),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_temporal_split_properties(shape, density, fraction, seed):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random(shape) < density, rng.integers(1, 6, shape), 0).astype(float)
    ratings = sp.csr_matrix(dense)
    stamps = rng.integers(0, 4, ratings.nnz)  # few distinct times: many ties
    train, test = temporal_split(ratings, stamps, fraction)
    np.testing.assert_array_equal((train + test).toarray(), dense)
    assert train.multiply(test).nnz == 0
    random_test = train_test_split(ratings, fraction, seed=seed)[1]
    assert test.getnnz(axis=1).tolist() == random_test.getnnz(axis=1).tolist()
    when = sp.csr_matrix((stamps + 1.0, ratings.indices, ratings.indptr), shape=ratings.shape)
    for u in range(shape[0]):
        held = [(when[u, j], j) for j in test[u].indices]
        kept = [(when[u, j], j) for j in train[u].indices]
        if held and kept:
            assert min(held) > max(kept)  # (time, item) of every held-out rating is newer


def test_temporal_split_bad_input():
    ratings = sp.csr_matrix(np.array([[1.0, 2.0], [3.0, 0]]))
    with pytest.raises(InputError, match=r"timestamps has shape \(2,\), expected one per rating"):
        temporal_split(ratings, np.array([1, 2]))
    with pytest.raises(InputError, match="finite numbers"):
        temporal_split(ratings, np.array([1.0, np.nan, 3.0]))
    with pytest.raises(InputError, match="finite numbers"):
        temporal_split(ratings, np.array(["a", "b", "c"]))
    with pytest.raises(InputError, match="CSR with sorted indices"):
        temporal_split(ratings.tocoo(), np.array([1, 2, 3]))
    unsorted = sp.csr_matrix(
        (np.array([2.0, 1.0]), np.array([1, 0]), np.array([0, 2])), shape=(1, 2)
    )
    with pytest.raises(InputError, match="CSR with sorted indices"):
        temporal_split(unsorted, np.array([1, 2]))
    with pytest.raises(InputError, match="test_fraction"):
        temporal_split(ratings, np.array([1, 2, 3]), test_fraction=1.0)
    with pytest.raises(InputError, match="scipy.sparse"):
        temporal_split(ratings.toarray(), np.array([1, 2, 3]))
