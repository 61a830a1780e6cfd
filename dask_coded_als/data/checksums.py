"""Arrays with a checksum per chunk: writing them, and reading them so that damage is named.

Every array the package writes ends its codec chain with Zarr v3's ``crc32c`` codec: each chunk
file carries the CRC-32C of its (compressed) bytes, and Zarr refuses a chunk whose bytes do not
match. Chunks are written even when they hold only the fill value, so a chunk file that is
missing is damage too (where Zarr alone would read the fill value).

Reading goes through :func:`read` (or a :class:`CheckedArray`): a chunk that cannot be decoded,
whatever the codec says (a checksum mismatch, a Zstd error, a wrong size), becomes an
:class:`~dask_coded_als.errors.InputError` that names the store, the array and the chunk, with
what to do about it (ingest again, compute D again, fit again).

Stores written before checksums still open and read as before: there is nothing to verify, and
:func:`note_unchecked` says so once per store (a :class:`UncheckedStoreWarning`).
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from dask_coded_als._util import one_line
from dask_coded_als.errors import InputError

__all__ = [
    "CheckedArray",
    "UncheckedStoreWarning",
    "chunk_slices",
    "create_array",
    "damaged",
    "has_checksums",
    "hint",
    "note_unchecked",
    "read",
    "read_chunk",
    "verify_chunks",
]


class UncheckedStoreWarning(UserWarning):
    """A store, or some of its arrays, written without checksums (before they were added)."""


#: Stores already named by :func:`note_unchecked` in this process.
_NOTED: set[str] = set()


def create_array(
    group: zarr.Group,
    name: str,
    *,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    compressed: bool = True,
    attributes: dict[str, Any] | None = None,
) -> zarr.Array:
    """Create the array ``name`` in ``group`` with a CRC-32C checksum per chunk.

    Parameters
    ----------
    group : zarr.Group
        Opened for writing.
    name : str
    shape, dtype, chunks
        As for ``zarr.Group.create_array``.
    compressed : bool, default True
        Zstandard (level 0, Zarr's default) before the checksum; False stores the raw bytes and
        the checksum only (for D, which hardly compresses).
    attributes : dict, optional

    Returns
    -------
    zarr.Array
        Writes every chunk, even one that holds only the fill value.
    """
    compressors = (ZstdCodec(), Crc32cCodec()) if compressed else (Crc32cCodec(),)
    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        compressors=compressors,
        attributes=dict(attributes or {}),
        # A chunk of zeros is written too: then a missing chunk file is damage, not zeros.
        config={"write_empty_chunks": True},
    )


def has_checksums(arr: zarr.Array) -> bool:
    """Whether the array's codecs include ``crc32c``."""
    return any(isinstance(codec, Crc32cCodec) for codec in getattr(arr.metadata, "codecs", ()))


def note_unchecked(path: str | os.PathLike, arrays: list[str]) -> None:
    """Warn, once per store and process, that ``arrays`` of the store carry no checksum."""
    key = str(Path(path).resolve())
    if not arrays or key in _NOTED:
        return
    _NOTED.add(key)
    what = "its arrays have" if len(arrays) > 1 else f"array {arrays[0]!r} has"
    warnings.warn(
        f"{path}: written before checksums, {what} none to verify (ingest again to add them)",
        UncheckedStoreWarning,
        stacklevel=3,
    )


def hint(name: str) -> str:
    """What repairs a damaged array ``name``, by the group it belongs to."""
    group = name.split("/", 1)[0]
    if group == "gram":
        return "remove the store's gram/ and run fit to compute D again"
    if group == "factors":
        return "fit again to write new factors"
    if group == "checkpoint":
        return "fit again from the start (the checkpoint cannot be resumed)"
    return "ingest the source again with overwrite=True"


def damaged(path: str | os.PathLike, name: str, chunk: tuple[int, ...] | None, why: str) -> str:
    """The one-line description of a damaged chunk (or array, when ``chunk`` is None)."""
    where = f"array {name!r}" if chunk is None else f"array {name!r} chunk {_coords(chunk)}"
    return f"{path}: {where} is damaged ({why}); {hint(name)}"


def _coords(chunk: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in chunk)


def _why(exc: BaseException) -> str:
    text = one_line(exc)
    if "checksum" in text.lower():
        return "checksum mismatch"
    return text


def chunk_slices(arr: zarr.Array, chunk: tuple[int, ...]) -> tuple[slice, ...]:
    """The region of the array that chunk ``chunk`` (grid coordinates) covers."""
    return tuple(
        slice(c * size, min((c + 1) * size, extent))
        for c, size, extent in zip(chunk, arr.chunks, arr.shape, strict=True)
    )


def _chunks_in(arr: zarr.Array, selection: Any) -> Iterator[tuple[int, ...]]:
    """Grid coordinates of the chunks a selection touches (all of them when the selection is
    not made of slices and integers)."""
    grid = [range(n) for n in arr.cdata_shape]
    sel = selection if isinstance(selection, tuple) else (selection,)
    if Ellipsis in sel:
        at = sel.index(Ellipsis)
        sel = sel[:at] + (slice(None),) * (len(arr.shape) - len(sel) + 1) + sel[at + 1 :]
    if len(sel) <= len(arr.shape) and all(
        isinstance(s, (int, np.integer)) or (isinstance(s, slice) and s.step in (None, 1))
        for s in sel
    ):
        for axis, s in enumerate(sel):
            size, extent = arr.chunks[axis], arr.shape[axis]
            if isinstance(s, slice):
                lo, hi, _ = s.indices(extent)
            else:
                lo = int(s) % extent if extent else 0
                hi = lo + 1
            grid[axis] = range(lo // size, -(-hi // size)) if hi > lo else range(0)
    return itertools.product(*grid)


def read(arr: zarr.Array, selection: Any, path: str | os.PathLike, name: str) -> Any:
    """``arr[selection]``, with a chunk that cannot be decoded named in an InputError.

    Parameters
    ----------
    arr : zarr.Array
    selection
        Any selection Zarr takes.
    path : str or os.PathLike
        The store, for the message.
    name : str
        The array's path in the store (``"ratings/item"``), for the message and the hint.

    Raises
    ------
    InputError
        A chunk's checksum does not match, its bytes cannot be decoded, or (in an array with
        checksums, which writes every chunk) its file is missing: Zarr would read the fill value.
    """
    try:
        values = arr[selection]
    except IndexError:
        raise  # a wrong selection is the caller's bug, not damage
    except Exception as first:  # codecs raise ValueError, RuntimeError and more on bad bytes
        # Read the chunks one by one to name the first damaged one (the error path only).
        for chunk in _chunks_in(arr, selection):
            try:
                arr[chunk_slices(arr, chunk)]
            except Exception as exc:
                raise InputError(damaged(path, name, chunk, _why(exc))) from None
        raise InputError(damaged(path, name, None, _why(first))) from None
    if has_checksums(arr):
        for chunk in _chunks_in(arr, selection):
            if not _chunk_path(arr, path, name, chunk).is_file():
                raise InputError(damaged(path, name, chunk, "chunk file missing"))
    return values


def _chunk_path(
    arr: zarr.Array, path: str | os.PathLike, name: str, chunk: tuple[int, ...]
) -> Path:
    """The file of a chunk in a local store."""
    return Path(path) / name / arr.metadata.encode_chunk_key(chunk)


def verify_chunks(
    arr: zarr.Array, path: str | os.PathLike, name: str
) -> Iterator[tuple[tuple[int, ...], np.ndarray | None, str | None]]:
    """Read every chunk of ``arr`` on its own: ``(chunk, values, problem)`` for each, with
    ``values`` None and a one-line ``problem`` when the chunk is missing or damaged.

    A missing chunk file is a problem only for an array with checksums (one written before them
    may omit chunks that hold only the fill value).
    """
    for chunk in itertools.product(*(range(n) for n in arr.cdata_shape)):
        yield chunk, *read_chunk(arr, path, name, chunk)


def read_chunk(
    arr: zarr.Array, path: str | os.PathLike, name: str, chunk: tuple[int, ...]
) -> tuple[np.ndarray | None, str | None]:
    """One chunk of ``arr``: ``(values, None)``, or ``(None, problem)`` when it is missing (an
    array with checksums writes every chunk) or damaged."""
    if has_checksums(arr) and not _chunk_path(arr, path, name, chunk).is_file():
        return None, damaged(path, name, chunk, "chunk file missing")
    try:
        return np.asarray(arr[chunk_slices(arr, chunk)]), None
    except Exception as exc:  # whatever the codec raised on bad bytes
        return None, damaged(path, name, chunk, _why(exc))


class CheckedArray:
    """A read-only Zarr array whose slicing goes through :func:`read`.

    Holds the array, the store's path and the array's name; other attributes are the Zarr
    array's (``shape``, ``dtype``, ``chunks``, ...).
    """

    def __init__(self, arr: zarr.Array, path: str | os.PathLike, name: str) -> None:
        self.zarr = arr
        self.path = Path(path)
        self.name = name

    def __repr__(self) -> str:
        return f"CheckedArray({str(self.path)!r}, {self.name!r}, shape={self.zarr.shape})"

    def __getitem__(self, selection: Any) -> Any:
        return read(self.zarr, selection, self.path, self.name)

    def __getattr__(self, attr: str) -> Any:
        if attr == "zarr":  # not set yet (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.zarr, attr)
