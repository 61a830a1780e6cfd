"""Top-n for many users at once: in memory for a few, block by block on a cluster for all.

:func:`top_n_rows` is the kernel: the scores of a block of users against every item, the seen
items set to ``-inf``, the top n by :func:`dask_coded_als.recsys.topk.top_k` (score descending,
ties by item index ascending, as everywhere in the package). :func:`recommend_all` runs it over
row blocks of U as a dask array: the blocks of U and of the seen ratings are scattered to the
workers once, V is broadcast, and only the n best of each row come back, so the m x n_items
scores are never all in memory (a block of them is about :data:`SCORE_BLOCK_BYTES`).

:func:`recommendations_table` lays the result out for files (one row per user and rank, with the
original ids and titles) and :func:`write_table` writes it as Parquet or CSV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from distributed import Client

from dask_coded_als._util import check_int
from dask_coded_als.errors import InputError
from dask_coded_als.recsys.topk import top_k

__all__ = [
    "OUTPUT_SUFFIXES",
    "SCORE_BLOCK_BYTES",
    "recommend_all",
    "recommendations_table",
    "top_n_rows",
    "write_table",
]

#: Scores held per block of users (float64): the block's rows are this over 8 n_items. The
#: top-k needs about as much again (a partitioned copy) and a mask of an eighth of it.
SCORE_BLOCK_BYTES = 64 * 2**20

#: The file types :func:`write_table` writes, by the name's suffix.
OUTPUT_SUFFIXES = (".parquet", ".csv")

#: One recommendation as a block returns it: the item's index (-1: none) and its score.
_PAIR = np.dtype([("item", np.int64), ("score", np.float64)])


def top_n_rows(
    user_rows: np.ndarray, item_factors: np.ndarray, seen: sp.csr_matrix | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top n items for each of a block of users.

    Parameters
    ----------
    user_rows : (r, d) ndarray
        The users' factors.
    item_factors : (n_items, d) ndarray
    seen : (r, n_items) scipy.sparse CSR matrix or None
        Their ratings: the stored entries are left out. None leaves nothing out.
    n : int
        Items per user.

    Returns
    -------
    items : (r, n) int64 ndarray
        Item indices, best first; -1 where fewer than n items were left.
    scores : (r, n) float64 ndarray
        Their scores ``user_rows @ item_factors.T``; NaN where the item is -1.

    Examples
    --------
    >>> items, scores = top_n_rows(np.array([[1.0]]), np.array([[3.0], [2.0]]),
    ...                            sp.csr_matrix([[0.0, 1.0]]), 2)
    >>> items.tolist(), scores.tolist()
    ([[0, -1]], [[3.0, nan]])
    """
    scores = user_rows @ item_factors.T
    if seen is not None:
        rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf
    k = min(n, scores.shape[1])
    items = top_k(scores, k)
    best = np.take_along_axis(scores, items, axis=1)
    gone = np.isneginf(best)
    items[gone] = -1
    best[gone] = np.nan
    if k < n:
        items = np.pad(items, ((0, 0), (0, n - k)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, n - k)), constant_values=np.nan)
    return items, best


def _block(piece: tuple, item_factors: np.ndarray, n: int) -> np.ndarray:
    """One task: ``piece`` is (the users' factors, their seen ratings or None)."""
    items, scores = top_n_rows(piece[0], item_factors, piece[1], n)
    out = np.empty(items.shape, dtype=_PAIR)
    out["item"] = items
    out["score"] = scores
    return out


def recommend_all(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    seen: sp.csr_matrix | None,
    n: int = 10,
    client: Client | None = None,
    block_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The top n items of every user, block by block with dask.array.

    Parameters
    ----------
    user_factors : (m, d) ndarray
    item_factors : (n_items, d) ndarray
    seen : (m, n_items) scipy.sparse matrix or None
        Every user's seen items (stored entries), left out of their recommendations.
    n : int, default 10
    client : distributed.Client or None
        The cluster to run on: the blocks are scattered to its workers and V broadcast to all.
        None computes with dask's current scheduler in this process.
    block_rows : int or None
        Users per block; default about :data:`SCORE_BLOCK_BYTES` of scores per block.

    Returns
    -------
    items, scores
        As :func:`top_n_rows` for all m users.

    Examples
    --------
    >>> U = np.array([[1.0], [-1.0]]); V = np.array([[1.0], [2.0], [3.0]])
    >>> recommend_all(U, V, None, n=1)[0].tolist()
    [[2], [0]]
    """
    n = check_int(n, "n", 1)
    m, n_items = user_factors.shape[0], item_factors.shape[0]
    if block_rows is None:
        block_rows = max(1, SCORE_BLOCK_BYTES // (8 * max(1, n_items)))
    block_rows = check_int(block_rows, "block_rows", 1)
    if seen is not None:
        if seen.shape != (m, n_items):
            raise InputError(f"seen has shape {seen.shape}, expected {(m, n_items)}")
        seen = sp.csr_matrix(seen)
    starts = list(range(0, m, block_rows))
    pieces = [
        (user_factors[a : a + block_rows], None if seen is None else seen[a : a + block_rows])
        for a in starts
    ]
    V: Any = dask.delayed(item_factors, pure=True)  # one node, not a copy in every task
    if client is not None:
        # Scattered once: each block lives on one worker, where its task then runs; the graph
        # holds only references.
        pieces = client.scatter(pieces)
        V = client.scatter(item_factors, broadcast=True)
    parts = [
        da.from_delayed(
            dask.delayed(_block, pure=True)(piece, V, n),
            shape=(min(block_rows, m - a), n),
            dtype=_PAIR,
            meta=np.empty((0, 0), dtype=_PAIR),
        )
        for a, piece in zip(starts, pieces, strict=True)
    ]
    result = da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    pairs = client.compute(result).result() if client is not None else result.compute()
    return np.ascontiguousarray(pairs["item"]), np.ascontiguousarray(pairs["score"])


def _id_column(ids: np.ndarray, positions: np.ndarray) -> pa.Array:
    """Ids at ``positions``: int64, or strings dictionary-encoded (each distinct id once)."""
    if ids.dtype.kind in "iu":
        return pa.array(ids[positions], type=pa.int64())
    return pa.DictionaryArray.from_arrays(
        pa.array(positions, type=pa.int32()), pa.array(ids.tolist(), type=pa.string())
    )


def recommendations_table(
    items: np.ndarray,
    scores: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    titles: np.ndarray | None = None,
) -> pa.Table:
    """One row per user and rank: ``user_id``, ``rank`` (1 = best), ``item_id``, ``score`` and,
    with titles, ``title`` (users with fewer items left have fewer rows).

    Examples
    --------
    >>> t = recommendations_table(np.array([[1, -1]]), np.array([[0.5, np.nan]]),
    ...                           np.array([7]), np.array([10, 20]), np.array(["a", "b"]))
    >>> t.to_pylist()
    [{'user_id': 7, 'rank': 1, 'item_id': 20, 'score': 0.5, 'title': 'b'}]
    """
    m, n = items.shape
    valid = (items >= 0).ravel()
    users = np.repeat(np.arange(m), n)[valid]
    ranks = np.tile(np.arange(1, n + 1, dtype=np.int32), m)[valid]
    chosen = items.ravel()[valid]
    columns = {
        "user_id": _id_column(np.asarray(user_ids), users),
        "rank": pa.array(ranks),
        "item_id": _id_column(np.asarray(item_ids), chosen),
        "score": pa.array(scores.ravel()[valid]),
    }
    if titles is not None:
        columns["title"] = pa.DictionaryArray.from_arrays(
            pa.array(chosen, type=pa.int32()), pa.array([str(t) for t in titles], pa.string())
        )
    return pa.table(columns)


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    """Write ``table`` as Parquet (``*.parquet``) or CSV (``*.csv``), by the name's suffix."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        pq.write_table(table, path)
    elif suffix == ".csv":
        # CSV has no dictionaries: write the values themselves.
        plain = [
            col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
            for col in table.columns
        ]
        pa_csv.write_csv(pa.table(plain, names=table.column_names), path)
    else:
        raise InputError(f"{path}: the output must end in {' or '.join(OUTPUT_SUFFIXES)}")
