"""The one top-k of the package: used by recommendations, similar items and the evaluation."""

from __future__ import annotations

import numpy as np

__all__ = ["top_k"]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k largest scores of each row, score descending, ties by column ascending.

    Parameters
    ----------
    scores : (n_rows, n_cols) or (n_cols,) ndarray
        A 1-D array is taken as one row (and a 1-D result returned).
    k : int
        How many per row (all columns, ranked, when k >= n_cols).

    Examples
    --------
    >>> top_k(np.array([0.5, 2.0, 2.0, -1.0]), 2)
    array([1, 2])
    """
    if scores.ndim == 1:
        return top_k(scores[None, :], k)[0]
    n_rows, n_cols = scores.shape
    if k >= n_cols:
        return np.argsort(-scores, axis=1, kind="stable")
    # The k-th largest value t per row: keep the entries above t, then the lowest columns equal
    # to t, so that exactly k are kept per row (argpartition alone breaks ties arbitrarily).
    t = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > t
    equal = scores == t
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (equal & (np.cumsum(equal, axis=1) <= need))
    cols = np.nonzero(keep)[1].reshape(n_rows, k)
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)
