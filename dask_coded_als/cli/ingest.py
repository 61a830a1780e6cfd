"""``dask-coded-als ingest``: a ratings file, part files or Parquet into a Zarr store."""

from __future__ import annotations

import argparse

from dask_coded_als.cli.progress import bar
from dask_coded_als.data.ingest import FORMAT_NAMES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="load ratings (text, Parquet, part files) into a Zarr store",
        description="Load ratings (delimited text, plain or gzip/bzip2/xz, or Parquet; one "
        "file, a directory of part files or a glob) into a ratings store. Ids may be any "
        "integers or strings.",
    )
    p.add_argument("input", help="a ratings file, a directory of part files or a glob pattern")
    p.add_argument("store", help="the store directory to create")
    p.add_argument(
        "--format",
        choices=FORMAT_NAMES,
        default="auto",
        help="a MovieLens release's format, csv, or auto (found from the file's name and "
        "first line); Parquet is recognised by content",
    )
    p.add_argument(
        "--sep",
        help="the field separator of text, one character or one repeated such as :: (default: "
        "guessed from the file's name and first line)",
    )
    p.add_argument(
        "--columns",
        help="by position: user,item,rating[,timestamp] (_ skips a field); or by name: "
        "user=NAME,item=NAME,rating=NAME[,timestamp=NAME] (default: found from a header, else "
        "by position)",
    )
    p.add_argument(
        "--movies", help="movies.csv, movies.dat or u.item with titles (default: no titles)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument(
        "--strict",
        action="store_true",
        help="make a duplicate rating an error (without it the last one is kept)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dask_coded_als.data.ingest import ingest

    columns = args.columns.split(",") if args.columns else None
    if columns and any("=" in c for c in columns):  # role=NAME pairs pick columns by name
        columns = dict(c.split("=", 1) if "=" in c else (c, "") for c in columns)
    with bar(args, "ingest", "B", then="sorting, writing the store") as progress:
        report = ingest(
            args.input,
            args.store,
            format=args.format,
            sep=args.sep,
            columns=columns,
            movies=args.movies,
            overwrite=args.overwrite,
            strict=args.strict,
            progress=progress,
        )
    print(
        f"ingested {report.n_ratings} ratings of {report.n_users} users on {report.n_items} "
        f"items ({report.n_duplicates} duplicates, last one kept) into {report.store_path} "
        f"in {report.seconds:.2f} s"
    )
    return 0
