"""Checking a ratings store: every chunk, every shape, and the layout's own invariants.

- :func:`verify_store` reads every chunk of every array (checksums, missing chunks), checks the
  shapes, and the invariants the layout promises: the row pointers and indices of ``ratings``
  and ``by_item`` in range and ``by_item`` the transpose of ``ratings``, ids unique, D finite,
  symmetric, its diagonal the column sums of squares of R (row sums when D = R R^T) and D x
  equal to R^T (R x) for a random x, factors and checkpoint finite and of the store's shapes.
  It is what ``dask-coded-als verify`` runs: one line per problem.
- :func:`check_gram` is the cheap part, for a fit: D's diagonal chunks (the diagonal against R)
  and a few random off-diagonal chunks, each compared with its mirror.

Comparisons allow for rounding (:data:`RTOL` of the Cauchy-Schwarz bound
``|D_ij| <= sqrt(D_ii D_jj)``); a bit flipped below that is the checksums' to find.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr
from zarr.storage import LocalStore

from dask_coded_als._util import one_line
from dask_coded_als.data.checksums import (
    CheckedArray,
    UncheckedStoreWarning,
    chunk_slices,
    damaged,
    has_checksums,
    hint,
    read_chunk,
    verify_chunks,
)
from dask_coded_als.data.store import RatingsStore, open_store
from dask_coded_als.errors import InputError

__all__ = ["RTOL", "PROBES", "Report", "check_gram", "verify_store"]

#: Relative tolerance of every comparison of D with R (of sqrt(D_ii D_jj) for entry (i, j)):
#: far above the rounding of sums of products, far below a flipped exponent or high mantissa bit.
RTOL = 1e-9
#: Random off-diagonal chunks of D (each with its mirror) that :func:`check_gram` compares.
PROBES = 4


@dataclass
class Report:
    """What :func:`verify_store` found: problems (one line each), notes, and how much it read."""

    path: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    arrays: int = 0
    chunks: int = 0

    @property
    def clean(self) -> bool:
        """No problem found."""
        return not self.problems


def verify_store(path: str | os.PathLike) -> Report:
    """Read every chunk of a ratings store and check its layout's invariants.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Report
        ``problems`` holds one line per damaged or missing chunk, wrong shape, leftover of an
        interrupted write and broken invariant.

    Raises
    ------
    InputError
        The path is not a ratings store at all (see :func:`~dask_coded_als.data.store.open_store`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedStoreWarning)  # the report notes it instead
        st = open_store(path)
    report = Report(st.path)
    try:
        root = zarr.open_group(LocalStore(st.path, read_only=True), mode="r")
        members = sorted(root.members(max_depth=None), key=lambda m: m[0])
    except Exception as exc:  # damaged metadata of a group or an array
        report.problems.append(f"{st.path}: cannot list the store's arrays ({one_line(exc)})")
        return report
    arrays: dict[str, zarr.Array] = {}
    for name, member in members:
        top = name.split("/", 1)[0]
        if top.startswith(("tmp-", "old-")):
            if "/" not in name:
                report.problems.append(_leftover(st.path, name))
        elif isinstance(member, zarr.Array):
            arrays[name] = member
    report.arrays = len(arrays)
    unchecked = [name for name, arr in arrays.items() if not has_checksums(arr)]
    if unchecked:
        groups = sorted({name.split("/", 1)[0] + "/" for name in unchecked})
        which = "its arrays" if len(unchecked) == len(arrays) else ", ".join(groups)
        report.notes.append(
            f"{st.path}: written before checksums, {which} carry none: only the invariants "
            "are checked there (ingest again to add them)"
        )
    values = {
        name: _read_whole(arr, st.path, name, report)
        for name, arr in arrays.items()
        if name != "gram/D"
    }
    R = _check_ratings(st, values, report)
    if "gram/D" in arrays:
        _check_gram_group(st, arrays["gram/D"], R, report)
    _check_factors(st, values, report)
    return report


def _leftover(path: Path, name: str) -> str:
    kind, group = name.split("-")[:2]
    if kind == "tmp":
        return f"{path}: {name}/ is an unfinished write of {group}/; remove it"
    return (
        f"{path}: {name}/ is the previous {group}/ left by an interrupted replacement; remove it "
        f"(or, if {group}/ is missing, rename it to {group})"
    )


def _read_whole(arr: zarr.Array, path: Path, name: str, report: Report) -> np.ndarray | None:
    """The array read chunk by chunk (each counted, each problem reported); None if damaged."""
    out = None
    ok = True
    for chunk, part, problem in verify_chunks(arr, path, name):
        report.chunks += 1
        if problem is not None:
            report.problems.append(problem)
            ok = False
            continue
        if out is None:
            out = np.empty(arr.shape, dtype=part.dtype)
        out[chunk_slices(arr, chunk)] = part
    if out is None and ok:  # no chunk at all: an empty array
        out = np.empty(arr.shape, dtype=np.asarray(arr[...]).dtype)
    return out if ok else None


def _pointer_problem(indptr: np.ndarray, n_entries: int) -> str | None:
    if len(indptr) == 0 or indptr[0] != 0 or indptr[-1] != n_entries:
        return f"does not run from 0 to {n_entries}"
    if np.any(np.diff(indptr) < 0):
        return f"decreases at row {int(np.argmax(np.diff(indptr) < 0))}"
    return None


def _check_ratings(st: RatingsStore, values: dict, report: Report) -> sp.csr_matrix | None:
    """The invariants of ``ratings``, ``by_item`` and ``ids``; R when they hold."""
    bad = report.problems

    def problem(name: str, what: str) -> None:
        bad.append(f"{st.path}: {name} {what}; {hint(name)}")

    ok = True
    n = {"users": st.n_users, "items": st.n_items}
    for group, cols, col_name in (("ratings", "items", "item"), ("by_item", "users", "user")):
        indptr, index = values.get(f"{group}/indptr"), values.get(f"{group}/{col_name}")
        rating = values.get(f"{group}/rating")
        if indptr is None or index is None or rating is None:
            ok = False
            continue
        why = _pointer_problem(indptr, st.n_ratings)
        if why is not None:
            problem(f"{group}/indptr", why)
            ok = False
        if len(index) and (index.min() < 0 or index.max() >= n[cols]):
            problem(f"{group}/{col_name}", f"has indices outside 0..{n[cols] - 1}")
            ok = False
        if not np.all(np.isfinite(rating)):
            problem(f"{group}/rating", "holds NaN or infinite ratings")
            ok = False
    user = values.get("ratings/user")
    indptr = values.get("ratings/indptr")
    if ok and user is not None:
        rows = np.repeat(np.arange(st.n_users), np.diff(indptr))
        if not np.array_equal(user, rows):
            problem("ratings/user", "does not match ratings/indptr")
            ok = False
    R = None
    if ok:
        R = sp.csr_matrix(
            (
                values["ratings/rating"].astype(np.float64),
                values["ratings/item"],
                values["ratings/indptr"].astype(np.int64),
            ),
            shape=(st.n_users, st.n_items),
        )
        if not R.has_canonical_format:
            problem("ratings/item", "is not sorted without duplicates within each user")
        T = R.T.tocsr()
        T.sort_indices()
        if not (
            np.array_equal(T.indptr, values["by_item/indptr"])
            and np.array_equal(T.indices, values["by_item/user"])
            and np.array_equal(T.data, values["by_item/rating"].astype(np.float64))
        ):
            problem("by_item/user", "and by_item/rating are not the transpose of ratings/")
    for side in ("users", "items"):
        ids = values.get(f"ids/{side}")
        if ids is not None and len(set(ids.tolist())) != len(ids):
            problem(f"ids/{side}", "holds an id twice")
    return R


def _check_gram_group(st: RatingsStore, D: zarr.Array, R: sp.csr_matrix | None, report: Report):
    """gram/: attributes, shape, every chunk, and D against R."""
    bad = report.problems
    attrs = _group_attrs(st, "gram")
    side = min(st.n_users, st.n_items)
    transposed = st.n_users < st.n_items
    if attrs.get("ingest_id") != st.attrs.get("ingest_id"):
        bad.append(f"{st.path}: gram/ belongs to another ingest; {hint('gram/D')}")
        return
    if attrs.get("transposed") != transposed:
        bad.append(
            f"{st.path}: gram/ says transposed={attrs.get('transposed')!r}, expected "
            f"{transposed}; {hint('gram/D')}"
        )
        return
    if D.shape != (side, side):
        bad.append(
            f"{st.path}: gram/D has shape {D.shape}, expected ({side}, {side}); {hint('gram/D')}"
        )
        return
    tiling = _tiled_chunks(st.path, D)
    if tiling is not None:
        bad.append(tiling)
        return
    _scan_gram(st.path, D, _factor_of_gram(R, transposed), transposed, report)


def _tiled_chunks(path: Path, D: zarr.Array) -> str | None:
    """The problem of a D whose chunks do not tile square blocks of a chunk's width (the scan
    reads such blocks and their mirrors)."""
    rows, cols = D.chunks
    if cols % rows == 0:
        return None
    return (
        f"{path}: gram/D has chunks {D.chunks}, the layout's have a multiple of the rows as "
        f"columns; {hint('gram/D')}"
    )


def _factor_of_gram(R: sp.csr_matrix | None, transposed: bool) -> sp.csc_matrix | None:
    """X with D = X^T X (R, or R^T when D = R R^T), by columns."""
    if R is None:
        return None
    return (R.T if transposed else R).tocsc()


def _scan_gram(
    path: Path,
    D: zarr.Array,
    X: sp.csc_matrix | None,
    transposed: bool,
    report: Report,
    pairs: list[tuple[int, int]] | None = None,
) -> None:
    """Read D's chunks once each: checksums, finite, symmetric (the diagonal blocks, then the
    off-diagonal blocks (a, b), a < b, of ``pairs`` (all by default) with their mirrors); then
    D's diagonal against X = R (R^T when D = R R^T), and, when every chunk was read, D x for a
    random x against X^T (X x). Nothing is compared with X once a problem is found in D.

    A block is square, a chunk wide: the chunks of rows of a chunk's width in one column of
    chunks (one chunk when chunks are square, the name problems use)."""
    n, step = D.shape[0], D.chunks[1]
    per_block = D.chunks[1] // D.chunks[0]
    g = D.cdata_shape[1]
    name = "chunk" if per_block == 1 else "block"
    every = pairs is None
    if pairs is None:
        pairs = [(a, b) for a in range(g) for b in range(a + 1, g)]
    x = np.random.default_rng().standard_normal(n)
    Dx = np.zeros(n)
    diag = np.full(n, np.nan)
    sound = True  # no problem found in D yet: then compare it with R

    def chunk(a: int, b: int) -> np.ndarray | None:
        """Block (a, b), or None when one of its chunks is damaged (reported)."""
        nonlocal sound
        parts = []
        for row in range(a * per_block, min((a + 1) * per_block, D.cdata_shape[0])):
            report.chunks += 1
            part, problem = read_chunk(D, path, "gram/D", (row, b))
            if problem is None and not np.all(np.isfinite(part)):
                part, problem = None, damaged(path, "gram/D", (row, b), "NaN or infinite values")
            if problem is not None:
                report.problems.append(problem)
                sound = False
            parts.append(part)
        if any(part is None for part in parts):
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def symmetric(a: int, b: int, upper: np.ndarray, lower: np.ndarray) -> None:
        nonlocal sound
        rows, cols = _span(a, step, n), _span(b, step, n)
        diff = np.abs(upper - lower.T)
        if not diff.any():
            return  # exactly symmetric, as D is computed
        if np.isnan(diag[rows]).any() or np.isnan(diag[cols]).any():
            return  # a diagonal chunk is damaged (reported): no scale to compare with
        scale = np.sqrt(np.abs(diag))
        off = ~(diff <= RTOL * np.outer(scale[rows], scale[cols]))
        if a == b:
            off = np.triu(off, 1)  # (i, j) and (j, i) are one problem
        if np.any(off):
            sound = False
            i, j = (int(k) for k in np.argwhere(off)[0])
            where = f"{name} {a},{a}" if a == b else f"{name}s {a},{b} and {b},{a}"
            report.problems.append(
                f"{path}: gram/D is not symmetric in {where}: "
                f"D[{rows.start + i}, {cols.start + j}] = {upper[i, j]:.6g} but "
                f"D[{cols.start + j}, {rows.start + i}] = {lower[j, i]:.6g} "
                f"({int(off.sum())} entries); {hint('gram/D')}"
            )

    for a in range(g):
        rows = _span(a, step, n)
        block = chunk(a, a)
        if block is not None:
            diag[rows] = np.diag(block)
            symmetric(a, a, block, block)
            Dx[rows] += block @ x[rows]
    for a, b in pairs:
        rows, cols = _span(a, step, n), _span(b, step, n)
        upper, lower = chunk(a, b), chunk(b, a)
        if upper is None or lower is None:
            continue
        symmetric(a, b, upper, lower)
        Dx[rows] += upper @ x[cols]
        Dx[cols] += lower @ x[rows]
    if X is None or not sound:
        return  # what is wrong is said; comparing with R would only say it again
    expected = np.asarray(X.multiply(X).sum(axis=0)).ravel()
    wrong = ~(np.abs(diag - expected) <= RTOL * expected)
    if np.any(wrong):
        i = int(np.argmax(wrong))
        sums = "row" if transposed else "column"
        report.problems.append(
            f"{path}: gram/D's diagonal differs from the {sums} sums of squares of R at "
            f"{int(wrong.sum())} entries (D[{i}, {i}] = {diag[i]:.6g}, R gives "
            f"{expected[i]:.6g}); {hint('gram/D')}"
        )
        return
    if not every:
        return
    y = X @ x
    exact = X.T @ y
    root = np.sqrt(expected)
    # |(D x)_i - (X^T X x)_i| is rounding below RTOL sqrt(D_ii) (||X x|| + sum_j sqrt(D_jj)|x_j|)
    wrong = ~(np.abs(Dx - exact) <= RTOL * root * (np.linalg.norm(y) + root @ np.abs(x)))
    if np.any(wrong):
        i = int(np.argmax(wrong))
        report.problems.append(
            f"{path}: gram/D times a random vector differs from the product through R in "
            f"{int(wrong.sum())} rows (row {i}: {Dx[i]:.6g}, R gives {exact[i]:.6g}); "
            f"{hint('gram/D')}"
        )


def _span(a: int, step: int, n: int) -> slice:
    """The rows (or columns) of chunk ``a`` of a dimension of ``n`` in chunks of ``step``."""
    return slice(a * step, min((a + 1) * step, n))


def _group_attrs(st: RatingsStore, group: str) -> dict[str, Any]:
    return dict(zarr.open_group(LocalStore(st.path, read_only=True), path=group, mode="r").attrs)


def _check_factors(st: RatingsStore, values: dict, report: Report) -> None:
    """factors/ and checkpoint/: of this ingest, of the store's shapes, finite."""
    bad = report.problems
    side = min(st.n_users, st.n_items)
    for group, shapes in (
        ("factors", {"U": st.n_users, "V": st.n_items}),
        ("checkpoint", {"B": side}),
    ):
        if not (st.path / group).is_dir():
            continue
        try:
            attrs = _group_attrs(st, group)
        except Exception as exc:  # damaged group metadata
            bad.append(f"{st.path}: cannot open {group}/ ({one_line(exc)}); {hint(group)}")
            continue
        if attrs.get("ingest_id") != st.attrs.get("ingest_id"):
            bad.append(f"{st.path}: {group}/ belongs to another ingest; {hint(group)}")
        widths = set()
        for key, rows in shapes.items():
            name = f"{group}/{key}"
            if name not in values:
                bad.append(f"{st.path}: {group}/ has no array {key}; {hint(group)}")
                continue
            arr = values[name]
            if arr is None:
                continue  # damaged chunks, reported
            if arr.ndim != 2 or arr.shape[0] != rows or arr.shape[1] < 1:
                bad.append(
                    f"{st.path}: {name} has shape {arr.shape}, expected ({rows}, d); {hint(group)}"
                )
                continue
            widths.add(arr.shape[1])
            if not np.all(np.isfinite(arr)):
                bad.append(f"{st.path}: {name} holds NaN or infinite values; {hint(group)}")
        if len(widths) > 1:
            bad.append(
                f"{st.path}: {group}/ U and V differ in width {sorted(widths)}; {hint(group)}"
            )


def check_gram(
    store: RatingsStore,
    D: CheckedArray | zarr.Array,
    transposed: bool,
    R: sp.spmatrix,
    probes: int = PROBES,
    rng: np.random.Generator | None = None,
) -> None:
    """Before a fit uses the stored D: its diagonal blocks (finite, symmetric, the diagonal
    equal to R's sums of squares) and ``probes`` random off-diagonal blocks, each compared with
    its mirror (blocks as :func:`verify_store` reads them: square, a chunk of D wide).

    Damage on disk (a flipped bit, a chunk cut short or overwritten) changes one of two mirrored
    entries, so a probed pair finds it; D as a whole is compared with R by
    :func:`verify_store`. Reads ``g + 2 probes`` of its ``g x g`` blocks.

    Parameters
    ----------
    store : RatingsStore
        The store D belongs to.
    D : CheckedArray or zarr.Array
        The stored D (:func:`~dask_coded_als.data.store.gram_array`).
    transposed : bool
        D = R R^T.
    R : scipy.sparse matrix
        The store's ratings.
    probes : int, default PROBES
    rng : numpy.random.Generator, optional
        Chooses the probed chunks (default: a fresh, unseeded one).

    Raises
    ------
    InputError
        The first problem found, in one line (see :func:`verify_store`).
    """
    arr = getattr(D, "zarr", D)
    report = Report(store.path)
    tiling = _tiled_chunks(store.path, arr)
    if tiling is not None:
        raise InputError(tiling)
    g = arr.cdata_shape[1]
    pairs = [(a, b) for a in range(g) for b in range(a + 1, g)]
    rng = np.random.default_rng() if rng is None else rng
    chosen = rng.choice(len(pairs), size=min(probes, len(pairs)), replace=False)
    probed = [pairs[int(k)] for k in sorted(chosen)]
    _scan_gram(store.path, arr, _factor_of_gram(R, transposed), transposed, report, probed)
    if report.problems:
        raise InputError(report.problems[0])
