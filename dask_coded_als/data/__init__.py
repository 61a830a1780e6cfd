"""Data: ratings files into a Zarr store (:mod:`~dask_coded_als.data.ingest`), the store's layout
(:mod:`~dask_coded_als.data.store`), the Gram matrix D (:mod:`~dask_coded_als.data.gram`, the one
place it is formed), and the bundled sample."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

__all__ = ["sample_files"]


@contextlib.contextmanager
def sample_files() -> Iterator[tuple[Path, Path]]:
    """Paths of the bundled sample's ``ratings.csv`` and ``movies.csv`` (package data, so they
    are there in an installed wheel too), valid inside the block.

    Examples
    --------
    >>> with sample_files() as (ratings, movies):
    ...     ratings.name, movies.name
    ('ratings.csv', 'movies.csv')
    """
    folder = resources.files("dask_coded_als.data") / "sample"
    with (
        resources.as_file(folder / "ratings.csv") as ratings,
        resources.as_file(folder / "movies.csv") as movies,
    ):
        yield Path(ratings), Path(movies)
