"""Ingest ratings (delimited text, Parquet or a DataFrame) into a ratings store.

Sources
-------
:func:`ingest` reads one file, a directory of part files or a glob pattern matching them (as
Spark and Dask write them). Parts are read in natural name order (``part.2`` before ``part.10``);
hidden files and names starting with ``_`` (``_SUCCESS``, ``_metadata``) are skipped. A part
starting with the Parquet magic bytes is Parquet, anything else delimited text, plain or
compressed with gzip, bzip2 or xz (recognised by content, not by name). Text is parsed by pyarrow's
streaming CSV reader, Parquet by pyarrow's Parquet reader, both in batches of about
``chunk_rows`` rows. :func:`ingest_dataframe` reads a pandas or dask DataFrame, one partition at a
time. Only the parsed columns (about 20 bytes per rating) outlive a batch.

Text formats
------------
``format`` fixes the field separator: ``"ml-100k"`` a tab (``u.data``, ``u1.base``, ...),
``"ml-1m"`` ``::`` (``ratings.dat``; alias ``"ml-10m"``), ``"ml-latest"`` a comma
(``ratings.csv``; aliases ``"ml-20m"``, ``"ml-25m"``, ``"ml-32m"``, ``"ml-latest-small"``).
``"auto"`` (the default) and ``"csv"`` take ``sep``, or guess it: the separator the file name
suggests (``*.dat`` ``::``; ``*.data``, ``u*.base``, ``u*.test``, ``*.tsv`` a tab; ``*.csv`` a
comma) when the first non-blank line contains it, else the first of ``::``, tab, comma, ``;``,
``|`` found in that line. A one-character separator allows CSV quoting; a repeated character
such as ``::`` splits plainly. Text must be UTF-8; a byte-order mark is ignored; lines may end
in ``\\n``, ``\\r\\n`` or ``\\r``; blank lines are skipped. Line numbers in messages count every
physical line from 1. :data:`FORMAT_NAMES` lists every accepted name.

Columns
-------
The first non-blank line of a text part is a header, and skipped, when none of its fields is a
number (``3``, ``-2``, ``4.5``, ``1e3``). The columns holding users, items, ratings and
(optionally) timestamps are, in this order of precedence:

- named by ``columns``: a list naming every field by position (``"user"``, ``"item"``,
  ``"rating"``, ``"timestamp"``, or ``"_"`` to skip one), or a mapping from those roles to column
  names of the header, Parquet schema or DataFrame (roles left out are found by name);
- found by name: a column name that, lower-cased without punctuation, is one of
  :data:`ROLE_NAMES` (``userId``, ``user_id``, ``user``, ``movieId``, ``item_id``, ``asin``,
  ``ISBN``, ``rating``, ``score``, ``timestamp``, ...);
- by position when no name is recognised (or there is no header): 3 fields are user, item,
  rating; 4 add a timestamp. When some names are recognised but not all three of user, item and
  rating, the error asks for ``columns`` rather than guessing.

Ids are labels
--------------
A user or item id is a label: any integer (0 and negatives included) or any string. Users and
items are numbered 0, 1, ... in the sorted order of their distinct labels (numeric order for
integers, code-point order for strings), and ``ids/users`` and ``ids/items`` keep the labels
with their type. In text, blanks around a label are removed, and a column is int64 when every
label in it is an integer written plainly (``0``, ``-7``, ``42``: no ``+``, no leading zero,
within int64); otherwise every label in it stays a string, so ``0195153448`` stays
``"0195153448"``. In Parquet and DataFrames the column's type decides: integer types give int64
labels, strings string labels; other types, and a column mixing integers and strings, are
refused. Ratings must be finite numbers (stored as float32). A timestamp is an integer; a Parquet
or DataFrame datetime column is stored as seconds since the epoch.

Titles
------
``movies`` is ``movies.csv`` (``movieId,title,genres``, csv quoting), ``movies.dat``
(``id::title::genres``) or ``u.item`` (``id|title|...``), plain or compressed; the name decides,
else the first line. It is read as UTF-8, or as Latin-1 when it is not valid UTF-8 (``u.item`` and
the ml-1m ``movies.dat`` are Latin-1). Its ids are matched against the item labels (integers
when those are integers). Line 1 is a header when its id is not an integer (with string labels:
when it is ``movieId``, ``item``, ``id`` or similar). Movie ids must be unique; movies nobody
rated are ignored, and rated items without a title get ``""``.

Duplicates
----------
When a (user, item) pair occurs more than once the last occurrence in input order wins; the
number of dropped ratings is reported as ``n_duplicates``. ``strict=True`` makes a duplicate an
error.

Errors and atomicity
--------------------
Bad input raises :class:`~dask_coded_als.errors.InputError` with a one-line message that says
where: ``<file>:<line>: <problem>`` for text, ``<file>: row <n>: <problem>`` for Parquet (rows
counted from 1), ``DataFrame.iloc[<k>]: <problem>`` for a DataFrame. pyarrow's own messages do not
name a line, so when the fast reader rejects a text part, the part is read again line by line to
find and describe the first bad line; that second pass also checks the quoting of every part that
contains a quote character, which pyarrow accepts loosely. The store is written to a hidden
temporary sibling directory and renamed into place at the end, so a failed ingest leaves nothing
behind and never touches an existing store. An existing store is replaced only with
``overwrite=True`` and only if it is a ratings store (any other existing path is refused); the old
store is renamed aside, the new one renamed in, then the old one deleted.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import hashlib
import io
import lzma
import math
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import scipy.sparse as sp
import zarr
from zarr.storage import LocalStore

from dask_coded_als._util import check_int, one_line
from dask_coded_als.data.checksums import create_array
from dask_coded_als.data.store import LAYOUT, LAYOUT_VERSION
from dask_coded_als.errors import InputError

__all__ = [
    "FORMATS",
    "FORMAT_ALIASES",
    "FORMAT_NAMES",
    "ROLE_NAMES",
    "IngestReport",
    "check_ids",
    "ingest",
    "ingest_dataframe",
    "ingest_matrix",
    "is_dataframe",
    "ratings_from_dataframe",
]

#: The text formats ``format`` accepts (besides the aliases).
FORMATS = ("auto", "ml-100k", "ml-1m", "ml-latest", "csv")
#: Other MovieLens release names and the format they use.
FORMAT_ALIASES = {
    "ml-10m": "ml-1m",
    "ml-20m": "ml-latest",
    "ml-25m": "ml-latest",
    "ml-32m": "ml-latest",
    "ml-latest-small": "ml-latest",
}
#: Every name ``format`` accepts: the command line offers exactly these.
FORMAT_NAMES = FORMATS + tuple(FORMAT_ALIASES)
#: Column names (lower-cased, punctuation removed) recognised for each role.
ROLE_NAMES = {
    "user": tuple("user userid uid reviewer reviewerid customer customerid".split()),
    "item": tuple("item itemid iid movie movieid product productid asin isbn book bookid".split()),
    "rating": ("rating", "score", "stars", "overall", "bookrating"),
    "timestamp": ("timestamp", "time", "ts", "unixtime", "unixreviewtime"),
}
_ROLE_OF = {name: role for role, names in ROLE_NAMES.items() for name in names}
_ROLES = ("user", "item", "rating", "timestamp")
_REQUIRED = ("user", "item", "rating")
_WHAT = {"user": "user ids", "item": "item ids", "rating": "ratings", "timestamp": "timestamps"}
_ML_SEP = {"ml-100k": "\t", "ml-1m": "::", "ml-latest": ","}
_ML_BY_SEP = {sep: fmt for fmt, sep in _ML_SEP.items()}
_SEP_CANDIDATES = ("::", "\t", ",", ";", "|")
_INT64_MAX = 2**63 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Elements per chunk of the stored rating arrays.
_ARRAY_CHUNK = 1 << 20
#: The first non-blank line must end within this many characters.
_MAX_LINE = 1 << 24
_PARQUET_MAGIC = b"PAR1"

_INT_RE = re.compile(r"-?[0-9]+")  # what pyarrow reads as int64 (it refuses a "+" sign)
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_PLAIN_INT = r"^(0|-?[1-9][0-9]*)$"  # an integer label as text
_NONFINITE = {"nan", "inf", "infinity"}
_ML100K_SPLIT_RE = re.compile(r"u[a-z0-9]*\.(base|test)")
_DIGITS_RE = re.compile(r"(\d+)")
#: First fields that mark the header line of a movies file with string ids.
_MOVIE_HEADERS = {"movieid", "movie_id", "movie", "itemid", "item_id", "item", "id"}


@dataclass(frozen=True)
class IngestReport:
    """What :func:`ingest`, :func:`ingest_dataframe` or :func:`ingest_matrix` did.

    Attributes
    ----------
    n_users, n_items, n_ratings : int
        Shape and number of stored ratings of R (after removing duplicates).
    n_duplicates : int
        Ratings dropped because a later row rated the same (user, item) pair.
    format : str
        ``"ml-100k"``, ``"ml-1m"``, ``"ml-latest"`` (text laid out as that MovieLens file),
        ``"csv"`` (any other text), ``"parquet"``, ``"dataframe"`` or ``"matrix"``.
    store_path : pathlib.Path
        The store written.
    seconds : float
        Wall time of the whole ingest.
    """

    n_users: int
    n_items: int
    n_ratings: int
    n_duplicates: int
    format: str
    store_path: Path
    seconds: float


class _LineError(Exception):
    """A problem in one line or row; the caller adds where it is."""


def _show(text: str, limit: int = 40) -> str:
    """A short, single-line quoted rendering of a field for messages."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


# --------------------------------------------------------------------------------------------
# Parameters and columns


def _check_chunk_rows(chunk_rows: Any) -> None:
    check_int(chunk_rows, "chunk_rows", 1)


def _resolve_format(fmt: Any, sep: Any, columns: Any) -> str:
    if not isinstance(fmt, str):
        raise InputError(f"format must be a string, not {fmt!r}")
    if fmt not in FORMAT_NAMES:
        raise InputError(f"unknown format {fmt!r} (one of {', '.join(FORMAT_NAMES)})")
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt in _ML_SEP and (sep is not None or columns is not None):
        raise InputError(f"sep and columns apply to format='csv' or 'auto', not {fmt!r}")
    if sep is not None:
        if not isinstance(sep, str) or not sep or sep.strip("\r\n") != sep or '"' in sep:
            raise InputError(
                f"sep must be a non-empty string without line breaks or quotes, not {sep!r}"
            )
        if sep != sep[0] * len(sep):
            raise InputError(f"sep must be one character or one character repeated, not {sep!r}")
    return fmt


def _check_columns(columns: Any) -> list[str] | dict[str, str] | None:
    """``columns`` as a list of roles by position or a mapping role -> column name."""
    if columns is None:
        return None
    if isinstance(columns, Mapping):
        names = dict(columns)
        if not all(isinstance(v, str) and v for v in names.values()):
            raise InputError(f"columns must map roles to column names, not {columns!r}")
        bad = [k for k in names if k not in _ROLES]
        if bad:
            raise InputError(f"unknown role {bad[0]!r} in columns (use {', '.join(_ROLES)})")
        if len(set(names.values())) != len(names):
            raise InputError(f"columns names one column for two roles: {names}")
        return names
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise InputError(f"columns must be a list of names, not {columns!r}")
    cols = [c.strip().lower() for c in columns]
    bad = [c for c in cols if c not in (*_ROLES, "_")]
    if bad:
        raise InputError(f"unknown column name {bad[0]!r} (use user, item, rating, timestamp, _)")
    for name in _REQUIRED:
        if cols.count(name) != 1:
            raise InputError(f"columns must name {name!r} exactly once: {list(columns)}")
    if cols.count("timestamp") > 1:
        raise InputError(f"columns name 'timestamp' twice: {list(columns)}")
    return cols


def _normal(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _resolve_roles(
    columns: list[str] | dict[str, str] | None, names: list[str] | None, n: int, where: str
) -> dict[str, int]:
    """Role -> field position, from ``columns``, the column names, or the field count."""
    if isinstance(columns, list):
        if len(columns) != n:
            raise InputError(f"{where}: columns names {len(columns)} fields, the data has {n}")
        return {role: k for k, role in enumerate(columns) if role != "_"}
    given = columns or {}
    if given and names is None:
        raise InputError(f"{where}: no header to find {given} in; give columns as a list")
    roles: dict[str, int] = {}
    for role, name in given.items():
        if name not in names:
            raise InputError(f"{where}: no column {name!r} (columns: {', '.join(names)})")
        roles[role] = names.index(name)
    found: dict[str, int] = {}
    for k, name in enumerate(names or ()):
        role = _ROLE_OF.get(_normal(name))
        if role is None or role in given or k in roles.values():
            continue
        if role in found:
            raise InputError(
                f"{where}: both {names[found[role]]!r} and {name!r} look like the {_WHAT[role]}; "
                f"name one in columns"
            )
        found[role] = k
    roles.update(found)
    if all(role in roles for role in _REQUIRED):
        return roles
    if roles:  # some names are known: guessing the others by position could mislead
        missing = next(role for role in _REQUIRED if role not in roles)
        raise InputError(
            f"{where}: cannot tell which column holds the {_WHAT[missing]} among "
            f"{', '.join(names)}; name it in columns"
        )
    if n not in (3, 4):
        raise InputError(f"{where}: cannot infer the columns from {n} fields; pass columns")
    return dict(zip(_ROLES, range(n), strict=False))


# --------------------------------------------------------------------------------------------
# Files: parts, decompression, hashing


@dataclass
class _Part:
    """One input file."""

    path: Path
    label: str  # the name used in messages
    parquet: bool
    skip: int = 0  # text: lines up to and including the header, if there is one


def _natural_key(path: Path) -> list:
    """Sort key putting part.2 before part.10."""
    return [int(s) if s.isdigit() else s for s in _DIGITS_RE.split(path.name)]


def _parts(input_path: str | os.PathLike) -> list[_Part]:
    """The files of a file, a directory of part files or a glob pattern."""
    label = os.fspath(input_path)
    path = Path(input_path)
    if path.is_dir():
        paths = [p for p in path.iterdir() if not p.name.startswith((".", "_"))]
    elif not path.exists() and any(c in label for c in "*?["):
        paths = [Path(p) for p in glob.glob(label)]
    elif not path.exists():
        raise InputError(f"{label}: no such file")
    else:
        return [_Part(path, label, _is_parquet(path, label))]
    # Writers leave empty files for empty partitions: they hold no ratings.
    paths = sorted((p for p in paths if p.is_file() and p.stat().st_size > 0), key=_natural_key)
    if not paths:
        raise InputError(f"{label}: is a directory or pattern with no data files")
    parts = [_Part(p, os.fspath(p), _is_parquet(p, os.fspath(p))) for p in paths]
    if len({part.parquet for part in parts}) > 1:
        raise InputError(f"{label}: mixes Parquet and text files")
    return parts


def _open(path: Path, label: str):
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory, not a ratings file") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot open ({exc.strerror or exc})") from None


def _is_parquet(path: Path, label: str) -> bool:
    with _open(path, label) as f:
        return f.read(4) == _PARQUET_MAGIC


class _Hashed:
    """A binary file that feeds what is read from it to a hash."""

    def __init__(self, raw, sha) -> None:
        self.raw, self.sha = raw, sha

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.sha is not None:
            self.sha.update(data)
        return data


class _Source(io.RawIOBase):
    """The text bytes of a file, decompressed when the content says so.

    The bytes on disk go to ``sha`` as they are read. ``quoted`` records whether a quote
    character occurred: pyarrow's CSV parser accepts malformed quoting such as ``"a"b``.
    """

    _REFUSED = {
        b"PK\x03\x04": "a zip archive; extract the ratings file from it first",
        b"\x28\xb5\x2f\xfd": "zstd-compressed; use gzip, bzip2 or xz",
    }
    _COMPRESSED = {
        b"\x1f\x8b": ("gzip", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
        b"BZh": ("bzip2", bz2.BZ2File),
        b"\xfd7zXZ\x00": ("xz", lzma.LZMAFile),
    }

    def __init__(self, path: Path, label: str, sha=None) -> None:
        super().__init__()
        self.label = label
        self.quoted = False
        self._raw = _open(path, label)
        magic = self._raw.read(8)
        self._raw.seek(0)
        for prefix, what in self._REFUSED.items():
            if magic.startswith(prefix):
                self._raw.close()
                raise InputError(f"{label}: {what}")
        self._hashed = _Hashed(self._raw, sha)
        self._unpacked, self._kind = None, None
        for prefix, (kind, opener) in self._COMPRESSED.items():
            if magic.startswith(prefix):
                self._unpacked, self._kind = opener(self._hashed), kind

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = (self._unpacked or self._hashed).read(size)
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            what = f"corrupt or truncated {self._kind} stream" if self._kind else "cannot read"
            raise InputError(f"{self.label}: {what} ({one_line(exc)})") from None
        if not self.quoted and b'"' in data:
            self.quoted = True
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read (and so hash) whatever the parser left on disk, e.g. a gzip trailer."""
        while self._hashed.read(1 << 20):
            pass

    def close(self) -> None:
        # Also runs from __del__ when __init__ failed half-way.
        for f in (getattr(self, "_unpacked", None), getattr(self, "_raw", None)):
            if f is not None:
                f.close()
        super().close()


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    controls = sum(sample.count(bytes([c])) for c in range(32) if c not in (9, 10, 13))
    return controls > 0.05 * max(1, len(sample))


class _Tally:
    """A hash that also reports the bytes it has been fed: ``progress(done, total)``."""

    def __init__(self, sha, progress: Callable[[int, int], None], total: int) -> None:
        self.sha, self.progress, self.total, self.done = sha, progress, total, 0

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        if data:
            self.done += len(data)
            self.progress(self.done, self.total)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def _sha256_of(paths: list[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()


# --------------------------------------------------------------------------------------------
# Text: layout, the fast reader and the line-by-line second pass


@dataclass(frozen=True)
class _TextLayout:
    sep: str
    n_fields: int
    roles: dict[str, int]
    header: list[str] | None  # the first part's header fields
    format: str  # as reported


def _lines(src: _Source, errors: str) -> io.TextIOWrapper:
    """Lines split at \\n, \\r\\n and \\r, as pyarrow splits them; a byte-order mark dropped."""
    buffered = io.BufferedReader(src, 1 << 16)
    return io.TextIOWrapper(buffered, encoding="utf-8-sig", errors=errors, newline="")


def _first_line(part: _Part) -> tuple[str, int]:
    """The first non-blank line of a text part (without its line end) and its line number."""
    with _Source(part.path, part.label) as src:
        text = _lines(src, errors="replace")
        head = text.buffer.peek(4096)[:4096]
        if not head:
            raise InputError(f"{part.label}: file is empty")
        if _looks_binary(head):
            raise InputError(f"{part.label}: binary data, not a text ratings file")
        line_no = 0
        while line := text.readline(_MAX_LINE):
            line_no += 1
            if len(line) == _MAX_LINE:
                raise InputError(f"{part.label}: a line is longer than {_MAX_LINE} characters")
            if line.strip():
                return line.rstrip("\r\n"), line_no
    raise InputError(f"{part.label}: no ratings (only blank lines)")


def _guess_sep(name: str, line: str, label: str) -> str:
    name = re.sub(r"\.(gz|bz2|xz)$", "", name.lower())
    if name.endswith(".dat"):
        preferred = "::"
    elif name.endswith((".data", ".tsv")) or _ML100K_SPLIT_RE.fullmatch(name):
        preferred = "\t"
    elif name.endswith(".csv"):
        preferred = ","
    else:
        preferred = None
    for sep in (preferred, *_SEP_CANDIDATES):
        if sep is not None and sep in line:
            return sep
    if preferred is not None:
        return preferred  # the line-level message then says what was expected
    raise InputError(
        f"{label}: cannot tell the format from the file name or the first line; pass format or sep"
    )


def _split(line: str, sep: str, strict: bool = False) -> list[str]:
    """Fields of one line: CSV quoting for a one-character separator, plain splitting else."""
    if len(sep) > 1:
        return line.split(sep)
    try:
        return next(csv.reader([line], delimiter=sep, strict=strict), [""])
    except csv.Error as exc:
        if strict:
            raise _LineError(f"malformed CSV ({one_line(exc)})") from None
        return line.split(sep)


def _is_number(text: str) -> bool:
    return _NUM_RE.fullmatch(text.strip()) is not None


def _text_layout(
    parts: list[_Part], fmt: str, sep: str | None, columns: list | dict | None
) -> _TextLayout:
    """Separator and columns from the first part; every part's header (if any) is skipped."""
    layout = None
    for part in parts:
        line, line_no = _first_line(part)
        if layout is None:
            if sep is None:
                sep = _ML_SEP.get(fmt) or _guess_sep(part.path.name, line, part.label)
            fields = _split(line, sep)
            if len(fields) < 3:
                raise InputError(
                    f"{part.label}:{line_no}: {len(fields)} field(s) separated by {sep!r}, not "
                    f"the 3 or more of user, item, rating; is format or sep wrong?"
                )
            header = None if any(_is_number(f) for f in fields) else [f.strip() for f in fields]
            roles = _resolve_roles(columns, header, len(fields), f"{part.label}:{line_no}")
            if fmt == "auto":  # report a MovieLens name when the layout is that file's
                movielens = len(fields) == 4 and roles == dict(zip(_ROLES, range(4), strict=True))
                fmt = _ML_BY_SEP.get(sep, "csv") if movielens else "csv"
            layout = _TextLayout(sep, len(fields), roles, header, fmt)
        is_header = not any(_is_number(f) for f in _split(line, layout.sep))
        part.skip = line_no if is_header else 0
    return layout


def _skip_blank(row) -> str:
    """pyarrow's handler of a row with the wrong field count: blank lines are no rows."""
    return "skip" if not row.text.strip() else "error"


def _text_batches(
    part: _Part, layout: _TextLayout, chunk_rows: int, sha
) -> Iterator[tuple[pa.Array, ...]]:
    """(user, item, rating, timestamp or None) columns of a text part, a block at a time."""
    # A separator of one character repeated m times is read as m separators with empty
    # fields between, which must stay empty (the null type accepts nothing else).
    width = len(layout.sep)
    n_columns = (layout.n_fields - 1) * width + 1
    names = [f"f{k}" for k in range(n_columns)]
    types: dict[str, pa.DataType] = {names[k]: pa.null() for k in range(n_columns) if k % width}
    ids = pa.dictionary(pa.int32(), pa.string())
    wanted = {role: names[k * width] for role, k in layout.roles.items()}
    types.update({wanted["user"]: ids, wanted["item"]: ids, wanted["rating"]: pa.float64()})
    if "timestamp" in wanted:
        types[wanted["timestamp"]] = pa.int64()
    src = _Source(part.path, part.label, sha)
    try:
        reader = pa_csv.open_csv(
            src,
            read_options=pa_csv.ReadOptions(
                column_names=names,
                skip_rows=part.skip,
                block_size=max(1 << 16, min(chunk_rows * 32, 1 << 30)),
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=layout.sep[0],
                quote_char='"' if width == 1 else False,
                invalid_row_handler=_skip_blank,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=types,
                include_columns=list(types),
                null_values=[""],
                strings_can_be_null=False,
            ),
        )
        for batch in reader:
            yield tuple(batch.column(wanted[r]) if r in wanted else None for r in _ROLES)
        src.drain()
    except pa.ArrowException as exc:
        _locate(part, layout)
        hint = "; raise chunk_rows" if "straddl" in str(exc) else ""
        raise InputError(f"{part.label}: {one_line(exc)}{hint}") from None
    finally:
        src.close()
    if src.quoted and width == 1:
        _locate(part, layout)  # pyarrow does not check the quoting: the csv module does


def _text_records(part: _Part, layout: _TextLayout) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every data line, checking what pyarrow does not spell out."""
    line_no = 0
    with _lines(_Source(part.path, part.label), errors="surrogateescape") as text:
        try:
            for line_no, raw in enumerate(text, start=1):
                line = raw.rstrip("\r\n")
                if line_no <= part.skip:
                    continue
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError:
                    raise _LineError("not UTF-8 text") from None
                if "\x00" in line:
                    raise _LineError("binary data (NUL byte), not a ratings line")
                fields = _split(line, layout.sep, strict=True)
                if len(fields) != layout.n_fields:
                    if not line.strip():  # skipped, as pyarrow does (see _skip_blank)
                        continue
                    raise _LineError(
                        f"expected {layout.n_fields} fields separated by {layout.sep!r}, "
                        f"found {len(fields)}"
                        + ("" if raw.endswith(("\n", "\r")) else "; the last line is incomplete")
                    )
                yield line_no, fields
        except _LineError as exc:
            raise InputError(f"{part.label}:{line_no}: {exc}") from None


def _locate(part: _Part, layout: _TextLayout) -> None:
    """Raise the error of the first bad line of a text part, if reading line by line finds one."""
    roles = layout.roles
    for line_no, fields in _text_records(part, layout):
        try:
            if layout.header is not None and [f.strip() for f in fields] == layout.header:
                raise _LineError("the header line appears again")
            for role in ("user", "item"):
                if not fields[roles[role]].strip():
                    raise _LineError(f"empty {role} id")
            _parse_rating(fields[roles["rating"]])
            if "timestamp" in roles:
                _parse_timestamp(fields[roles["timestamp"]])
        except _LineError as exc:
            raise InputError(f"{part.label}:{line_no}: {exc}") from None


def _parse_rating(text: str) -> float:
    t = text.strip()
    if _NUM_RE.fullmatch(t):
        value = float(t)
        if not math.isfinite(value):
            raise _LineError(f"rating {_show(t)} is not a finite number")
        if abs(value) > _FLOAT32_MAX:
            raise _LineError(f"rating {_show(t)} is too large for float32")
        return value
    if not t:
        raise _LineError("empty rating")
    if t.lower().lstrip("+-") in _NONFINITE:
        raise _LineError(f"rating {_show(t)} is not a finite number")
    raise _LineError(f"rating {_show(t)} is not a number")


def _parse_timestamp(text: str) -> int:
    t = text.strip()
    if _INT_RE.fullmatch(t):
        value = int(t)
        if -_INT64_MAX - 1 <= value <= _INT64_MAX:
            return value
        raise _LineError(f"timestamp {_show(t)} is out of the int64 range")
    if not t:
        raise _LineError("empty timestamp")
    raise _LineError(f"timestamp {_show(t)} is not an integer")


def _text_lines(part: _Part, layout: _TextLayout, records: set[int]) -> dict[int, int]:
    """Line number of each of some data records (0-based record numbers) of a text part."""
    lines: dict[int, int] = {}
    for k, (line_no, _) in enumerate(_text_records(part, layout)):
        if k in records:
            lines[k] = line_no
            if len(lines) == len(records):
                break
    return lines


# --------------------------------------------------------------------------------------------
# Typed columns (Parquet, DataFrames)


def _typed_ids(arr: pa.Array, role: str, where: str) -> pa.DictionaryArray:
    """Integer or string labels, dictionary-encoded."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_integer(arr.type):
        try:
            arr = arr.cast(pa.int64())
        except pa.ArrowInvalid:
            raise InputError(f"{where}: a {role} id is out of the int64 range") from None
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    else:
        raise InputError(f"{where}: {_WHAT[role]} have type {arr.type}; use integers or strings")
    return arr.dictionary_encode()


def _typed_ratings(arr: pa.Array, where: str) -> pa.Array:
    t = arr.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        raise InputError(f"{where}: ratings have type {t}; ratings must be numbers")
    return arr.cast(pa.float64())


def _typed_timestamps(arr: pa.Array, where: str) -> pa.Array:
    t = arr.type
    if pa.types.is_timestamp(t):
        return arr.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
    if pa.types.is_integer(t):
        return arr.cast(pa.int64())
    raise InputError(f"{where}: timestamps have type {t}; use integers or datetimes")


def _typed_batch(columns: Mapping[str, pa.Array], where: str) -> tuple[pa.Array | None, ...]:
    """(user, item, rating, timestamp or None) from the columns of a Parquet file or DataFrame."""
    stamp = columns.get("timestamp")
    return (
        _typed_ids(columns["user"], "user", where),
        _typed_ids(columns["item"], "item", where),
        _typed_ratings(columns["rating"], where),
        None if stamp is None else _typed_timestamps(stamp, where),
    )


def _parquet_batches(
    part: _Part,
    columns: list | dict | None,
    chunk_rows: int,
    advance: Callable[[float], None] | None = None,
) -> Iterator[tuple[pa.Array | None, ...]]:
    """Batches of a Parquet part; ``advance(fraction)`` after each with the share of its rows
    read (the reader reads column chunks, not the file front to back)."""
    try:
        pfile = pq.ParquetFile(part.path)
        names = pfile.schema_arrow.names
        roles = _resolve_roles(columns, names, len(names), part.label)
        n_rows, done = max(1, pfile.metadata.num_rows), 0
        for batch in pfile.iter_batches(
            batch_size=chunk_rows, columns=[names[k] for k in roles.values()]
        ):
            yield _typed_batch({r: batch.column(names[k]) for r, k in roles.items()}, part.label)
            done += batch.num_rows
            if advance is not None:
                advance(done / n_rows)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{part.label}: cannot read Parquet ({one_line(exc)})") from None


def _frame_batches(
    df: Any, roles: dict[str, Any], chunk_rows: int
) -> Iterator[tuple[pa.Array | None, ...]]:
    """Batches of a pandas DataFrame, or of a dask DataFrame one partition at a time."""
    wanted = list(roles.values())
    frames = (p.compute() for p in df[wanted].to_delayed()) if hasattr(df, "npartitions") else [df]
    for frame in frames:
        for start in range(0, len(frame), chunk_rows):
            piece = frame.iloc[start : start + chunk_rows]
            columns = {}
            for role, name in roles.items():
                try:
                    column = pa.array(piece[name], from_pandas=True)
                except (pa.ArrowException, TypeError, ValueError) as exc:
                    raise InputError(
                        f"DataFrame column {name!r}: the {_WHAT[role]} mix types or are not "
                        f"{'numbers' if role == 'rating' else 'integers or strings'} "
                        f"({one_line(exc)})"
                    ) from None
                if isinstance(column, pa.ChunkedArray):
                    column = column.combine_chunks()
                columns[role] = column
            yield _typed_batch(columns, "DataFrame")


# --------------------------------------------------------------------------------------------
# Collecting batches


def _first_bad(
    user: pa.DictionaryArray,
    item: pa.DictionaryArray,
    rating: np.ndarray,
    stamp: pa.Array | None,
    trim: bool,
) -> tuple[int, str] | None:
    """(row, problem) of the first row of a batch with a missing or unusable value."""
    found = []
    for role, ids in (("user", user), ("item", item)):
        if ids.null_count:
            found.append((int(np.flatnonzero(ids.is_null())[0]), f"missing {role} id"))
        if pa.types.is_string(ids.type.value_type):
            labels = pc.utf8_trim_whitespace(ids.dictionary) if trim else ids.dictionary
            bad = pc.or_(pc.equal(labels, ""), pc.match_substring(labels, "\x00"))
            codes = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
            rows = np.flatnonzero(np.isin(ids.indices.to_numpy(zero_copy_only=False), codes))
            if len(rows):
                label = labels[ids.indices[int(rows[0])].as_py()].as_py()
                found.append((int(rows[0]), f"{'NUL byte in' if label else 'empty'} {role} id"))
    with np.errstate(over="ignore"):
        bad = np.flatnonzero(~np.isfinite(rating.astype(np.float32)))
    if len(bad):
        value = rating[bad[0]]
        if np.isnan(value):
            found.append((int(bad[0]), "missing or NaN rating"))
        elif np.isinf(value):
            found.append((int(bad[0]), f"rating {value} is not a finite number"))
        else:
            found.append((int(bad[0]), f"rating {value:g} is too large for float32"))
    if stamp is not None and stamp.null_count:
        found.append((int(np.flatnonzero(stamp.is_null())[0]), "missing timestamp"))
    return min(found) if found else None


class _Collected:
    """The checked columns of all batches, in input order.

    ``trim`` removes blanks around text labels; ``describe(record, first)`` names where two
    rows are, for the duplicate message: ``("<where record is>", "<where first is>")``.
    """

    def __init__(self, trim: bool, describe: Callable[[int, int], tuple[str, str]]) -> None:
        self.trim, self.describe = trim, describe
        #: per batch: (distinct labels, index of each row among them)
        self.users: list[tuple[pa.Array, np.ndarray]] = []
        self.items: list[tuple[pa.Array, np.ndarray]] = []
        self.ratings: list[np.ndarray] = []
        self.stamps: list[np.ndarray] | None = None
        self.n = 0

    def add(self, user, item, rating, stamp) -> tuple[int, str] | None:
        """Keep one batch, or return (row in the batch, problem) of its first bad row."""
        values = rating.to_numpy(zero_copy_only=False)  # float64, NaN where null
        bad = _first_bad(user, item, values, stamp, self.trim)
        if bad is not None:
            return bad
        # Copies of exactly the rows' size: pyarrow's buffers are larger than their content.
        self.users.append((user.dictionary, user.indices.to_numpy().copy()))
        self.items.append((item.dictionary, item.indices.to_numpy().copy()))
        self.ratings.append(values.astype(np.float32))
        if stamp is not None:
            self.stamps = self.stamps or []
            self.stamps.append(stamp.to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
        self.n += len(user)
        return None


def _labels(batches: list[tuple[pa.Array, np.ndarray]], role: str, trim: bool):
    """(sorted distinct labels, index of every row among them, "int64" or "string")."""
    if len({labels.type for labels, _ in batches}) > 1:
        raise InputError(f"{_WHAT[role]} mix types: integers in some rows, strings in others")
    # Only the batches' distinct labels are sorted and matched; each batch's indices are then
    # mapped straight into one array.
    values = pa.concat_arrays([labels for labels, _ in batches])
    if trim and pa.types.is_string(values.type):
        values = pc.utf8_trim_whitespace(values)
        if pc.all(pc.match_substring_regex(values, _PLAIN_INT)).as_py():
            try:
                values = values.cast(pa.int64())
            except pa.ArrowInvalid:  # beyond int64: the labels stay strings
                pass
    distinct = pc.unique(values)
    distinct = distinct.take(pc.sort_indices(distinct))
    dtype = np.int32 if len(distinct) < 2**31 else np.int64
    position = pc.index_in(values, value_set=distinct).to_numpy().astype(dtype)
    index = np.empty(sum(len(rows) for _, rows in batches), dtype=dtype)
    row = first = 0
    for labels, rows in batches:
        index[row : row + len(rows)] = position[first : first + len(labels)][rows]
        row, first = row + len(rows), first + len(labels)
    batches.clear()  # merged: drop them
    if pa.types.is_integer(distinct.type):
        return distinct.to_numpy(), index, "int64"
    return distinct.to_numpy(zero_copy_only=False).astype(object), index, "string"


# --------------------------------------------------------------------------------------------
# Reading each kind of source


def _part_of(starts: list[int], record: int) -> int:
    return int(np.searchsorted(starts, record, side="right")) - 1


def _read_text(parts, fmt, sep, columns, chunk_rows, progress) -> tuple[_Collected, str, str]:
    """Columns, the format to report, and the SHA-256 of the files."""
    layout = _text_layout(parts, fmt, sep, columns)
    sha = hashlib.sha256()
    if progress is not None:  # every byte on disk goes through the hash exactly once
        sha = _Tally(sha, progress, sum(part.path.stat().st_size for part in parts))
    starts: list[int] = []

    def describe(record: int, first: int) -> tuple[str, str]:
        k, j = _part_of(starts, record), _part_of(starts, first)
        if k != j:
            return describe(record, record)[0], describe(first, first)[0]
        lines = _text_lines(parts[k], layout, {record - starts[k], first - starts[k]})
        line, first_line = lines[record - starts[k]], lines[first - starts[k]]
        return f"{parts[k].label}:{line}", f"line {first_line}"

    data = _Collected(True, describe)
    for part in parts:
        starts.append(data.n)
        for batch in _text_batches(part, layout, chunk_rows, sha):
            bad = data.add(*batch)
            if bad is not None:
                _locate(part, layout)  # names the line; the fallback below names the record
                record = data.n - starts[-1] + bad[0] + 1
                raise InputError(f"{part.label}: data record {record}: {bad[1]}")
    return data, layout.format, sha.hexdigest()


def _read_parquet(parts, columns, chunk_rows, progress) -> tuple[_Collected, str, str]:
    starts: list[int] = []
    sizes = [part.path.stat().st_size for part in parts]

    def where(record: int) -> tuple[str, str]:
        k = _part_of(starts, record)
        return parts[k].label, f"row {record - starts[k] + 1}"

    def describe(record: int, first: int) -> tuple[str, str]:
        (label, row), (first_label, first_row) = where(record), where(first)
        there = first_row if first_label == label else f"{first_label}: {first_row}"
        return f"{label}: {row}", there

    data = _Collected(False, describe)
    for k, part in enumerate(parts):
        starts.append(data.n)
        advance = None
        if progress is not None:  # bytes, estimated from the share of the part's rows read

            def advance(fraction: float, before: int = sum(sizes[:k]), size: int = sizes[k]):
                progress(before + round(fraction * size), sum(sizes))

        for batch in _parquet_batches(part, columns, chunk_rows, advance):
            bad = data.add(*batch)
            if bad is not None:
                raise InputError(f"{part.label}: row {data.n - starts[-1] + bad[0] + 1}: {bad[1]}")
    return data, "parquet", _sha256_of([p.path for p in parts])


# --------------------------------------------------------------------------------------------
# Turning collected columns into store arrays


def _indptr(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=n), out=out[1:])
    return out


def _finish(data: _Collected, strict: bool) -> dict:
    """Index ids, sort by (user, item), drop duplicates (last wins), build both orders."""
    user_ids, user, user_type = _labels(data.users, "user", data.trim)
    item_ids, item, item_type = _labels(data.items, "item", data.trim)
    rating = np.concatenate(data.ratings)
    stamp = None if data.stamps is None else np.concatenate(data.stamps)
    data.ratings.clear()
    data.stamps = None  # timestamps were views of pyarrow's buffers: give those back
    pa.default_memory_pool().release_unused()
    n_users, n_items = len(user_ids), len(item_ids)

    key = user.astype(np.int64)
    key *= n_items  # in place: no temporaries of 8 bytes per rating
    key += item
    order = np.argsort(key, kind="stable")  # equal keys stay in input order
    del key
    user = user[order]
    item = item[order]
    dup = (user[1:] == user[:-1]) & (item[1:] == item[:-1])  # same pair as the next row
    n_dup = int(dup.sum())
    if n_dup and strict:
        second = int(order[1:][dup].min())  # the earliest row that repeats a pair
        first = int(np.flatnonzero(order == second)[0])
        while first > 0 and dup[first - 1]:  # back to the first row of that pair
            first -= 1
        here, there = data.describe(second, int(order[first]))
        raise InputError(
            f"{here}: duplicate rating of user {user_ids[user[first]]} for item "
            f"{item_ids[item[first]]} (first at {there}); strict mode forbids duplicates"
        )
    keep = np.append(~dup, True)  # the last of each run of equal pairs wins
    del dup
    sel = order[keep]
    del order
    # One array at a time: each old one is freed before the next copy is made.
    user = user[keep]
    item = item[keep]
    rating = rating[sel]
    if stamp is not None:
        stamp = stamp[sel]
    del sel, keep
    by_item = np.argsort(item, kind="stable")  # users stay sorted within an item
    return {
        "user_id_type": user_type,
        "item_id_type": item_type,
        "n_users": n_users,
        "n_items": n_items,
        "n_ratings": len(user),
        "n_duplicates": n_dup,
        "user_ids": user_ids,
        "item_ids": item_ids,
        "user": user,
        "item": item,
        "rating": rating,
        "timestamp": stamp,
        "indptr": _indptr(user, n_users),
        "t_indptr": _indptr(item, n_items),
        "t_user": user[by_item],
        "t_rating": rating[by_item],
    }


def _write_array(group, name: str, values: np.ndarray) -> None:
    chunk = max(1, min(len(values), _ARRAY_CHUNK))
    dtype = str if values.dtype == object else values.dtype
    arr = create_array(group, name, shape=values.shape, dtype=dtype, chunks=(chunk,))
    if len(values):
        arr[...] = values


def _is_ratings_store(path: Path) -> bool:
    try:
        root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        return root.attrs.get("layout") == LAYOUT
    except Exception:  # anything unreadable is not ours to delete
        return False


def _check_target(store: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    if store.exists() or store.is_symlink():
        if not overwrite:
            raise InputError(f"{store}: store exists; pass overwrite=True to replace it")
        if not store.is_dir() or not _is_ratings_store(store):
            raise InputError(f"{store}: exists and is not a ratings store; refusing to replace it")
    if any(store.resolve() == p.resolve() for p in inputs):
        raise InputError(f"{store}: the store path is the input file")


def _store(
    store: Path, data: _Collected, source: dict[str, Any], strict: bool, movies, t0: float
) -> IngestReport:
    """Finish the columns, write the store beside its place and swap it in."""
    created: list[Path] = []
    tmp = store.parent / f".{store.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        parsed = _finish(data, strict)
        titles = None
        if movies is not None:
            table = _read_titles(Path(movies), numeric=parsed["item_id_type"] == "int64")
            titles = np.array([table.get(k, "") for k in parsed["item_ids"].tolist()], dtype=object)
        for parent in reversed([store.parent, *store.parent.parents]):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        _write_store(tmp, parsed, titles, movies, source)
        _move_into_place(tmp, store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:
                pass
        raise
    return IngestReport(
        n_users=parsed["n_users"],
        n_items=parsed["n_items"],
        n_ratings=parsed["n_ratings"],
        n_duplicates=parsed["n_duplicates"],
        format=source["format"],
        store_path=store,
        seconds=time.perf_counter() - t0,
    )


def _check_movies(movies: str | os.PathLike | None) -> None:
    if movies is not None and not Path(movies).is_file():
        what = "is a directory" if Path(movies).is_dir() else "no such file"
        raise InputError(f"{os.fspath(movies)}: {what}")


# --------------------------------------------------------------------------------------------
# The entry points


def ingest(
    input_path: str | os.PathLike,
    store_path: str | os.PathLike,
    *,
    format: str = "auto",
    sep: str | None = None,
    columns: Sequence[str] | Mapping[str, str] | None = None,
    movies: str | os.PathLike | None = None,
    overwrite: bool = False,
    strict: bool = False,
    chunk_rows: int = 1_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Read ratings from files and write a ratings store (layout: :mod:`dask_coded_als.data.store`).

    Parameters
    ----------
    input_path : str or os.PathLike
        A ratings file (delimited text, plain or gzip/bzip2/xz-compressed, or Parquet), a
        directory of part files, or a glob pattern such as ``"out/part-*.csv"``.
    store_path : str or os.PathLike
        The store directory to create. Missing parent directories are created.
    format : str, default "auto"
        One of :data:`FORMAT_NAMES`; it fixes the separator of text (see the module docstring).
        Parquet is recognised by content.
    sep : str, optional
        Field separator of text: one character, or one character repeated such as ``"::"``.
        Only with ``format="auto"`` or ``"csv"``.
    columns : list of str or mapping, optional
        Which columns hold user ids, item ids, ratings and timestamps: a list naming every field
        by position (``["user", "item", "rating", "timestamp"]``; ``"_"`` skips a field), or a
        mapping from these roles to column names (``{"user": "reviewerID", "item": "asin"}``).
        Default: found from the column names, else by position.
    movies : str or os.PathLike, optional
        ``movies.csv``, ``movies.dat`` or ``u.item``; titles are stored as ``ids/titles``.
    overwrite : bool, default False
        Replace an existing store (only a ratings store; see the module docstring).
    strict : bool, default False
        Make a duplicate (user, item) pair an error instead of keeping the last one.
    chunk_rows : int, default 1_000_000
        About this many rows are parsed at a time (a memory/speed trade-off).
    progress : callable, optional
        Called as ``progress(done, total)`` while the input is read: bytes read of the files'
        total size (for Parquet, estimated from the rows read). It may be called from a reader
        thread. Sorting and writing the store follow the last call.

    Returns
    -------
    IngestReport

    Raises
    ------
    InputError
        Bad parameters, a missing or unreadable input, malformed content (the message names the
        file and line or row), an existing store without ``overwrite``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (tmp / "books.csv").write_text("user,isbn,rating\\n7,0195153448,5\\n0,0195153448,3\\n")
    >>> report = ingest(tmp / "books.csv", tmp / "books.zarr")
    >>> report.n_users, report.n_items, report.format
    (2, 1, 'csv')
    >>> from dask_coded_als.data.store import open_store
    >>> open_store(tmp / "books.zarr").item_ids.tolist()
    ['0195153448']
    """
    t0 = time.perf_counter()
    _check_chunk_rows(chunk_rows)
    fmt = _resolve_format(format, sep, columns)
    cols = _check_columns(columns)
    parts = _parts(input_path)
    _check_movies(movies)
    store = Path(store_path)
    _check_target(store, overwrite, [p.path for p in parts])
    label = os.fspath(input_path)
    if parts[0].parquet:
        if fmt != "auto" or sep is not None:
            raise InputError(f"{label}: Parquet, not text: format and sep do not apply")
        data, fmt, sha = _read_parquet(parts, cols, chunk_rows, progress)
    else:
        data, fmt, sha = _read_text(parts, fmt, sep, cols, chunk_rows, progress)
    if data.n == 0:
        header = any(p.skip for p in parts)
        raise InputError(f"{label}: no ratings{' after the header line' if header else ''}")
    source = {"format": fmt, "source": Path(label).name, "sha256": sha}
    return _store(store, data, source, strict, movies, t0)


def ingest_dataframe(
    df: Any,
    store_path: str | os.PathLike,
    *,
    user: str | None = None,
    item: str | None = None,
    rating: str | None = None,
    timestamp: str | bool | None = None,
    movies: str | os.PathLike | None = None,
    overwrite: bool = False,
    strict: bool = False,
    chunk_rows: int = 1_000_000,
) -> IngestReport:
    """Write a ratings store from a pandas or dask DataFrame with one rating per row.

    Parameters
    ----------
    df : pandas.DataFrame or dask.dataframe.DataFrame
        The ratings. A dask DataFrame is computed one partition at a time.
    store_path : str or os.PathLike
        The store directory to create.
    user, item, rating : str, optional
        Column names. A name left out is found as in a header (``userId``, ``user_id``,
        ``movieId``, ``rating``, ...: :data:`ROLE_NAMES`), else by position when the frame has
        3 or 4 columns. Id columns must hold integers or strings (labels: see the module
        docstring), the rating column numbers.
    timestamp : str or False, optional
        The timestamp column (integers or datetimes). By default a column named like a
        timestamp is used if there is one; ``False`` stores none.
    movies, overwrite, strict, chunk_rows
        As for :func:`ingest`.

    Returns
    -------
    IngestReport
        With ``format="dataframe"``.

    Raises
    ------
    InputError
        Missing or unusable columns, a column mixing id types, a missing or non-finite value
        (the message names ``DataFrame.iloc[row]``), an existing store without ``overwrite``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import pandas as pd
    >>> df = pd.DataFrame({"reviewerID": ["A3SGXH7AUHU8GW", "A1D87F6ZCVE5NK"],
    ...                    "asin": ["B001E4KFG0", "B001E4KFG0"], "overall": [5.0, 4.0]})
    >>> report = ingest_dataframe(df, pathlib.Path(tempfile.mkdtemp()) / "r.zarr")
    >>> report.n_users, report.n_items, report.n_ratings
    (2, 1, 2)
    """
    t0 = time.perf_counter()
    _check_movies(movies)
    store = Path(store_path)
    _check_target(store, overwrite, [])
    data = _collect_frame(df, user, item, rating, timestamp, chunk_rows)
    source = {"format": "dataframe", "source": "DataFrame", "sha256": None}
    return _store(store, data, source, strict, movies, t0)


def is_dataframe(obj: Any) -> bool:
    """Whether ``obj`` is a pandas or dask DataFrame (duck-typed: neither is imported)."""
    return hasattr(obj, "columns") and hasattr(obj, "iloc")


def _collect_frame(
    df: Any, user: Any, item: Any, rating: Any, timestamp: Any, chunk_rows: int
) -> _Collected:
    """The checked columns of a DataFrame, found by name or position as ingest_dataframe says."""
    _check_chunk_rows(chunk_rows)
    if not is_dataframe(df):
        raise InputError(f"expected a pandas or dask DataFrame, not {type(df).__name__}")
    names = [str(c) for c in df.columns]
    given = {"user": user, "item": item, "rating": rating, "timestamp": timestamp}
    given = {role: str(v) for role, v in given.items() if v is not None and v is not False}
    positions = _resolve_roles(_check_columns(given), names, len(names), "DataFrame")
    if timestamp is False:
        positions.pop("timestamp", None)

    def describe(record: int, first: int) -> tuple[str, str]:
        return f"DataFrame.iloc[{record}]", f"iloc[{first}]"

    data = _Collected(False, describe)
    for batch in _frame_batches(df, {r: df.columns[k] for r, k in positions.items()}, chunk_rows):
        bad = data.add(*batch)
        if bad is not None:
            raise InputError(f"DataFrame.iloc[{data.n + bad[0]}]: {bad[1]}")
    if data.n == 0:
        raise InputError("DataFrame: no ratings (no rows)")
    return data


def ratings_from_dataframe(
    df: Any,
    *,
    user: str | None = None,
    item: str | None = None,
    rating: str | None = None,
    strict: bool = False,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The rating matrix of a DataFrame with one rating per row, in memory, and its ids.

    Columns are found as :func:`ingest_dataframe` finds them and checked the same way (ids
    integers or strings, ratings finite numbers; duplicates: the last wins, or an error when
    ``strict``). Rows and columns of R follow the sorted distinct user and item ids.

    Returns
    -------
    R : scipy.sparse.csr_matrix, shape (n_users, n_items)
    user_ids, item_ids : ndarray
        The id of each row and column of R (int64, or object for strings).

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"user": ["a", "b", "a"], "item": [7, 7, 3], "rating": [4.0, 5, 1]})
    >>> R, users, items = ratings_from_dataframe(df)
    >>> R.toarray(), users.tolist(), items.tolist()
    (array([[1., 4.],
           [0., 5.]]), ['a', 'b'], [3, 7])
    """
    parsed = _finish(_collect_frame(df, user, item, rating, False, 1_000_000), strict)
    R = sp.csr_matrix(
        (parsed["rating"].astype(np.float64), parsed["item"], parsed["indptr"]),
        shape=(parsed["n_users"], parsed["n_items"]),
    )
    return R, parsed["user_ids"], parsed["item_ids"]


def check_ids(ids: Any, size: int, name: str) -> tuple[np.ndarray, str]:
    """Ids of a matrix's rows or columns, as a store keeps them: ``(ids, "int64")`` or
    ``(ids as an object array of str, "string")``; 0, 1, ... when ``ids`` is None.

    Raises
    ------
    InputError
        Not ``size`` ids, a mix of types, or repeated ids (``name`` names the argument).
    """
    if ids is None:
        return np.arange(size, dtype=np.int64), "int64"
    arr = np.asarray(ids)
    if arr.shape != (size,):
        raise InputError(f"{name} has shape {arr.shape}, expected ({size},)")
    if arr.dtype.kind in "iu":
        arr, kind_name = arr.astype(np.int64), "int64"
    elif all(isinstance(v, str) for v in arr.tolist()):
        arr, kind_name = np.array(arr.tolist(), dtype=object), "string"
    else:
        raise InputError(f"{name} must be all integers or all strings")
    ordered = np.sort(arr)
    if size > 1 and np.any(ordered[1:] == ordered[:-1]):
        raise InputError(f"{name} are not unique")
    return arr, kind_name


def ingest_matrix(
    R: Any,
    store_path: str | os.PathLike,
    *,
    user_ids: Any = None,
    item_ids: Any = None,
    titles: Any = None,
    overwrite: bool = False,
) -> IngestReport:
    """Write a ratings store from a matrix (users x items) and the ids of its rows and columns.

    Every row and column becomes a user and an item, also those without ratings. As in every
    store, users and items are numbered in the sorted order of their ids, so the store's row i is
    R's row i only when the ids are sorted.

    Parameters
    ----------
    R : ndarray or scipy.sparse matrix, shape (m, n)
        Ratings: the stored entries of a sparse matrix, the nonzero ones of an array.
    store_path : str or os.PathLike
        The store directory to create.
    user_ids, item_ids : array_like, optional
        Unique integer or string ids of the rows and columns (default 0, 1, ...).
    titles : sequence of str, optional
        One title per column, stored as ``ids/titles``.
    overwrite : bool, default False
        As for :func:`ingest`.

    Returns
    -------
    IngestReport
        With ``format="matrix"``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.zarr"
    >>> ingest_matrix(np.array([[5.0, 0.0], [0.0, 3.0]]), path, item_ids=["b", "a"]).n_ratings
    2
    >>> from dask_coded_als.data.store import open_store
    >>> open_store(path).item_ids.tolist()
    ['a', 'b']
    """
    import scipy.sparse as sp

    t0 = time.perf_counter()
    if not (sp.issparse(R) or isinstance(R, np.ndarray)) or R.ndim != 2:
        raise InputError("R must be a 2-D numpy array or scipy.sparse matrix")
    m, n = R.shape
    users, user_type = check_ids(user_ids, m, "user_ids")
    items, item_type = check_ids(item_ids, n, "item_ids")
    if titles is not None and len(titles) != n:
        raise InputError(f"titles has {len(titles)} entries, expected {n}")
    by_user = np.argsort(users, kind="stable")
    by_item = np.argsort(items, kind="stable")
    csr = sp.csr_matrix(R, dtype=np.float32)[by_user][:, by_item].tocsr()
    csr.sum_duplicates()
    csr.sort_indices()
    if not np.isfinite(csr.data).all():
        raise InputError("R contains NaN or infinite values")
    csc = csr.tocsc()
    csc.sort_indices()
    index = np.int32 if max(m, n) < 2**31 else np.int64
    parsed = {
        "user_id_type": user_type,
        "item_id_type": item_type,
        "n_users": m,
        "n_items": n,
        "n_ratings": int(csr.nnz),
        "n_duplicates": 0,
        "user_ids": users[by_user],
        "item_ids": items[by_item],
        "user": np.repeat(np.arange(m, dtype=index), np.diff(csr.indptr)),
        "item": csr.indices.astype(index),
        "rating": csr.data,
        "timestamp": None,
        "indptr": csr.indptr.astype(np.int64),
        "t_indptr": csc.indptr.astype(np.int64),
        "t_user": csc.indices.astype(index),
        "t_rating": csc.data,
    }
    store = Path(store_path)
    _check_target(store, overwrite, [])
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.parent / f".{store.name}.tmp-{uuid.uuid4().hex[:12]}"
    titled = None if titles is None else np.array([str(t) for t in titles], dtype=object)[by_item]
    try:
        source = {"format": "matrix", "source": "matrix", "sha256": None}
        _write_store(tmp, parsed, titled, None, source)
        _move_into_place(tmp, store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return IngestReport(m, n, int(csr.nnz), 0, "matrix", store, time.perf_counter() - t0)


def _move_into_place(tmp: Path, store: Path) -> None:
    if not store.exists():
        try:
            os.rename(tmp, store)
        except OSError as exc:
            raise InputError(f"{store}: cannot create the store ({exc.strerror or exc})") from None
        return
    old = store.parent / f".{store.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(store, old)
    try:
        os.rename(tmp, store)
    except BaseException:
        os.rename(old, store)
        raise
    if old.is_symlink():
        old.unlink()  # replacing a link to a store: the linked store itself is left alone
    else:
        shutil.rmtree(old, ignore_errors=True)


def _write_store(
    tmp: Path, parsed: dict, titles: np.ndarray | None, movies, source: dict[str, Any]
) -> None:
    user_type, item_type = parsed["user_id_type"], parsed["item_id_type"]
    attrs = {
        "layout": LAYOUT,
        "layout_version": LAYOUT_VERSION,
        "n_users": parsed["n_users"],
        "n_items": parsed["n_items"],
        "n_ratings": parsed["n_ratings"],
        "n_duplicates": parsed["n_duplicates"],
        "format": source["format"],
        "source": source["source"],
        "sha256": source["sha256"],
        "id_type": user_type if user_type == item_type else "mixed",
        "user_id_type": user_type,
        "item_id_type": item_type,
        "has_timestamps": parsed["timestamp"] is not None,
        "has_titles": titles is not None,
        "movies_source": Path(movies).name if movies is not None else None,
        "ingest_id": uuid.uuid4().hex,
    }
    root = zarr.open_group(LocalStore(tmp), mode="w-", zarr_format=3)
    ratings = root.create_group("ratings")
    _write_array(ratings, "indptr", parsed["indptr"])
    _write_array(ratings, "user", parsed["user"])
    _write_array(ratings, "item", parsed["item"])
    _write_array(ratings, "rating", parsed["rating"])
    if parsed["timestamp"] is not None:
        _write_array(ratings, "timestamp", parsed["timestamp"])
    by_item = root.create_group("by_item")
    _write_array(by_item, "indptr", parsed["t_indptr"])
    _write_array(by_item, "user", parsed["t_user"])
    _write_array(by_item, "rating", parsed["t_rating"])
    ids = root.create_group("ids")
    _write_array(ids, "users", parsed["user_ids"])
    _write_array(ids, "items", parsed["item_ids"])
    if titles is not None:
        _write_array(ids, "titles", titles)
    # Root attributes last: a store without them is not recognised as a ratings store.
    root.attrs.update(attrs)


# --------------------------------------------------------------------------------------------
# Titles


def _read_titles(path: Path, numeric: bool) -> dict:
    """Item id -> title from movies.csv, movies.dat or u.item (UTF-8, else latin-1)."""
    label = os.fspath(path)
    with _Source(path, label) as src:
        raw = src.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # u.item and ml-1m movies.dat are latin-1
    lines = text.replace("\r\n", "\n").split("\n")
    first = next((ln for ln in lines if ln.strip()), "")
    name = re.sub(r"\.(gz|bz2|xz)$", "", path.name.lower())
    if name.endswith(".item") or (not name.endswith((".csv", ".dat")) and "|" in first):
        kind, sep = "item", "|"
    elif name.endswith(".dat") or (not name.endswith(".csv") and "::" in first):
        kind, sep = "dat", "::"
    else:
        kind, sep = "csv", ","
    rows = csv.reader(lines, strict=True) if kind == "csv" else (ln.split(sep) for ln in lines)
    titles: dict = {}
    lineno = 0
    try:
        for lineno, row in enumerate(rows, start=1):
            if kind == "csv":
                lineno = rows.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < 2:
                raise _LineError(f"expected at least 2 fields separated by {sep!r}, found 1")
            key_text = row[0].strip()
            if lineno == 1 and (
                key_text.lower() in _MOVIE_HEADERS if not numeric else not _is_number(key_text)
            ):
                continue  # header line
            if not key_text:
                raise _LineError("empty movie id")
            if numeric and not _INT_RE.fullmatch(key_text):
                raise _LineError(
                    f"movie id {_show(key_text)} is not an integer (the item ids are integers)"
                )
            key = int(key_text) if numeric else key_text
            if key in titles:
                raise _LineError(f"movie id {_show(key_text)} appears twice")
            titles[key] = row[1].strip()
    except (_LineError, csv.Error) as exc:
        raise InputError(f"{label}:{lineno}: {one_line(exc)}") from None
    return titles
