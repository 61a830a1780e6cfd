"""The one top-k of the package: used by recommendations, similar items, the batch job and the
evaluation."""

from __future__ import annotations

import numpy as np

__all__ = ["top_k"]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the k largest scores of each row, score descending, ties by column ascending.

    Linear time in the number of columns (a partition, then a sort of the k kept); the memory
    beyond ``scores`` is one copy of it and a boolean mask.

    Parameters
    ----------
    scores : (n_rows, n_cols) or (n_cols,) ndarray
        A 1-D array is taken as one row (and a 1-D result returned). ``-inf`` ranks last (the
        batch job marks excluded items so); NaN is not allowed.
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
    # The k-th largest value t per row: keep the entries >= t; in the rows where more than k tie
    # at or above t, keep the lowest columns equal to t (argpartition alone breaks ties
    # arbitrarily). Ties at t are rare in real scores, so only those rows pay for the cumsum.
    t = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k, None]
    keep = scores >= t
    over = np.flatnonzero(np.count_nonzero(keep, axis=1) > k)
    if over.size:
        rows, at = scores[over], t[over]
        above = rows > at
        equal = rows == at
        need = k - np.count_nonzero(above, axis=1)[:, None]
        keep[over] = above | (equal & (np.cumsum(equal, axis=1) <= need))
    cols = np.nonzero(keep)[1].reshape(n_rows, k)
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)
