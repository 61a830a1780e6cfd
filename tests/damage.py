"""Damaging stores on disk, for the integrity tests (imported as ``damage``): flip a bit of a
chunk file, cut one short, remove one, and rewrite a store as one written before checksums."""

from __future__ import annotations

from pathlib import Path

import zarr
from zarr.codecs import Crc32cCodec
from zarr.storage import LocalStore


def chunk_file(store: Path, name: str, chunk: tuple[int, ...] = (0,)) -> Path:
    """The file of chunk ``chunk`` of array ``name`` (Zarr v3's default key encoding)."""
    return Path(store) / name / "c" / Path(*(str(c) for c in chunk))


def flip_bit(path: Path, offset: int = -7, bit: int = 0x10) -> None:
    """Flip one bit of byte ``offset`` of the file."""
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


def truncate(path: Path, n_bytes: int = 9) -> None:
    """Cut the last ``n_bytes`` bytes of the file."""
    data = path.read_bytes()
    path.write_bytes(data[:-n_bytes])


def strip_checksums(store: Path) -> None:
    """Rewrite every array of the store without its crc32c codec, as the package wrote stores
    before checksums (same values, chunks, other codecs and attributes)."""
    root = zarr.open_group(LocalStore(store), mode="r+")
    for name, arr in list(root.members(max_depth=None)):
        if not isinstance(arr, zarr.Array):
            continue
        values = arr[...]
        compressors = tuple(c for c in arr.compressors if not isinstance(c, Crc32cCodec))
        new = root.create_array(
            name,
            shape=arr.shape,
            dtype=arr.dtype,
            chunks=arr.chunks,
            compressors=compressors or None,
            attributes=dict(arr.attrs),
            overwrite=True,
        )
        new[...] = values
