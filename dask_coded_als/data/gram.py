"""The Gram matrix D = R^T R (or R R^T, the smaller): the one place it is formed.

- :func:`gram`: in memory, for a numpy or scipy.sparse R (the reference ALS and tests);
- :func:`block_gram` and :func:`tree_sum`: one product per row block of R (of R^T when R is
  wide) and a tree that adds them, over any graph builder: ``dask.delayed`` for a stored R
  (:func:`dask_coded_als.data.store.compute_gram`), futures on a cluster for an R given to
  ``fit`` (:mod:`dask_coded_als.engine.master`);
- :func:`gram_by_columns`: a large dense D by blocks of columns written into one array, so
  that no partial sum as large as D is ever held twice.

A partial sum stays sparse until a quarter of it is filled; only D itself is dense.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "GRAM_BY_COLUMNS_BYTES",
    "block_gram",
    "pair_block",
    "gram",
    "gram_by_columns",
    "sum_parts",
    "tree_sum",
]

#: A sparse partial sum denser than this fraction becomes a dense array.
DENSE_FRACTION = 0.25
#: Above this size a dense D is computed by column blocks into one array instead of by a tree of
#: dense partial sums, each as large as D.
GRAM_BY_COLUMNS_BYTES = 256 * 2**20


def gram(R: Any) -> tuple[np.ndarray, bool]:
    """The smaller Gram matrix D of R, eq. (10), in memory.

    Parameters
    ----------
    R : (m, n) array_like or scipy.sparse matrix
        Data matrix.

    Returns
    -------
    D : ndarray
        Dense ``R^T R`` (n x n) if ``m >= n``, else ``R R^T`` (m x m), exactly symmetric.
    transposed : bool
        True when ``D = R R^T`` (then B is U), False when ``D = R^T R`` (B is V).

    Examples
    --------
    >>> D, transposed = gram(np.ones((3, 2)))
    >>> D, transposed
    (array([[3., 3.],
           [3., 3.]]), False)
    """
    if not sp.issparse(R):
        R = np.asarray(R, dtype=np.float64)
    m, n = R.shape
    transposed = m < n
    D = R @ R.T if transposed else R.T @ R
    D = D.toarray() if sp.issparse(D) else np.asarray(D, dtype=np.float64)
    # Sparse products are not exactly symmetric; the eigen/Cholesky code relies on D = D^T.
    return 0.5 * (D + D.T), transposed


def _maybe_dense(mat: Any) -> Any:
    if sp.issparse(mat):
        n = mat.shape[0] * mat.shape[1]
        if n and mat.nnz > DENSE_FRACTION * n:
            return mat.toarray()
    return mat


def block_gram(block: Any) -> Any:
    """``B^T B`` for one row block B (dense or sparse), sparse while that is smaller."""
    product = block.T @ block
    if sp.issparse(product):
        return _maybe_dense(product.tocsr())
    return np.asarray(product, dtype=np.float64)


def pair_block(rows_i: sp.csr_matrix, rows_j: sp.csr_matrix) -> np.ndarray:
    """The block ``D[I, J] = X_t[I] X_t[J]^T`` of D = X^T X from rows I and J of ``X_t = X^T``,
    dense. Each entry sums ``x_ra x_rb`` over the rows r of X in ascending order, as
    :func:`gram_by_columns` does, so the blocks make the same D to the last bit."""
    return np.asarray((rows_i @ rows_j.T).toarray(), dtype=np.float64)


def sum_parts(*parts: Any) -> Any:
    """One node of the tree: the sum of sparse and dense partial sums."""
    dense = [p for p in parts if not sp.issparse(p)]
    sparse = [p for p in parts if sp.issparse(p)]
    if dense:
        total = np.array(dense[0], dtype=np.float64)
        for p in dense[1:]:
            total += p
        for p in sparse:
            total += p.toarray()
        return total
    total = sparse[0]
    for p in sparse[1:]:
        total = total + p
    return _maybe_dense(total.tocsr())


def tree_sum(parts: Sequence[Any], node: Callable[..., Any], split_every: int = 8) -> Any:
    """Add ``parts`` with a tree of ``node(*children)`` calls, ``split_every`` children each.

    ``node`` builds one sum in whatever graph the parts belong to, e.g.
    ``dask.delayed(sum_parts)`` or ``lambda *p: client.submit(sum_parts, *p)``.
    """
    if split_every < 2:
        raise ValueError(f"split_every must be >= 2, not {split_every!r}")
    parts = list(parts)
    while len(parts) > 1:
        parts = [
            node(*parts[i : i + split_every]) if len(parts[i : i + split_every]) > 1 else parts[i]
            for i in range(0, len(parts), split_every)
        ]
    return parts[0]


def _column_block_gram(X_t: sp.csr_matrix, X_csc: sp.csc_matrix, a: int, b: int) -> np.ndarray:
    """Columns a:b of D = X^T X: X^T @ X[:, a:b], dense."""
    return np.asarray((X_t @ X_csc[:, a:b]).toarray(), dtype=np.float64)


def gram_by_columns(X: sp.csr_matrix, block: int, scheduler: str | None = "threads") -> np.ndarray:
    """D = X^T X, one dask task per block of ``block`` columns, written into a single array."""
    import dask

    n = X.shape[1]
    # Named nodes: the matrices enter the graph once and are not hashed for every task.
    token = uuid.uuid4().hex
    X_t = dask.delayed(X.T.tocsr(), name=f"gram-xt-{token}")
    X_csc = dask.delayed(X.tocsc(), name=f"gram-xcsc-{token}")
    starts = list(range(0, n, block))
    tasks = [dask.delayed(_column_block_gram, pure=False)(X_t, X_csc, a, a + block) for a in starts]
    D = np.empty((n, n))
    # Compute a few blocks at a time so that at most a few dense blocks exist besides D.
    step = 4
    for i in range(0, len(tasks), step):
        parts = dask.compute(*tasks[i : i + step], scheduler=scheduler)
        for a, part in zip(starts[i : i + step], parts, strict=True):
            D[:, a : a + part.shape[1]] = part
    return D
