"""The ratings store: a Zarr v3 directory holding a ratings matrix, its Gram matrix and factors.

Layout (version 1), all paths relative to the store directory::

    zarr.json                root group; attrs below
    ratings/indptr           int64  (n_users + 1,)  CSR row pointer over the sorted ratings
    ratings/user             int32  (n_ratings,)    0-based user index, sorted by (user, item)
    ratings/item             int32  (n_ratings,)    0-based item index
    ratings/rating           float32 (n_ratings,)
    ratings/timestamp        int64  (n_ratings,)    only when the source has timestamps
    by_item/indptr           int64  (n_items + 1,)  the same ratings sorted by (item, user): the
    by_item/user             int32  (n_ratings,)    rows of R^T, so that item-side blocks (and
    by_item/rating           float32 (n_ratings,)   R R^T) need no global shuffle
    ids/users                int64 or string (n_users,)  original id of every user index
    ids/items                int64 or string (n_items,)  original id of every item index
    ids/titles               string (n_items,)     only when a movies file was ingested
    gram/D                   float64 (l, l)        written by :func:`compute_gram`; the group's
                                                   attribute ``weighting`` names the weighting of
                                                   R it was formed from (absent: ``"none"``)
    factors/U, factors/V     float64 (n_users, d), (n_items, d), written by :func:`write_factors`
    factors/<name>           float64 (n_items,)    optional per-item arrays of the fitted model
                                                   (the ``bm25`` weighting's item weights)
    recommendations/items    int64 (n_users, n)    top-n item indices per user (-1: none left),
    recommendations/scores   float64 (n_users, n)  written by :func:`write_recommendations`

Every array ends its codecs with ``crc32c``: each chunk carries a checksum, chunks of zeros are
written too, and reading a damaged chunk is an InputError naming the store, the array and the
chunk (:mod:`dask_coded_als.data.checksums`). Stores written before that still open; a warning
says once that they have no checksum to verify.

Index arrays are int64 instead of int32 when a dimension reaches 2**31. Users and items are
numbered in the sorted order of their original ids (numeric order for integer ids, code-point
order for strings).

Root attributes: ``layout`` (:data:`LAYOUT`), ``layout_version``, ``n_users``, ``n_items``,
``n_ratings``, ``n_duplicates``, ``format``, ``source`` (file, directory or pattern name, or
``"DataFrame"``), ``sha256`` (of the source files as stored on disk; None for a DataFrame),
``user_id_type`` and ``item_id_type`` (``"int64"`` or ``"string"``), ``id_type`` (their common
value, or ``"mixed"``), ``has_timestamps``, ``has_titles``, ``movies_source``, ``ingest_id``
(random, changes with every ingest).

Atomic replacement of the ``gram`` and ``factors`` groups: the new group is written completely
under a temporary sibling name (``tmp-<name>-<random>``), then moved into place with directory
renames (``os.rename``, atomic on one POSIX file system). An old group is first renamed to
``old-<name>-<random>`` and deleted after the swap, so a failure at any point leaves either the
complete old group or the complete new one under ``<name>`` (a crash exactly between the two
renames leaves the old group under its ``old-`` name, where it can be recovered by hand). Readers
never see a half-written group. Concurrent writers to one store are not supported.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
from zarr.storage import LocalStore

from dask_coded_als._util import check_int, one_line
from dask_coded_als.data.checksums import (
    CheckedArray,
    create_array,
    has_checksums,
    note_unchecked,
    read,
)
from dask_coded_als.data.gram import (
    GRAM_BY_COLUMNS_BYTES,
    block_gram,
    gram_by_columns,
    pair_block,
    sum_parts,
    tree_sum,
)
from dask_coded_als.errors import InputError, UnreachableStoreError

__all__ = [
    "LAYOUT",
    "LAYOUT_VERSION",
    "RatingsStore",
    "open_store",
    "ratings_matrix",
    "ratings_dask",
    "compute_gram",
    "load_gram",
    "gram_array",
    "gram_weighting",
    "write_factors",
    "read_factors",
    "read_factor_array",
    "write_recommendations",
    "read_recommendations",
    "write_checkpoint",
    "read_checkpoint",
    "clear_checkpoint",
]

#: Value of the root attribute ``layout`` that marks a ratings store.
LAYOUT = "dask-coded-als/ratings"
#: Version of the layout written by this module; stores with a larger version are refused.
LAYOUT_VERSION = 1

#: Ratings per block when ``rows_per_chunk`` is not given (about 12 MiB of CSR data).
TARGET_RATINGS_PER_BLOCK = 1_000_000
#: Above this density a partial Gram sum is kept dense: adding dense arrays is then cheaper.


class RatingsStore:
    """A validated ratings store (see the module docstring for the layout).

    Create it with :func:`open_store`. Arrays are read on demand; the object holds only the path
    and the root attributes, so it is cheap to pickle and stays valid after :func:`write_factors`
    or :func:`compute_gram` added groups.
    """

    def __init__(self, path: Path, attrs: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self._attrs = dict(attrs)

    def __repr__(self) -> str:
        return (
            f"RatingsStore({str(self.path)!r}, n_users={self.n_users}, n_items={self.n_items}, "
            f"n_ratings={self.n_ratings})"
        )

    def __reduce__(self):  # cached ids must not travel to dask workers
        return (RatingsStore, (self.path, self._attrs))

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the root attributes."""
        return dict(self._attrs)

    @property
    def n_users(self) -> int:
        """Number of users (rows of R)."""
        return int(self._attrs["n_users"])

    @property
    def n_items(self) -> int:
        """Number of items (columns of R)."""
        return int(self._attrs["n_items"])

    @property
    def n_ratings(self) -> int:
        """Number of stored ratings (after removing duplicates)."""
        return int(self._attrs["n_ratings"])

    @property
    def has_timestamps(self) -> bool:
        """Whether ``ratings/timestamp`` exists."""
        return bool(self._attrs.get("has_timestamps", False))

    @cached_property
    def user_ids(self) -> np.ndarray:
        """Original user ids, index-aligned (int64, or an object array of str)."""
        return _read_ids(self.array("ids/users"))

    @cached_property
    def item_ids(self) -> np.ndarray:
        """Original item ids, index-aligned (int64, or an object array of str)."""
        return _read_ids(self.array("ids/items"))

    @cached_property
    def titles(self) -> np.ndarray | None:
        """Item titles aligned with :attr:`item_ids` (``""`` where unknown), or None."""
        if not self._attrs.get("has_titles", False):
            return None
        return _read_ids(self.array("ids/titles"))

    @property
    def has_gram(self) -> bool:
        """Whether :func:`compute_gram` has written ``gram/D``."""
        return (self.path / "gram" / "D" / "zarr.json").is_file()

    @property
    def has_factors(self) -> bool:
        """Whether :func:`write_factors` has written ``factors``."""
        return (self.path / "factors" / "zarr.json").is_file()

    def array(self, name: str) -> CheckedArray:
        """Open the array ``name`` (e.g. ``"ratings/item"``) read-only; a damaged chunk read
        from it is an InputError that names it."""
        try:
            arr = zarr.open_array(LocalStore(self.path, read_only=True), path=name, mode="r")
        except (FileNotFoundError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{self.path}: cannot open array {name!r} ({one_line(exc)})") from None
        return CheckedArray(arr, self.path, name)


def _read_ids(arr: CheckedArray) -> np.ndarray:
    values = arr[...]
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    # String arrays come back as numpy's StringDType; plain str objects are easier downstream.
    return np.array(values.tolist(), dtype=object)


StoreLike = RatingsStore | str | os.PathLike


def _as_store(store: StoreLike) -> RatingsStore:
    return store if isinstance(store, RatingsStore) else open_store(store)


def _expected_arrays(attrs: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """Required array -> (length, allowed dtype kinds)."""
    n_users, n_items, n_ratings = attrs["n_users"], attrs["n_items"], attrs["n_ratings"]

    def id_kinds(side: str) -> str:  # stores before per-side id types have one id_type
        return "i" if attrs.get(f"{side}_id_type", attrs.get("id_type")) == "int64" else "OTU"

    expected = {
        "ratings/indptr": (n_users + 1, "i"),
        "ratings/user": (n_ratings, "i"),
        "ratings/item": (n_ratings, "i"),
        "ratings/rating": (n_ratings, "f"),
        "by_item/indptr": (n_items + 1, "i"),
        "by_item/user": (n_ratings, "i"),
        "by_item/rating": (n_ratings, "f"),
        "ids/users": (n_users, id_kinds("user")),
        "ids/items": (n_items, id_kinds("item")),
    }
    if attrs.get("has_timestamps", False):
        expected["ratings/timestamp"] = (n_ratings, "i")
    if attrs.get("has_titles", False):
        expected["ids/titles"] = (n_items, "OTU")
    return expected


def _dtype_kind(arr: zarr.Array) -> str:
    try:
        return np.dtype(arr.dtype).kind
    except TypeError:
        return "T"


def open_store(path: str | os.PathLike) -> RatingsStore:
    """Open a ratings store and check its layout.

    Only metadata is read: the root attributes, and the shape and dtype of every required array.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory written by :func:`dask_coded_als.data.ingest.ingest`.

    Returns
    -------
    RatingsStore

    Raises
    ------
    InputError
        The path does not exist, is not a Zarr v3 group, is not a ratings store, has a newer
        layout version, or misses an array or has one of the wrong shape or dtype.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such store")
    if not p.is_dir():
        raise InputError(f"{p}: not a store (a store is a directory)")
    if not (p / "zarr.json").is_file():
        raise InputError(f"{p}: not a Zarr v3 store (no zarr.json)")
    try:
        root = zarr.open_group(LocalStore(p, read_only=True), mode="r")
        attrs = dict(root.attrs)
    except Exception as exc:  # zarr raises many types for damaged metadata
        raise InputError(f"{p}: cannot open the Zarr group ({one_line(exc)})") from None
    if attrs.get("layout") != LAYOUT:
        raise InputError(f"{p}: not a ratings store (root attribute layout is not {LAYOUT!r})")
    version = attrs.get("layout_version")
    if not isinstance(version, int) or version < 1:
        raise InputError(f"{p}: bad layout_version {version!r}")
    if version > LAYOUT_VERSION:
        raise InputError(
            f"{p}: layout version {version} is newer than this package reads ({LAYOUT_VERSION})"
        )
    for key in ("n_users", "n_items", "n_ratings"):
        value = attrs.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{p}: bad root attribute {key}={value!r}")
    unchecked = []
    for name, (length, kinds) in _expected_arrays(attrs).items():
        try:
            arr = root[name]
        except KeyError:
            raise InputError(f"{p}: missing array {name!r}") from None
        if not isinstance(arr, zarr.Array):
            raise InputError(f"{p}: {name!r} is not an array")
        if arr.shape != (length,):
            raise InputError(f"{p}: array {name!r} has shape {arr.shape}, expected ({length},)")
        if _dtype_kind(arr) not in kinds:
            raise InputError(f"{p}: array {name!r} has the wrong dtype {arr.dtype}")
        if not has_checksums(arr):
            unchecked.append(name)
    note_unchecked(p, unchecked)
    return RatingsStore(p, attrs)


def _check_csr(store: RatingsStore, indptr: np.ndarray, indices: np.ndarray, n_cols: int) -> None:
    """Cheap consistency checks: a damaged store must not become a wrong matrix silently."""
    if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        raise InputError(f"{store.path}: corrupt store (bad row pointer)")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
        raise InputError(f"{store.path}: corrupt store (index out of range)")


def ratings_matrix(store: StoreLike) -> sp.csr_matrix:
    """Read the whole ratings matrix R.

    Parameters
    ----------
    store : RatingsStore or path

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(n_users, n_items)``, float64, sorted indices, no duplicate entries. A stored
        rating of 0 stays an explicit entry.
    """
    st = _as_store(store)
    indptr = st.array("ratings/indptr")[...].astype(np.int64, copy=False)
    indices = st.array("ratings/item")[...]
    data = st.array("ratings/rating")[...].astype(np.float64)
    _check_csr(st, indptr, indices, st.n_items)
    mat = sp.csr_matrix((data, indices, indptr), shape=(st.n_users, st.n_items), copy=False)
    mat.has_sorted_indices = True
    return mat


def _load_block(
    path: str,
    group: str,
    row_lo: int,
    row_hi: int,
    lo: int,
    hi: int,
    n_cols: int,
    values: str | None = None,
) -> sp.csr_matrix:
    """Rows ``row_lo:row_hi`` of R (group ``ratings``) or R^T (group ``by_item``); with
    ``values``, the entries' values come from that array (in the group's order) instead."""
    store = LocalStore(path, read_only=True)

    def part(name: str, selection: slice) -> np.ndarray:
        arr = zarr.open_array(store, path=name, mode="r")
        return read(arr, selection, path, name)

    indptr = part(f"{group}/indptr", slice(row_lo, row_hi + 1))
    indices = part(f"{group}/{'item' if group == 'ratings' else 'user'}", slice(lo, hi))
    data = part(values or f"{group}/rating", slice(lo, hi)).astype(np.float64)
    indptr = indptr.astype(np.int64) - lo
    mat = sp.csr_matrix((data, indices, indptr), shape=(row_hi - row_lo, n_cols), copy=False)
    mat.has_sorted_indices = True
    return mat


def _row_bounds(indptr: np.ndarray, n_rows: int, rows_per_chunk: int | None) -> list[int]:
    """Row boundaries of the blocks: fixed size, or about TARGET_RATINGS_PER_BLOCK ratings each."""
    if n_rows == 0:
        return [0, 0]
    if rows_per_chunk is not None:
        step = int(rows_per_chunk)
        return [*range(0, n_rows, step), n_rows]
    nnz = int(indptr[-1])
    n_blocks = max(1, math.ceil(nnz / TARGET_RATINGS_PER_BLOCK))
    # Split where the cumulative count of ratings crosses multiples of nnz / n_blocks.
    cuts = np.searchsorted(indptr, np.arange(1, n_blocks) * (nnz / n_blocks))
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, n_rows - 1), [n_rows]]))
    return [int(b) for b in bounds]


def ratings_dask(
    store: StoreLike, rows_per_chunk: int | None = None, *, transpose: bool = False
) -> da.Array:
    """R (or R^T) as a dask array of ``scipy.sparse.csr_matrix`` row blocks.

    Each block is one task that reads its slice of the Zarr arrays, so nothing is loaded before
    compute. The dask array has a single chunk along the columns.

    Parameters
    ----------
    store : RatingsStore or path
    rows_per_chunk : int, optional
        Rows per block. Default: blocks of about :data:`TARGET_RATINGS_PER_BLOCK` ratings.
    transpose : bool, default False
        Return R^T (``n_items x n_users``, blocks of items) from the ``by_item`` arrays.

    Returns
    -------
    dask.array.Array
        float64, shape ``(n_users, n_items)`` (or transposed), chunks of CSR matrices.
    """
    st = _as_store(store)
    if rows_per_chunk is not None:
        check_int(rows_per_chunk, "rows_per_chunk", 1)
    group = "by_item" if transpose else "ratings"
    n_rows, n_cols = (st.n_items, st.n_users) if transpose else (st.n_users, st.n_items)
    indptr = st.array(f"{group}/indptr")[...].astype(np.int64, copy=False)
    bounds = _row_bounds(indptr, n_rows, rows_per_chunk)
    token = dask.base.tokenize(str(st.path), st.attrs.get("ingest_id"), group, bounds)
    meta = sp.csr_matrix((0, 0), dtype=np.float64)
    blocks = []
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        task = dask.delayed(_load_block, pure=True)(
            str(st.path.absolute()),
            group,
            r0,
            r1,
            int(indptr[r0]),
            int(indptr[r1]),
            n_cols,
            dask_key_name=f"load-{group}-{token}-{r0}",
        )
        blocks.append(da.from_delayed(task, shape=(r1 - r0, n_cols), dtype=np.float64, meta=meta))
    if len(blocks) == 1:
        return blocks[0]
    return da.concatenate(blocks, axis=0)


def _tmp_name(kind: str, name: str) -> str:
    return f"{kind}-{name}-{uuid.uuid4().hex[:12]}"


def _swap_in(root: Path, tmp: str, name: str) -> None:
    """Move group ``tmp`` to ``name`` with renames, replacing an existing ``name``."""
    target = root / name
    old = None
    if target.exists():
        old = root / _tmp_name("old", name)
        os.rename(target, old)
    try:
        os.rename(root / tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_group(
    st: RatingsStore,
    name: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    chunks: Mapping[str, tuple[int, ...]],
    array_attrs: Mapping[str, Any] | None = None,
    compressed: bool = True,
) -> None:
    """Write group ``name`` with ``arrays`` atomically (see the module docstring)."""
    tmp = _tmp_name("tmp", name)
    try:
        root = zarr.open_group(LocalStore(st.path), mode="r+")
        group = root.create_group(tmp, attributes=dict(attrs))
        for key, value in arrays.items():
            arr = create_array(
                group,
                key,
                shape=value.shape,
                dtype=value.dtype,
                chunks=chunks[key],
                compressed=compressed,
                attributes=dict(array_attrs or {}),
            )
            arr[...] = value
        _swap_in(st.path, tmp, name)
    except BaseException:
        shutil.rmtree(st.path / tmp, ignore_errors=True)
        raise


class _BlocksDone(dask.callbacks.Callback):
    """Calls ``progress(done, total)`` as dask's local schedulers finish the tasks named
    ``name``, and once more with ``total`` at the end (a distributed scheduler calls no local
    callbacks)."""

    def __init__(self, progress: Callable[[int, int], None] | None, name: str, total: int):
        super().__init__()
        self.progress, self.name, self.total, self.done = progress, name, total, 0

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if self.progress is not None and dask.utils.key_split(key) == self.name:
            self.done += 1
            self.progress(self.done, self.total)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self.progress is not None and exc[0] is None and self.done < self.total:
            self.progress(self.total, self.total)


def compute_gram(
    store: StoreLike,
    *,
    overwrite: bool = False,
    rows_per_chunk: int | None = None,
    split_every: int = 8,
    scheduler: str | None = "threads",
    column_block: int | None = None,
    client: Any = None,
    dtype: str = "float64",
    weighting: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray | None, bool]:
    """Compute the Gram matrix D of R and store it as ``gram/D``.

    D = R^T R (``n_items x n_items``) when ``n_users >= n_items``, else D = R R^T
    (``n_users x n_users``, flagged ``transposed``). With dask: one task per row block of R
    (or of R^T, read from the ``by_item`` arrays) computes the sparse product ``B_i^T B_i``; a tree
    reduction adds them (a partial sum turns dense once a quarter of it is filled). The dense R is
    never formed; only the result is dense.

    Parameters
    ----------
    store : RatingsStore or path
    overwrite : bool, default False
        Replace an existing ``gram`` group. Without it an existing one is an InputError.
    rows_per_chunk : int, optional
        Rows of R (or R^T) per block; see :func:`ratings_dask`.
    split_every : int, default 8
        Fan-in of the tree reduction.
    column_block : int, optional
        Compute D by blocks of this many columns (``X^T X[:, J]``, one task each) straight into
        one array. Chosen automatically (2048) when D is larger than
        :data:`GRAM_BY_COLUMNS_BYTES`, where a tree of dense partial sums would need several
        copies of D.
    scheduler : str or None, default "threads"
        Passed to ``dask.compute``. The default keeps the work in this process with dask's
        threaded scheduler even when a ``distributed.Client`` is active; ``None`` uses dask's
        current default (an active Client then runs the tasks, whose workers must see the store's
        file system).
    client : distributed.Client or None
        Compute D on this cluster instead (:func:`compute_gram_on_cluster`): the workers read
        the ratings from the store and write the blocks of D into it, so this process holds
        none of it. Its workers must see the store's file system.
    dtype : {"float64", "float32"}
        How D is stored (it is computed in float64 either way).
    weighting : Weighting, optional
        A fitted :class:`dask_coded_als.recsys.weighting.Weighting` (anything with a ``name`` and
        an ``apply(R)``): D is then formed from the weighted R, read whole into memory, by
        column blocks, and the group records the weighting's name.
    progress : callable, optional
        Called as ``progress(done, total)`` as the blocks' products finish (row blocks, column
        blocks with ``column_block``, pairs of blocks with ``client``); with a distributed
        scheduler and no ``client`` only at the end.

    Returns
    -------
    D : numpy.ndarray or None
        float64, symmetric, shape ``(l, l)`` with ``l = min(n_users, n_items)``; None when
        computed on a cluster (read it with :func:`gram_array`).
    transposed : bool
        True when D = R R^T.
    """
    if client is not None:
        transposed = compute_gram_on_cluster(
            store, client, overwrite=overwrite, dtype=dtype, weighting=weighting, progress=progress
        )
        return None, transposed
    st = _as_store(store)
    if split_every < 2:
        raise InputError(f"split_every must be >= 2, not {split_every!r}")
    if st.has_gram and not overwrite:
        raise InputError(f"{st.path}: gram exists; pass overwrite=True to replace it")
    transposed = st.n_users < st.n_items
    side_l = min(st.n_users, st.n_items)
    weighted = weighting is not None and weighting.name != "none"
    if column_block is None and (weighted or side_l * side_l * 8 > GRAM_BY_COLUMNS_BYTES):
        # A weighting may need statistics of all of R (bm25's idf), so R is weighed whole.
        column_block = 2048
    if column_block is not None:
        R = ratings_matrix(st)
        if weighted:
            R = weighting.apply(R)
        n_blocks = math.ceil(side_l / int(column_block))
        # the name dask gives gram_by_columns' tasks of _column_block_gram
        with _BlocksDone(progress, "column_block_gram", n_blocks):
            gram = gram_by_columns(R.T.tocsr() if transposed else R, int(column_block), scheduler)
    else:
        blocks = ratings_dask(st, rows_per_chunk, transpose=transposed)
        parts = [dask.delayed(block_gram, pure=True)(b) for b in blocks.to_delayed().ravel()]
        node = dask.delayed(sum_parts, pure=True)
        with _BlocksDone(progress, "block_gram", len(parts)):
            (result,) = dask.compute(tree_sum(parts, node, split_every), scheduler=scheduler)
        gram = result.toarray() if sp.issparse(result) else np.asarray(result, dtype=np.float64)
    attrs = _gram_attrs(st, transposed, weighting)
    # Uncompressed: the fit reads D once per worker's shard, and a dense Gram matrix hardly
    # compresses, so decompression would only cost time.
    _write_group(
        st,
        "gram",
        {"D": gram.astype(_gram_dtype(dtype), copy=False)},
        attrs,
        {"D": _gram_chunks(gram.shape[0])},
        {"transposed": transposed},
        compressed=False,
    )
    return gram, transposed


def _gram_attrs(st: RatingsStore, transposed: bool, weighting: Any) -> dict[str, Any]:
    """What the gram group records of the D it holds: which product of which ingest, and of
    R weighted how."""
    weighted = weighting is not None and weighting.name != "none"
    return {
        "transposed": transposed,
        "n_users": st.n_users,
        "n_items": st.n_items,
        "ingest_id": st.attrs.get("ingest_id"),
        "weighting": weighting.name if weighted else "none",
    }


def _gram_dtype(dtype: Any) -> np.dtype:
    if str(dtype) not in ("float64", "float32"):
        raise InputError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return np.dtype(str(dtype))


#: Side of the blocks of D that :func:`compute_gram_on_cluster` computes per task: 2048 x 2048
#: float64 is 32 MiB.
GRAM_BLOCK = 2048
#: Rows of a chunk of the stored D (its columns: GRAM_BLOCK): the workers that build their
#: shards read D in bands of whole rows, chunk by chunk, each chunk once; a task's block is
#: 16 whole chunks, so no two tasks write to one chunk.
GRAM_CHUNK_ROWS = 128


def _gram_chunks(side: int, block: int = GRAM_BLOCK) -> tuple[int, int]:
    """Chunks of a stored D: GRAM_CHUNK_ROWS rows by a multiple of that many columns (a task's
    whole block, or D's side rounded up), so that square blocks of a chunk's width are whole
    chunks, as verify reads them; square when ``block`` is no multiple of the rows."""
    rows = min(GRAM_CHUNK_ROWS, block, side)
    cols = min(block, -(-side // rows) * rows)
    return (rows if cols % rows == 0 else cols), cols


def _gram_pair_task(
    path: str,
    group: str,
    rows_i: tuple,
    rows_j: tuple,
    n_cols: int,
    out: str,
    dtype: str,
    values: str | None = None,
) -> None:
    """On a worker: read rows I and J of X^T from the store, write D[I, J] and D[J, I]."""
    a = _load_block(path, group, *rows_i, n_cols, values)
    b = a if rows_j == rows_i else _load_block(path, group, *rows_j, n_cols, values)
    block = pair_block(a, b).astype(dtype, copy=False)
    D = zarr.open_array(LocalStore(path), path=out, mode="r+")
    (i0, i1), (j0, j1) = rows_i[:2], rows_j[:2]
    D[i0:i1, j0:j1] = block
    if rows_j != rows_i:
        D[j0:j1, i0:i1] = block.T


def compute_gram_on_cluster(
    store: StoreLike,
    client: Any,
    *,
    overwrite: bool = False,
    block: int = GRAM_BLOCK,
    dtype: str = "float64",
    weighting: Any = None,
    timeout: float = 3600.0,
    progress: Callable[[int, int], None] | None = None,
) -> bool:
    """Compute D = X^T X on ``client``'s cluster, straight into the store's ``gram/D``.

    One task per pair of blocks I <= J of D's side reads rows I and J of X^T (the ``by_item``
    arrays for D = R^T R, the ``ratings`` arrays for D = R R^T) from the store, forms
    ``D[I, J]`` (:func:`dask_coded_als.data.gram.pair_block`) and writes it and its transpose
    into their chunks. The blocks equal those of :func:`compute_gram`'s column blocks exactly.
    The group is written under a temporary name and swapped in at the end, as every group.

    With a ``weighting`` (as for :func:`compute_gram`) this process weighs R and writes the
    weighted values beside D's temporary array, in the order of X^T's entries, and the workers
    read those instead of the ratings.

    Returns
    -------
    bool
        True when D = R R^T.
    """
    from distributed import as_completed

    st = _as_store(store)
    if st.has_gram and not overwrite:
        raise InputError(f"{st.path}: gram exists; pass overwrite=True to replace it")
    check_int(block, "block", 1)
    check_workers_read(st, client)
    transposed = st.n_users < st.n_items
    group, n_cols = ("ratings", st.n_items) if transposed else ("by_item", st.n_users)
    side = min(st.n_users, st.n_items)
    indptr = st.array(f"{group}/indptr")[...].astype(np.int64, copy=False)
    starts = list(range(0, side, block))
    rows = [
        (a, min(a + block, side), int(indptr[a]), int(indptr[min(a + block, side)])) for a in starts
    ]
    tmp = _tmp_name("tmp", "gram")
    weighted = weighting is not None and weighting.name != "none"
    attrs = _gram_attrs(st, transposed, weighting)
    try:
        root = zarr.open_group(LocalStore(st.path), mode="r+")
        created = root.create_group(tmp, attributes=attrs)
        create_array(
            created,
            "D",
            shape=(side, side),
            dtype=_gram_dtype(dtype),
            chunks=_gram_chunks(side, block),
            attributes={"transposed": transposed},
            compressed=False,
        )
        values = None
        if weighted:
            W = weighting.apply(ratings_matrix(st))
            X_t = W if transposed else W.T.tocsr()
            X_t.sort_indices()
            if not np.array_equal(X_t.indptr, indptr):
                raise InputError(f"the {weighting.name} weighting changed which ratings exist")
            weighted_values = create_array(
                created,
                "values",
                shape=X_t.data.shape,
                dtype=np.float64,
                chunks=(max(1, min(TARGET_RATINGS_PER_BLOCK, X_t.nnz)),),
            )
            weighted_values[...] = X_t.data
            values = f"{tmp}/values"
            del W, X_t
        futures = [
            client.submit(
                _gram_pair_task,
                str(st.path.absolute()),
                group,
                rows[i],
                rows[j],
                n_cols,
                f"{tmp}/D",
                str(_gram_dtype(dtype)),
                values,
                pure=False,
                key=f"gram-block-{i}-{j}-{tmp}",
            )
            for i in range(len(rows))
            for j in range(i, len(rows))
        ]
        for done, future in enumerate(as_completed(futures, timeout=timeout, loop=client.loop), 1):
            if future.status != "finished":
                future.result()  # raises the task's error (or that it was lost)
            if progress is not None:
                progress(done, len(futures))
        if values is not None:
            shutil.rmtree(st.path / values)  # the weighted values served D's tasks only
        _swap_in(st.path, tmp, "gram")
    except BaseException:
        shutil.rmtree(st.path / tmp, ignore_errors=True)
        raise
    return transposed


def _open_on_worker(path: str) -> str | None:
    try:
        open_store(path)
    except Exception as exc:
        return one_line(exc)
    return None


def check_workers_read(store: StoreLike, client: Any, timeout: float = 30.0) -> None:
    """Raise :class:`UnreachableStoreError` unless every worker of ``client`` opens the store
    (at the same path: the workers must share this process's file system)."""
    from dask_coded_als.engine.cluster import probe_workers

    st = _as_store(store)
    found = probe_workers(client, _open_on_worker, str(st.path.absolute()), timeout=timeout)
    failing = {address: why for address, why in found.items() if why is not None}
    if failing:
        address, why = next(iter(failing.items()))
        raise UnreachableStoreError(
            f"{len(failing)} of {len(found)} workers cannot open the store {st.path} "
            f"(e.g. {address}: {why}); they must share this machine's file system"
        )


class GramSource:
    """Where a stored D is, in a form that travels to workers: :meth:`open_array` gives it there
    as a read-only array that reads from disk on slicing (so a worker that sees the store's file
    system can build its coded shard from it block by block)."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], dtype: str) -> None:
        self.path = str(Path(path).resolve())
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    def open_array(self) -> CheckedArray:
        arr = zarr.open_array(LocalStore(self.path, read_only=True), path="gram/D", mode="r")
        return CheckedArray(arr, self.path, "gram/D")

    def __repr__(self) -> str:
        return f"GramSource({self.path!r}, shape={self.shape})"


def gram_source(store: StoreLike, weighting: str = "none") -> GramSource:
    """The stored D as a :class:`GramSource` (checked as :func:`gram_array` checks it)."""
    gram, _ = gram_array(store, weighting)
    return GramSource(_as_store(store).path, gram.shape, str(gram.dtype))


def gram_array(store: StoreLike, weighting: str = "none") -> tuple[CheckedArray, bool]:
    """The stored Gram matrix as a read-only Zarr array (read from disk on slicing, a damaged
    chunk named in an InputError).

    Parameters
    ----------
    store : RatingsStore or path
    weighting : str, default "none"
        The weighting of R the caller needs D of; a D of another weighting is refused.

    Returns
    -------
    D : CheckedArray
    transposed : bool

    Raises
    ------
    InputError
        No ``gram`` group, one left from another ingest or of another weighting, or one of the
        wrong shape.
    """
    st = _as_store(store)
    if not st.has_gram:
        raise InputError(f"{st.path}: no gram matrix; compute it first")
    group = zarr.open_group(LocalStore(st.path, read_only=True), path="gram", mode="r")
    attrs = dict(group.attrs)
    if attrs.get("ingest_id") != st.attrs.get("ingest_id"):
        raise InputError(f"{st.path}: the gram matrix belongs to another ingest; recompute it")
    stored = attrs.get("weighting", "none")
    if stored != weighting:
        raise InputError(
            f"{st.path}: the gram matrix is of the ratings with weighting={stored!r}, not "
            f"{weighting!r}; recompute it"
        )
    gram = CheckedArray(group["D"], st.path, "gram/D")
    expected = min(st.n_users, st.n_items)
    if gram.shape != (expected, expected):
        raise InputError(f"{st.path}: gram/D has shape {gram.shape}, expected {expected} square")
    return gram, bool(attrs["transposed"])


def gram_weighting(store: StoreLike) -> str | None:
    """The weighting of R the stored Gram matrix was formed from, or None without one."""
    st = _as_store(store)
    if not st.has_gram:
        return None
    group = zarr.open_group(LocalStore(st.path, read_only=True), path="gram", mode="r")
    return str(group.attrs.get("weighting", "none"))


def load_gram(store: StoreLike) -> tuple[np.ndarray, bool]:
    """Read the Gram matrix written by :func:`compute_gram` into memory.

    Returns
    -------
    D : numpy.ndarray
    transposed : bool

    Raises
    ------
    InputError
        As :func:`gram_array`.
    """
    gram, transposed = gram_array(store)
    return gram[...], transposed


def write_factors(
    store: StoreLike,
    U: np.ndarray,
    V: np.ndarray,
    attrs: Mapping[str, Any] | None = None,
    item_arrays: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Store the factors ``U`` (``n_users x d``) and ``V`` (``n_items x d``) as ``factors/``.

    The group is written under a temporary name and renamed into place (see the module
    docstring), replacing earlier factors, so a failure never leaves half-written factors.

    Parameters
    ----------
    store : RatingsStore or path
    U, V : array_like
        Real factors with the same number of columns d >= 1; stored as float64.
    attrs : mapping, optional
        JSON-serializable metadata (parameters, history), stored as the group's attributes.
    item_arrays : mapping of str to array_like, optional
        More arrays of one value per item (a fitted weighting's item weights), stored beside
        ``V`` as float64 and read back with :func:`read_factor_array`.

    Raises
    ------
    InputError
        Shapes that do not match the store, non-finite values, or attrs that JSON cannot encode.
    """
    st = _as_store(store)
    u = np.asarray(U)
    v = np.asarray(V)
    if u.dtype.kind not in "iuf" or v.dtype.kind not in "iuf":
        raise InputError(f"factors must be real arrays, not {u.dtype} and {v.dtype}")
    u = u.astype(np.float64)
    v = v.astype(np.float64)
    if u.ndim != 2 or u.shape[0] != st.n_users:
        raise InputError(f"U has shape {u.shape}, expected ({st.n_users}, d)")
    if v.ndim != 2 or v.shape[0] != st.n_items:
        raise InputError(f"V has shape {v.shape}, expected ({st.n_items}, d)")
    if u.shape[1] != v.shape[1] or u.shape[1] < 1:
        raise InputError(f"U and V need the same number d >= 1 of columns: {u.shape}, {v.shape}")
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise InputError("factors contain NaN or infinite values")
    meta = dict(attrs or {})
    try:
        # Round trip through JSON: what is stored is exactly what read_factors returns.
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise InputError(f"factor attrs are not JSON-serializable ({one_line(exc)})") from None
    d = u.shape[1]
    arrays = {"U": u, "V": v}
    chunks = {"U": (max(1, min(u.shape[0], 65536)), d), "V": (max(1, min(v.shape[0], 65536)), d)}
    for name, values in (item_arrays or {}).items():
        extra = np.asarray(values, dtype=np.float64)
        if name in arrays or extra.shape != (st.n_items,) or not np.isfinite(extra).all():
            raise InputError(f"item array {name!r} must be {st.n_items} finite values")
        arrays[name] = extra
        chunks[name] = (max(1, min(st.n_items, 65536)),)
    group_attrs = {"attrs": meta, "ingest_id": st.attrs.get("ingest_id")}
    _write_group(st, "factors", arrays, group_attrs, chunks)


def read_factors(store: StoreLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read the factors written by :func:`write_factors`.

    Returns
    -------
    U : numpy.ndarray
        float64, ``(n_users, d)``.
    V : numpy.ndarray
        float64, ``(n_items, d)``.
    attrs : dict
        The metadata given to :func:`write_factors`.
    """
    st = _as_store(store)
    if not st.has_factors:
        raise InputError(f"{st.path}: no factors stored")
    group = zarr.open_group(LocalStore(st.path, read_only=True), path="factors", mode="r")
    meta = dict(group.attrs)
    if meta.get("ingest_id") != st.attrs.get("ingest_id"):
        raise InputError(f"{st.path}: the factors belong to another ingest")
    U, V = (read(group[key], ..., st.path, f"factors/{key}") for key in ("U", "V"))
    return U, V, dict(meta.get("attrs", {}))


def read_factor_array(store: StoreLike, name: str) -> np.ndarray | None:
    """The item array ``name`` written with the factors (:func:`write_factors`), or None."""
    st = _as_store(store)
    if not st.has_factors:
        raise InputError(f"{st.path}: no factors stored")
    group = zarr.open_group(LocalStore(st.path, read_only=True), path="factors", mode="r")
    if name not in group:
        return None
    return np.asarray(group[name][...], dtype=np.float64)


def write_recommendations(
    store: StoreLike, items: np.ndarray, scores: np.ndarray, attrs: Mapping[str, Any]
) -> None:
    """Store every user's top-n as ``recommendations/`` (replaced atomically as a whole).

    Parameters
    ----------
    store : RatingsStore or path
    items : (n_users, n) int array
        Item indices per user, best first; -1 where fewer than n items were left.
    scores : (n_users, n) float array
        Their scores (NaN where the item is -1).
    attrs : mapping
        JSON metadata (n, whether seen items were excluded).
    """
    st = _as_store(store)
    items = np.asarray(items, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if items.ndim != 2 or items.shape[0] != st.n_users or scores.shape != items.shape:
        raise InputError(
            f"recommendations must be two ({st.n_users}, n) arrays, got {items.shape} and "
            f"{scores.shape}"
        )
    rows = max(1, min(st.n_users, 65536))
    group_attrs = {"attrs": dict(attrs), "ingest_id": st.attrs.get("ingest_id")}
    chunks = {"items": (rows, items.shape[1]), "scores": (rows, items.shape[1])}
    _write_group(st, "recommendations", {"items": items, "scores": scores}, group_attrs, chunks)


def read_recommendations(store: StoreLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The arrays and attrs written by :func:`write_recommendations`."""
    st = _as_store(store)
    if not (st.path / "recommendations" / "zarr.json").is_file():
        raise InputError(f"{st.path}: no recommendations stored")
    group = zarr.open_group(LocalStore(st.path, read_only=True), path="recommendations", mode="r")
    meta = dict(group.attrs)
    if meta.get("ingest_id") != st.attrs.get("ingest_id"):
        raise InputError(f"{st.path}: the recommendations belong to another ingest")
    return group["items"][...], group["scores"][...], dict(meta.get("attrs", {}))


def write_checkpoint(store: StoreLike, B: np.ndarray, attrs: Mapping[str, Any]) -> None:
    """Store a fit's state as ``checkpoint/`` (the factor ``B`` and JSON ``attrs``), atomically.

    The group is replaced as a whole (see the module docstring): a crash while writing leaves the
    previous checkpoint intact.
    """
    st = _as_store(store)
    b = np.asarray(B, dtype=np.float64)
    if b.ndim != 2 or not np.isfinite(b).all():
        raise InputError("a checkpoint needs a finite 2-D factor")
    try:
        meta = json.loads(json.dumps(dict(attrs)))
    except (TypeError, ValueError) as exc:
        raise InputError(f"checkpoint attrs are not JSON-serializable ({one_line(exc)})") from None
    group_attrs = {"attrs": meta, "ingest_id": st.attrs.get("ingest_id")}
    _write_group(st, "checkpoint", {"B": b}, group_attrs, {"B": b.shape})


def read_checkpoint(store: StoreLike) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The state written by :func:`write_checkpoint`, or None when there is none.

    Raises
    ------
    InputError
        A checkpoint that cannot be read, belongs to another ingest, or holds non-finite values.
    """
    st = _as_store(store)
    if not (st.path / "checkpoint").exists():
        return None
    try:
        group = zarr.open_group(LocalStore(st.path, read_only=True), path="checkpoint", mode="r")
        meta = dict(group.attrs)
        B = np.asarray(read(group["B"], ..., st.path, "checkpoint/B"), dtype=np.float64)
    except InputError:
        raise  # a damaged chunk, named
    except Exception as exc:  # any other failure to read it means the checkpoint is damaged
        raise InputError(f"{st.path}: the checkpoint is corrupt ({one_line(exc)})") from None
    if meta.get("ingest_id") != st.attrs.get("ingest_id"):
        raise InputError(f"{st.path}: the checkpoint belongs to another ingest")
    if B.ndim != 2 or not np.isfinite(B).all():
        raise InputError(f"{st.path}: the checkpoint is corrupt (its factor is not finite 2-D)")
    return B, dict(meta.get("attrs", {}))


def clear_checkpoint(store: StoreLike) -> None:
    """Remove ``checkpoint/`` (after a fit has written its factors)."""
    st = _as_store(store)
    shutil.rmtree(st.path / "checkpoint", ignore_errors=True)
