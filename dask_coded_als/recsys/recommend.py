"""Recommendations and item neighbours from fitted factors.

With user factors U (m x d) and item factors V (n x d), the predicted score of item j for user u
is ``U[u] @ V[j]``. :func:`recommend` returns a user's top-n items by that score, leaving out the
items the user already rated (the stored entries of row u of the ratings matrix).
:func:`similar_items` returns an item's nearest items by cosine similarity of the rows of V.

Rankings are by score descending, ties by index ascending, so results are deterministic. The top n
are found with :func:`numpy.argpartition` (linear time in the number of items) and only those n
are sorted.

The ``*_by_id`` variants translate external ids (the ids arrays written next to the factors) to
row positions and back, and attach titles when given. An id is compared in the dtype of the ids
array: for integer ids, ``"42"`` (as read from a command line) means ``42``; for string ids, the
id is compared as a string.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from dask_coded_als._util import check_int
from dask_coded_als.errors import InputError
from dask_coded_als.recsys.topk import top_k

__all__ = [
    "IdIndex",
    "as_records",
    "recommend",
    "recommend_by_id",
    "similar_by_id",
    "similar_items",
]

Titles = Sequence[Any] | Mapping[Any, Any] | np.ndarray


def _check_factors(factors: Any, name: str) -> np.ndarray:
    arr = np.asarray(factors)
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or infinite values")
    return arr.astype(np.float64, copy=False)


def _check_index(value: Any, name: str, size: int) -> int:
    index = check_int(value, name, 0)
    if index >= size:
        raise InputError(f"{name} {index} out of range for {size} rows")
    return index


def recommend(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    ratings_csr: sp.spmatrix | sp.sparray | None,
    user_index: int,
    n: int = 10,
    exclude_rated: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items for one user by the predicted score ``U[user_index] @ V.T``.

    Parameters
    ----------
    user_factors : numpy.ndarray
        User factors U, shape (m, d).
    item_factors : numpy.ndarray
        Item factors V, shape (n_items, d).
    ratings_csr : scipy.sparse matrix or array, or None
        Ratings, shape (m, n_items). The stored entries of row ``user_index`` are the items the
        user rated. May be None only when ``exclude_rated`` is False.
    user_index : int
        Row of the user in U and in the ratings.
    n : int, default 10
        Number of items to return, >= 1. Fewer are returned if fewer candidates exist.
    exclude_rated : bool, default True
        Leave out the items the user already rated.

    Returns
    -------
    item_indices : numpy.ndarray of int64
        Item positions, best first (score descending, ties by index ascending).
    scores : numpy.ndarray of float64
        Their predicted scores.

    Raises
    ------
    InputError
        On inconsistent shapes, non-finite factors, a bad ``user_index`` or ``n``.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> U = np.array([[1.0, 0.0]]); V = np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    >>> items, scores = recommend(U, V, sp.csr_matrix([[5.0, 0.0, 0.0]]), 0, n=2)
    >>> items.tolist(), scores.tolist()
    ([1, 2], [2.0, 1.0])
    """
    u = _check_factors(user_factors, "user_factors")
    v = _check_factors(item_factors, "item_factors")
    if u.shape[1] != v.shape[1]:
        raise InputError(f"factor ranks differ: user {u.shape[1]}, item {v.shape[1]}")
    user = _check_index(user_index, "user_index", u.shape[0])
    n = check_int(n, "n", 1)
    candidates = np.arange(v.shape[0])
    if exclude_rated:
        if ratings_csr is None:
            raise InputError("ratings_csr is required when exclude_rated is True")
        if not sp.issparse(ratings_csr):
            raise InputError("ratings_csr must be a scipy.sparse matrix")
        if ratings_csr.shape != (u.shape[0], v.shape[0]):
            raise InputError(
                f"ratings_csr has shape {ratings_csr.shape}, expected {(u.shape[0], v.shape[0])}"
            )
        csr = ratings_csr if ratings_csr.format == "csr" else ratings_csr.tocsr()
        rated = np.zeros(v.shape[0], dtype=bool)
        rated[csr.indices[csr.indptr[user] : csr.indptr[user + 1]]] = True
        candidates = np.flatnonzero(~rated)
    scores = v[candidates] @ u[user]
    order = top_k(scores, n)
    return candidates[order].astype(np.int64), scores[order]


def _key(arr: np.ndarray, value: Any, kind: str) -> Any:
    """``value`` as a key in the dtype of ``arr``: an int for integer ids (``"42"`` is 42), a
    str otherwise; an InputError for a value that cannot be such an id."""
    if arr.dtype.kind in "iu":
        if isinstance(value, bool):
            raise InputError(f"unknown {kind} id {value}")
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, str | bytes):
            try:
                return int(value)
            except ValueError:
                raise InputError(f"unknown {kind} id {value}") from None
        raise InputError(f"unknown {kind} id {value}")
    return value.decode() if isinstance(value, bytes) else str(value)


class IdIndex:
    """Row positions of external ids, compared in the dtype of the ids (see the module docs).

    Examples
    --------
    >>> index = IdIndex(np.array([10, 20, 30]), "item")
    >>> index.position("20"), index.positions([30, 10]).tolist()
    (1, [2, 0])
    """

    def __init__(self, ids: Any, kind: str) -> None:
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise InputError(f"{kind} ids must be 1-D, got shape {arr.shape}")
        self.ids = arr
        self.kind = kind
        self._positions: dict[Any, int] | None = None

    def position(self, value: Any) -> int:
        """The row of ``value``; ``unknown <kind> id X`` when there is none (the first of
        repeated ids)."""
        if self._positions is None:
            keys = self.ids.tolist() if self.ids.dtype.kind in "iu" else self.ids.astype(str)
            positions: dict[Any, int] = {}
            for position, key in enumerate(keys):
                positions.setdefault(key, position)
            self._positions = positions
        found = self._positions.get(_key(self.ids, value, self.kind))
        if found is None:
            raise InputError(f"unknown {self.kind} id {value}")
        return found

    def positions(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """The rows of several ids, as int64."""
        return np.array([self.position(v) for v in values], dtype=np.int64)


def _title(titles: Titles | None, item_id: Any, position: int) -> Any:
    if titles is None:
        return None
    if isinstance(titles, Mapping):
        return titles.get(item_id)
    return titles[position]


def as_records(
    ids: np.ndarray,
    positions: np.ndarray,
    scores: np.ndarray,
    titles: Titles | None = None,
    kind: str = "item",
) -> list[dict[str, Any]]:
    """Rows ``positions`` with their scores as ``{"item_id", "score", "title"}`` records (for
    ``kind="user"``: ``{"user_id", "score"}``), ids as plain Python values.

    Examples
    --------
    >>> as_records(np.array([7, 9]), np.array([1]), np.array([0.5]), ["a", "b"])
    [{'item_id': 9, 'score': 0.5, 'title': 'b'}]
    """
    out = []
    for position, score in zip(positions.tolist(), scores.tolist(), strict=True):
        row_id = ids[position]
        if isinstance(row_id, np.generic):
            row_id = row_id.item()
        record = {f"{kind}_id": row_id, "score": float(score)}
        if kind == "item":
            record["title"] = _title(titles, row_id, position)
        out.append(record)
    return out


def _check_ids(ids: Any, rows: int, kind: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != rows:
        raise InputError(f"{kind} ids have shape {arr.shape}, expected ({rows},)")
    return arr


def _check_titles(titles: Titles | None, n_items: int) -> None:
    if titles is not None and not isinstance(titles, Mapping) and len(titles) != n_items:
        raise InputError(f"titles has {len(titles)} entries, expected {n_items}")


def recommend_by_id(
    user_ids: Sequence[Any] | np.ndarray,
    item_ids: Sequence[Any] | np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    ratings_csr: sp.spmatrix | sp.sparray | None,
    user_id: Any,
    n: int = 10,
    titles: Titles | None = None,
    exclude_rated: bool = True,
) -> list[dict[str, Any]]:
    """Top-n items for the user with external id ``user_id``, as records.

    Parameters
    ----------
    user_ids, item_ids : array_like
        External ids of the rows of ``user_factors`` and ``item_factors``.
    user_factors, item_factors, ratings_csr, n, exclude_rated
        As in :func:`recommend`.
    user_id : int or str
        The user's id, compared in the dtype of ``user_ids`` (``"42"`` matches integer id 42).
    titles : sequence or mapping, optional
        Item titles: a sequence aligned with ``item_ids``, or a mapping from item id to title.

    Returns
    -------
    list of dict
        One ``{"item_id", "score", "title"}`` per item, best first; ``title`` is None without
        titles (or for an item missing from a mapping). Ids are plain Python values.

    Raises
    ------
    InputError
        ``unknown user id X``, or any error of :func:`recommend`.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> U = np.array([[1.0]]); V = np.array([[2.0], [1.0]])
    >>> recommend_by_id([7], [10, 20], U, V, sp.csr_matrix((1, 2)), "7", n=1, titles=["a", "b"])
    [{'item_id': 10, 'score': 2.0, 'title': 'a'}]
    """
    u = _check_factors(user_factors, "user_factors")
    v = _check_factors(item_factors, "item_factors")
    users = _check_ids(user_ids, u.shape[0], "user")
    items = _check_ids(item_ids, v.shape[0], "item")
    _check_titles(titles, items.shape[0])
    user = IdIndex(users, "user").position(user_id)
    positions, scores = recommend(u, v, ratings_csr, user, n=n, exclude_rated=exclude_rated)
    return as_records(items, positions, scores, titles)


def similar_items(
    item_factors: np.ndarray, item_index: int, n: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The n items most similar to one item by cosine similarity of their factors.

    The similarity of items i and j is ``V[i] @ V[j] / (|V[i]| |V[j]|)``, taken as 0 when either
    row is zero. The item itself is excluded.

    Parameters
    ----------
    item_factors : numpy.ndarray
        Item factors V, shape (n_items, d).
    item_index : int
        Row of the item.
    n : int, default 10
        Number of items to return, >= 1 (at most ``n_items - 1`` are returned).

    Returns
    -------
    indices : numpy.ndarray of int64
        Item positions, most similar first (ties by index ascending).
    scores : numpy.ndarray of float64
        Their cosine similarities, in [-1, 1].

    Raises
    ------
    InputError
        On non-finite factors, a bad ``item_index`` or ``n``.

    Examples
    --------
    >>> import numpy as np
    >>> V = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.1]])
    >>> similar_items(V, 0, n=1)[0].tolist()
    [2]
    """
    v = _check_factors(item_factors, "item_factors")
    item = _check_index(item_index, "item_index", v.shape[0])
    n = check_int(n, "n", 1)
    norms = np.linalg.norm(v, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = v / safe[:, None]
    candidates = np.flatnonzero(np.arange(v.shape[0]) != item)
    scores = np.clip(unit[candidates] @ unit[item], -1.0, 1.0)
    order = top_k(scores, n)
    return candidates[order].astype(np.int64), scores[order]


def similar_by_id(
    item_ids: Sequence[Any] | np.ndarray,
    item_factors: np.ndarray,
    item_id: Any,
    n: int = 10,
    titles: Titles | None = None,
) -> list[dict[str, Any]]:
    """The n items most similar to the item with external id ``item_id``, as records.

    Parameters
    ----------
    item_ids : array_like
        External ids of the rows of ``item_factors``.
    item_factors : numpy.ndarray
        Item factors V, shape (n_items, d).
    item_id : int or str
        The item's id, compared in the dtype of ``item_ids``.
    n : int, default 10
        Number of items to return.
    titles : sequence or mapping, optional
        As in :func:`recommend_by_id`.

    Returns
    -------
    list of dict
        One ``{"item_id", "score", "title"}`` per item, most similar first.

    Raises
    ------
    InputError
        ``unknown item id X``, or any error of :func:`similar_items`.

    Examples
    --------
    >>> import numpy as np
    >>> V = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    >>> similar_by_id(["a", "b", "c"], V, "a", n=1)
    [{'item_id': 'c', 'score': 1.0, 'title': None}]
    """
    v = _check_factors(item_factors, "item_factors")
    items = _check_ids(item_ids, v.shape[0], "item")
    _check_titles(titles, items.shape[0])
    item = IdIndex(items, "item").position(item_id)
    positions, scores = similar_items(v, item, n=n)
    return as_records(items, positions, scores, titles)
