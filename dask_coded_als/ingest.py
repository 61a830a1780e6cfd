"""Ingest a ratings file (MovieLens or any delimited text) into a ratings store.

Formats
-------
``"ml-100k"``
    ``u.data`` (and the ``u1.base`` ... ``ub.test`` splits): ``user<TAB>item<TAB>rating<TAB>time``.
``"ml-1m"`` (alias ``"ml-10m"``)
    ``ratings.dat``: ``user::item::rating::time``.
``"ml-latest"`` (aliases ``"ml-20m"``, ``"ml-25m"``, ``"ml-32m"``)
    ``ratings.csv``: ``userId,movieId,rating,timestamp`` with that header line.
``"csv"``
    Any delimited file: ``sep`` (default ``","``; one character allows csv quoting, a longer
    separator splits plainly) and ``columns``, a list naming each field ``"user"``, ``"item"``,
    ``"rating"``, ``"timestamp"`` or ``"_"`` (ignored). Without ``columns``, 3 fields mean
    user, item, rating and 4 fields add a timestamp. Ids are arbitrary strings (surrounding
    blanks stripped); they are stored as strings.
``"auto"`` (default)
    ``"csv"`` when ``sep`` or ``columns`` is given. Otherwise the file name decides (``.gz``
    removed first): ``u.data``, ``*.data``, ``u*.base``, ``u*.test`` -> ml-100k; ``*.dat`` ->
    ml-1m; ``*.csv`` -> ml-latest. Any other name: the first non-blank line decides (contains
    ``::`` -> ml-1m, a tab -> ml-100k, a comma -> ml-latest).

In the MovieLens formats ids must be positive integers below 2**63 and every line has a
timestamp (an integer). Ratings must be finite decimal numbers in every format. Any of these
files may be gzip-compressed (detected by its magic bytes, not by its name).

Header rule
-----------
The first non-blank line is a header, and skipped, when none of its fields (split like the data)
is a number, where a number is a decimal literal such as ``3``, ``-2``, ``4.5`` or ``1e3``. Any
later line is data. Blank lines are skipped everywhere; line numbers in messages count every
physical line, starting at 1. Lines may end in ``\\n`` or ``\\r\\n``; a UTF-8 byte-order mark is
ignored. Generic files must be UTF-8.

Titles
------
``movies`` is ``movies.csv`` (``movieId,title,genres``, csv quoting), ``movies.dat``
(``id::title::genres``) or ``u.item`` (``id|title|...``), plain or gzipped; the name decides,
else the first line. It is read as UTF-8, or as Latin-1 when it is not valid UTF-8 (``u.item`` and
the ml-1m ``movies.dat`` are Latin-1). Line 1 is a header when its id is not an integer (with
string ids: when it is ``movieId``, ``item``, ``id`` or similar). Movie ids must be unique; movies
nobody rated are ignored, and rated items without a title get ``""``.

Duplicates
----------
When a (user, item) pair occurs more than once the last occurrence in file order wins; the number
of dropped ratings is reported as ``n_duplicates``. ``strict=True`` makes a duplicate an error.

Errors and atomicity
--------------------
Bad input raises :class:`~dask_coded_als.errors.InputError` with a one-line message
``<file>:<line>: <problem>`` (or ``<file>: <problem>`` when no line applies). The store is
written to a hidden temporary sibling directory and renamed into place at the end, so a failed
ingest leaves nothing behind and never touches an existing store. An existing store is replaced
only with ``overwrite=True`` and only if it is a ratings store (any other existing path is
refused); the old store is renamed aside, the new one renamed in, then the old one deleted.

Speed and memory
----------------
The file is read in blocks of about ``chunk_rows`` lines. MovieLens blocks are parsed with
vectorized numpy byte arithmetic; a block the fast parser does not fully understand (blank lines,
blanks around fields, signs, exponents, or an error) is re-parsed line by line, which is slower
but gives exact messages. Generic files go through the csv module block by block. Only numpy
arrays of the parsed columns (about 28 bytes per rating) outlive a block.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from dask_coded_als.errors import InputError
from dask_coded_als.store import LAYOUT, LAYOUT_VERSION

__all__ = ["IngestReport", "ingest", "FORMATS", "FORMAT_ALIASES"]

#: Values accepted by ``format`` (besides the aliases).
FORMATS = ("auto", "ml-100k", "ml-1m", "ml-latest", "csv")
#: Other MovieLens release names and the format they use.
FORMAT_ALIASES = {
    "ml-10m": "ml-1m",
    "ml-20m": "ml-latest",
    "ml-25m": "ml-latest",
    "ml-32m": "ml-latest",
    "ml-latest-small": "ml-latest",
}
_ML_SEP = {"ml-100k": "\t", "ml-1m": "::", "ml-latest": ","}
_ML_COLUMNS = ("user", "item", "rating", "timestamp")
_COLUMN_NAMES = {"user", "item", "rating", "timestamp", "_"}
_INT64_MAX = 2**63 - 1
#: Elements per chunk of the stored rating arrays.
_ARRAY_CHUNK = 1 << 20
#: A line longer than this is not a ratings line; stop instead of buffering the whole file.
_MAX_LINE = 1 << 24

_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NONFINITE = {"nan", "inf", "infinity"}
_ML100K_SPLIT_RE = re.compile(r"u[a-z0-9]*\.(base|test)")
_NON_BLANK_RE = re.compile(rb"[^ \t\r\n\f\v]")
#: First fields that mark the header line of a movies file with string ids.
_MOVIE_HEADERS = {"movieid", "movie_id", "movie", "itemid", "item_id", "item", "id"}


@dataclass(frozen=True)
class IngestReport:
    """What :func:`ingest` did.

    Attributes
    ----------
    n_users, n_items, n_ratings : int
        Shape and number of stored ratings of R (after removing duplicates).
    n_duplicates : int
        Ratings dropped because a later line rated the same (user, item) pair.
    format : str
        The format used (``"ml-100k"``, ``"ml-1m"``, ``"ml-latest"`` or ``"csv"``).
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
    """A problem in one field; the caller adds the file name and line number."""


def _show(text: str, limit: int = 40) -> str:
    """A short, single-line quoted rendering of a field for messages."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


# --------------------------------------------------------------------------------------------
# Reading the source file


class _Source:
    """A ratings file read in blocks of whole lines, gunzipped when needed, hashed as read."""

    _MAGIC = {
        b"PK\x03\x04": "a zip archive; extract the ratings file from it first",
        b"BZh": "bzip2-compressed; only gzip compression is supported",
        b"\xfd7zXZ\x00": "xz-compressed; only gzip compression is supported",
        b"\x28\xb5\x2f\xfd": "zstd-compressed; only gzip compression is supported",
    }

    def __init__(self, path: Path, label: str) -> None:
        self.label = label
        self.sha = hashlib.sha256()
        try:
            self._raw = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise InputError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{label}: is a directory, not a ratings file") from None
        except OSError as exc:
            raise InputError(f"{label}: cannot open ({exc.strerror or exc})") from None
        magic = self._raw.read(8)
        self._raw.seek(0)
        for prefix, what in self._MAGIC.items():
            if magic.startswith(prefix):
                self._raw.close()
                raise InputError(f"{label}: {what}")
        self.gzipped = magic.startswith(b"\x1f\x8b")
        self._stream = gzip.GzipFile(fileobj=self, mode="rb") if self.gzipped else None

    # GzipFile reads the compressed bytes through this method, so they are hashed as read.
    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha.update(data)
        return data

    def _read_text(self, size: int) -> bytes:
        if self._stream is None:
            return self.read(size)
        try:
            return self._stream.read(size)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise InputError(
                f"{self.label}: corrupt or truncated gzip stream ({_one_line(exc)})"
            ) from None

    def blocks(self, target_lines: int) -> Iterator[tuple[bytes, bool]]:
        """Yield ``(data, had_newline)``: whole lines ending in ``\\n`` (one appended at EOF)."""
        per_line = 32.0
        carry = b""
        first = True
        while True:
            size = max(1 << 16, int(target_lines * per_line))
            chunk = self._read_text(size)
            if first:
                first = False
                if chunk.startswith(b"\xef\xbb\xbf"):
                    chunk = chunk[3:]
            if not chunk:
                break
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                if len(carry) > _MAX_LINE:
                    raise InputError(f"{self.label}: a line is longer than {_MAX_LINE} bytes")
                continue
            carry = data[cut + 1 :]
            block = data[: cut + 1]
            n_lines = block.count(b"\n")
            per_line = max(8.0, len(block) / n_lines)
            yield block, True
        if carry:
            yield carry + b"\n", False

    def hexdigest(self) -> str:
        """SHA-256 of the whole file on disk (reads what the parser did not need)."""
        while chunk := self._raw.read(1 << 20):
            self.sha.update(chunk)
        return self.sha.hexdigest()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._raw.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    controls = sum(sample.count(bytes([c])) for c in range(32) if c not in (9, 10, 13))
    return controls > 0.05 * max(1, len(sample))


# --------------------------------------------------------------------------------------------
# Field parsing (slow path, exact messages)


def _parse_id(text: str, what: str, hint: str) -> int:
    t = text.strip()
    if _INT_RE.fullmatch(t):
        value = int(t)
        if value <= 0:
            raise _LineError(f"{what} id {_show(t)} is not a positive integer")
        if value > _INT64_MAX:
            raise _LineError(f"{what} id {_show(t)} is out of range (larger than 2**63 - 1)")
        return value
    if not t:
        raise _LineError(f"empty {what} id")
    if _NUM_RE.fullmatch(t):  # a fractional number: the hint about string ids does not apply
        hint = ""
    raise _LineError(f"{what} id {_show(t)} is not a positive integer{hint}")


def _parse_rating(text: str) -> float:
    t = text.strip()
    if _NUM_RE.fullmatch(t):
        value = float(t)
        if not math.isfinite(value):
            raise _LineError(f"rating {_show(t)} is not a finite number")
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


def _is_number(text: str) -> bool:
    return _NUM_RE.fullmatch(text.strip()) is not None


# --------------------------------------------------------------------------------------------
# Fast vectorized parsing of MovieLens blocks

_LUTS: dict[int, np.ndarray] = {}


def _class_lut(sep_byte: int) -> np.ndarray:
    """Byte -> class: 0 digit, 1 separator, 2 newline, 3 dot, 4 anything else."""
    lut = _LUTS.get(sep_byte)
    if lut is None:
        lut = np.full(256, 4, dtype=np.uint8)
        lut[ord("0") : ord("9") + 1] = 0
        lut[sep_byte] = 1
        lut[ord("\n")] = 2
        lut[ord(".")] = 3
        _LUTS[sep_byte] = lut
    return lut


def _digits_int(buf: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> np.ndarray | None:
    """Unsigned integers of fields ending before ``ends``; None when not plain digits."""
    width = int(lens.max())
    if width > 19:  # 20 digits may overflow uint64
        return None
    value = np.zeros(len(ends), dtype=np.uint64)
    for j in range(width):
        # Fields are right-aligned in a window of `width` bytes; positions left of a field's
        # first byte are masked to digit 0.
        inside = lens >= width - j
        b = buf[np.maximum(ends - width + j, 0)]
        b = np.where(inside, b, 48)
        if (b == 46).any():
            return None
        value = value * np.uint64(10) + (b - 48).astype(np.uint64)
    if (value > np.uint64(_INT64_MAX)).any():
        return None
    return value.astype(np.int64)


def _digits_decimal(buf: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> np.ndarray | None:
    """Decimals like ``4``, ``3.5``, ``4.0`` as float64; None when something else is there."""
    width = int(lens.max())
    if width > 16:
        return None
    n = len(ends)
    mant = np.zeros(n, dtype=np.uint64)
    frac = np.zeros(n, dtype=np.int64)
    dots = np.zeros(n, dtype=np.int64)
    for j in range(width):
        inside = lens >= width - j
        b = buf[np.maximum(ends - width + j, 0)]
        is_dot = inside & (b == 46)
        is_digit = inside & ~is_dot
        frac += is_digit & (dots > 0)
        dots += is_dot
        mant = np.where(is_digit, mant * np.uint64(10) + (b - 48).astype(np.uint64), mant)
    n_digits = lens - dots
    if (dots > 1).any() or (n_digits < 1).any() or (n_digits > 15).any():
        return None
    # An exact integer divided by an exact power of ten: one correctly rounded operation,
    # the same value float() gives.
    return mant.astype(np.float64) / np.power(10.0, frac)


def _fast_parse(data: bytes, sep: str) -> tuple[np.ndarray, ...] | None:
    """Parse a block of ``user sep item sep rating sep timestamp`` lines, or return None."""
    if sep == "::":
        if b"\t" in data:
            return None
        data = data.replace(b"::", b"\t")
        sep_byte = 9
    else:
        sep_byte = ord(sep)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    buf = np.frombuffer(data, dtype=np.uint8)
    cls = _class_lut(sep_byte)[buf]
    if cls.max(initial=0) == 4:
        return None
    delim = np.flatnonzero((cls == 1) | (cls == 2))
    if len(delim) == 0 or len(delim) % 4:
        return None
    kinds = cls[delim].reshape(-1, 4)
    if not ((kinds[:, :3] == 1).all() and (kinds[:, 3] == 2).all()):
        return None
    starts = np.empty_like(delim)
    starts[0] = 0
    starts[1:] = delim[:-1] + 1
    ends = delim.reshape(-1, 4)
    lens = ends - starts.reshape(-1, 4)
    if lens.min() < 1:
        return None
    user = _digits_int(buf, ends[:, 0], lens[:, 0])
    if user is None or not user.all():
        return None
    item = _digits_int(buf, ends[:, 1], lens[:, 1])
    if item is None or not item.all():
        return None
    rating = _digits_decimal(buf, ends[:, 2], lens[:, 2])
    if rating is None:
        return None
    stamp = _digits_int(buf, ends[:, 3], lens[:, 3])
    if stamp is None:
        return None
    return user, item, rating.astype(np.float32), stamp


# --------------------------------------------------------------------------------------------
# Accumulating parsed blocks


class _Collector:
    """Parsed columns in file order, plus the map from record number to line number."""

    def __init__(self) -> None:
        self.users: list[np.ndarray] = []
        self.items: list[np.ndarray] = []
        self.ratings: list[np.ndarray] = []
        self.stamps: list[np.ndarray] = []
        self.n = 0
        # (first record, first line, explicit line numbers or None when consecutive)
        self.lines: list[tuple[int, int, np.ndarray | None]] = []

    def add(self, user, item, rating, stamp, first_line: int, lines: np.ndarray | None) -> None:
        if len(user) == 0:
            return
        self.lines.append((self.n, first_line, lines))
        self.users.append(user)
        self.items.append(item)
        self.ratings.append(np.asarray(rating, dtype=np.float32))
        if stamp is not None:
            self.stamps.append(stamp)
        self.n += len(user)

    def line_of(self, record: int) -> int:
        starts = [s for s, _, _ in self.lines]
        k = int(np.searchsorted(starts, record, side="right")) - 1
        first, line, explicit = self.lines[k]
        return int(explicit[record - first]) if explicit is not None else line + record - first

    @staticmethod
    def _take(parts: list[np.ndarray]) -> np.ndarray:
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        parts.clear()  # drop the block arrays as soon as they are merged
        return out


# --------------------------------------------------------------------------------------------
# Block parsers


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    lines.pop()  # data ends with a newline
    return lines


def _parse_ml_slow(
    data: bytes, sep: str, first_line: int, label: str, fmt: str, complete: bool
) -> tuple[np.ndarray, ...]:
    hint = f" (ids are integers in {fmt}; use format='csv' for other ids)"
    users, items, ratings, stamps, lines = [], [], [], [], []
    raw_lines = _split_lines(data)
    for k, raw in enumerate(raw_lines):
        lineno = first_line + k
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            continue
        if b"\x00" in raw:
            raise InputError(f"{label}:{lineno}: binary data (NUL byte), not a ratings line")
        fields = raw.decode("utf-8", "backslashreplace").split(sep)
        try:
            if len(fields) != 4:
                last = not complete and k == len(raw_lines) - 1
                raise _LineError(
                    f"expected 4 fields separated by {sep!r}, found {len(fields)}"
                    + ("; the last line is incomplete" if last else "")
                )
            users.append(_parse_id(fields[0], "user", hint))
            items.append(_parse_id(fields[1], "item", hint))
            ratings.append(_parse_rating(fields[2]))
            stamps.append(_parse_timestamp(fields[3]))
        except _LineError as exc:
            raise InputError(f"{label}:{lineno}: {exc}") from None
        lines.append(lineno)
    return (
        np.array(users, dtype=np.int64),
        np.array(items, dtype=np.int64),
        np.array(ratings, dtype=np.float32),
        np.array(stamps, dtype=np.int64),
        np.array(lines, dtype=np.int64),
    )


class _IdCoder:
    """Maps string ids to codes in first-seen order."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def encode(self, values: list[str]) -> np.ndarray:
        codes = self.codes
        out = np.empty(len(values), dtype=np.int64)
        for k, v in enumerate(values):
            c = codes.get(v)
            if c is None:
                c = codes[v] = len(codes)
            out[k] = c
        return out

    def sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids in store order, rank of every code). Numeric order when all ids are integers."""
        ids = list(self.codes)
        if all(_INT_RE.fullmatch(s) for s in ids) and all(
            -_INT64_MAX - 1 <= int(s) <= _INT64_MAX for s in ids
        ):
            order = sorted(range(len(ids)), key=lambda k: (int(ids[k]), ids[k]))
        else:
            order = sorted(range(len(ids)), key=ids.__getitem__)
        rank = np.empty(len(ids), dtype=np.int64)
        rank[np.array(order, dtype=np.int64)] = np.arange(len(ids), dtype=np.int64)
        return np.array([ids[k] for k in order], dtype=object), rank


def _parse_generic(
    data: bytes,
    sep: str,
    positions: dict[str, int],
    n_fields: int,
    first_line: int,
    label: str,
    coders: tuple[_IdCoder, _IdCoder],
    complete: bool,
) -> tuple[np.ndarray, ...]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = first_line + data.count(b"\n", 0, exc.start)
        raise InputError(f"{label}:{lineno}: not UTF-8 text") from None
    if "\x00" in text:
        lineno = first_line + text.count("\n", 0, text.index("\x00"))
        raise InputError(f"{label}:{lineno}: binary data (NUL byte), not a ratings line")
    lines = text.replace("\r\n", "\n").split("\n")
    lines.pop()
    users, items, ratings, stamps, linenos = [], [], [], [], []
    pu, pi, pr = positions["user"], positions["item"], positions["rating"]
    pt = positions.get("timestamp")
    if len(sep) == 1:
        reader = csv.reader(lines, delimiter=sep, strict=True)
        # line_num is read after each row is produced: the row's last line.
        rows = ((reader.line_num - 1, row) for row in reader)
    else:
        reader = None
        rows = enumerate(line.split(sep) for line in lines)
    offset = 0
    try:
        for offset, row in rows:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != n_fields:
                last = not complete and offset == len(lines) - 1
                raise _LineError(
                    f"expected {n_fields} fields separated by {sep!r}, found {len(row)}"
                    + ("; the last line is incomplete" if last else "")
                )
            user = row[pu].strip()
            item = row[pi].strip()
            if not user:
                raise _LineError("empty user id")
            if not item:
                raise _LineError("empty item id")
            users.append(user)
            items.append(item)
            ratings.append(_parse_rating(row[pr]))
            if pt is not None:
                stamps.append(_parse_timestamp(row[pt]))
            linenos.append(first_line + offset)
    except _LineError as exc:
        raise InputError(f"{label}:{first_line + offset}: {exc}") from None
    except csv.Error as exc:
        lineno = first_line + reader.line_num - 1
        raise InputError(f"{label}:{lineno}: malformed CSV ({_one_line(exc)})") from None
    return (
        coders[0].encode(users),
        coders[1].encode(items),
        np.array(ratings, dtype=np.float32),
        np.array(stamps, dtype=np.int64) if pt is not None else None,
        np.array(linenos, dtype=np.int64),
    )


# --------------------------------------------------------------------------------------------
# Format, header and columns


def _resolve_format(fmt: str, sep: str | None, columns: Sequence[str] | None, path: Path) -> str:
    if not isinstance(fmt, str):
        raise InputError(f"format must be a string, not {fmt!r}")
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        names = ", ".join(FORMATS + tuple(FORMAT_ALIASES))
        raise InputError(f"unknown format {fmt!r} (one of {names})")
    if fmt in _ML_SEP and (sep is not None or columns is not None):
        raise InputError(f"sep and columns apply to format='csv', not {fmt!r}")
    if fmt != "auto":
        return fmt
    if sep is not None or columns is not None:
        return "csv"
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".data") or _ML100K_SPLIT_RE.fullmatch(name):
        return "ml-100k"
    if name.endswith(".dat"):
        return "ml-1m"
    if name.endswith(".csv"):
        return "ml-latest"
    return "auto"  # decided from the first line


def _sniff(line: str, label: str) -> str:
    if "::" in line:
        return "ml-1m"
    if "\t" in line:
        return "ml-100k"
    if "," in line:
        return "ml-latest"
    raise InputError(
        f"{label}: cannot tell the format from the file name or the first line; pass format="
    )


def _check_columns(columns: Sequence[str]) -> list[str]:
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise InputError(f"columns must be a list of names, not {columns!r}")
    cols = [c.strip().lower() for c in columns]
    bad = [c for c in cols if c not in _COLUMN_NAMES]
    if bad:
        raise InputError(f"unknown column name {bad[0]!r} (use user, item, rating, timestamp, _)")
    for name in ("user", "item", "rating"):
        if cols.count(name) != 1:
            raise InputError(f"columns must name {name!r} exactly once: {list(columns)}")
    if cols.count("timestamp") > 1:
        raise InputError(f"columns name 'timestamp' twice: {list(columns)}")
    return cols


def _split_line(line: str, sep: str, quoted: bool) -> list[str]:
    if quoted and len(sep) == 1:
        try:
            return next(csv.reader([line], delimiter=sep), [])
        except csv.Error:
            return line.split(sep)
    return line.split(sep)


# --------------------------------------------------------------------------------------------
# Titles


def _read_titles(path: Path, numeric: bool) -> dict:
    """Item id -> title from movies.csv, movies.dat or u.item (UTF-8, else latin-1)."""
    label = os.fspath(path)
    src = _Source(path, label)
    try:
        raw = b"".join(block for block, _ in src.blocks(1 << 16))
    finally:
        src.close()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # u.item and ml-1m movies.dat are latin-1
    lines = text.replace("\r\n", "\n").split("\n")
    first = next((ln for ln in lines if ln.strip()), "")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".item") or (not name.endswith((".csv", ".dat")) and "|" in first):
        kind, sep = "item", "|"
    elif name.endswith(".dat") or (not name.endswith(".csv") and "::" in first):
        kind, sep = "dat", "::"
    else:
        kind, sep = "csv", ","
    if kind == "csv":
        rows = csv.reader(lines, strict=True)
    else:
        rows = (ln.split(sep) for ln in lines)
    titles: dict = {}
    hint = " (movies file)"
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
            key = _parse_id(key_text, "movie", hint) if numeric else key_text
            if not numeric and not key:
                raise _LineError("empty movie id")
            if key in titles:
                raise _LineError(f"movie id {_show(key_text)} appears twice")
            titles[key] = row[1].strip()
    except (_LineError, csv.Error) as exc:
        raise InputError(f"{label}:{lineno}: {_one_line(exc)}") from None
    return titles


# --------------------------------------------------------------------------------------------
# Turning collected columns into store arrays


def _index_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, index of every element) for positive int64 ids."""
    top = int(ids.max())
    if top <= 8 * len(ids) + (1 << 22):
        # Dense enough for a lookup table: linear time instead of a sort.
        present = np.zeros(top + 1, dtype=bool)
        present[ids] = True
        uniq = np.flatnonzero(present).astype(np.int64)
        dtype = np.int32 if len(uniq) < 2**31 else np.int64
        lut = np.cumsum(present, dtype=dtype) - 1
        return uniq, lut[ids]
    uniq, inverse = np.unique(ids, return_inverse=True)
    dtype = np.int32 if len(uniq) < 2**31 else np.int64
    return uniq, inverse.astype(dtype)


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


def _indptr(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=n), out=out[1:])
    return out


def _write_array(group, name: str, values: np.ndarray) -> None:
    chunk = max(1, min(len(values), _ARRAY_CHUNK))
    if values.dtype == object:
        arr = group.create_array(name, shape=values.shape, dtype=str, chunks=(chunk,))
    else:
        arr = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=(chunk,))
    if len(values):
        arr[...] = values


def _is_ratings_store(path: Path) -> bool:
    try:
        root = zarr.open_group(LocalStore(path, read_only=True), mode="r")
        return root.attrs.get("layout") == LAYOUT
    except Exception:  # anything unreadable is not ours to delete
        return False


# --------------------------------------------------------------------------------------------
# The entry point


def ingest(
    input_path: str | os.PathLike,
    store_path: str | os.PathLike,
    *,
    format: str = "auto",
    sep: str | None = None,
    columns: Sequence[str] | None = None,
    movies: str | os.PathLike | None = None,
    overwrite: bool = False,
    strict: bool = False,
    chunk_rows: int = 1_000_000,
) -> IngestReport:
    """Parse a ratings file and write a ratings store (layout: :mod:`dask_coded_als.store`).

    Parameters
    ----------
    input_path : str or os.PathLike
        The ratings file, plain or gzip-compressed.
    store_path : str or os.PathLike
        The store directory to create. Missing parent directories are created.
    format : str, default "auto"
        ``"auto"``, ``"ml-100k"``, ``"ml-1m"``, ``"ml-latest"``, ``"csv"`` or an alias in
        :data:`FORMAT_ALIASES`; see the module docstring.
    sep : str, optional
        Field separator of a generic file (implies ``format="csv"``; default ``","``).
    columns : sequence of str, optional
        Field names of a generic file (implies ``format="csv"``), e.g.
        ``["user", "item", "rating", "timestamp"]``; ``"_"`` skips a field.
    movies : str or os.PathLike, optional
        ``movies.csv``, ``movies.dat`` or ``u.item``; titles are stored as ``ids/titles``.
    overwrite : bool, default False
        Replace an existing store (only a ratings store; see the module docstring).
    strict : bool, default False
        Make a duplicate (user, item) pair an error instead of keeping the last one.
    chunk_rows : int, default 1_000_000
        About this many lines are parsed at a time (a memory/speed trade-off).

    Returns
    -------
    IngestReport

    Raises
    ------
    InputError
        Bad parameters, a missing or unreadable input, malformed content (the message names the
        file and line), an existing store without ``overwrite``.
    """
    t0 = time.perf_counter()
    src_path = Path(input_path)
    store = Path(store_path)
    label = os.fspath(input_path)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InputError(f"chunk_rows must be a positive integer, not {chunk_rows!r}")
    if sep is not None and (not isinstance(sep, str) or not sep or sep.strip("\r\n") != sep):
        raise InputError(f"sep must be a non-empty string without line breaks, not {sep!r}")
    cols = _check_columns(columns) if columns is not None else None
    fmt = _resolve_format(format, sep, columns, src_path)
    if src_path.is_dir():
        raise InputError(f"{label}: is a directory, not a ratings file")
    if not src_path.exists():
        raise InputError(f"{label}: no such file")
    if movies is not None and not Path(movies).is_file():
        what = "is a directory" if Path(movies).is_dir() else "no such file"
        raise InputError(f"{os.fspath(movies)}: {what}")
    if store.exists() or store.is_symlink():
        if not overwrite:
            raise InputError(f"{store}: store exists; use --overwrite")
        if not store.is_dir() or not _is_ratings_store(store):
            raise InputError(f"{store}: exists and is not a ratings store; refusing to replace it")
    if store.resolve() == src_path.resolve():
        raise InputError(f"{store}: the store path is the input file")

    created: list[Path] = []
    tmp = store.parent / f".{store.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        parsed = _parse_file(src_path, label, fmt, sep, cols, strict, chunk_rows)
        titles = None
        if movies is not None:
            table = _read_titles(Path(movies), numeric=parsed["id_type"] == "int64")
            keys = parsed["item_ids"].tolist()
            titles = np.array([table.get(k, "") for k in keys], dtype=object)
        for parent in reversed([store.parent, *store.parent.parents]):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        _write_store(tmp, parsed, titles, movies)
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
        format=parsed["format"],
        store_path=store,
        seconds=time.perf_counter() - t0,
    )


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


def _parse_file(
    path: Path,
    label: str,
    fmt: str,
    sep: str | None,
    cols: list[str] | None,
    strict: bool,
    chunk_rows: int,
) -> dict:
    src = _Source(path, label)
    try:
        result = _parse_source(src, label, fmt, sep, cols, strict, chunk_rows)
        result["sha256"] = src.hexdigest()
    finally:
        src.close()
    result["source"] = path.name
    return result


def _parse_source(
    src: _Source,
    label: str,
    fmt: str,
    sep: str | None,
    cols: list[str] | None,
    strict: bool,
    chunk_rows: int,
) -> dict:
    blocks = src.blocks(chunk_rows)
    # Find the first non-blank line: it decides an unknown format, the header and the columns.
    pending: list[tuple[bytes, bool]] = []
    line_no = 1  # line number of the first line of the next block to process
    first_text = None
    first_line_no = 0
    any_bytes = False
    for block, had_nl in blocks:
        if not any_bytes and _looks_binary(block[:4096]):
            raise InputError(f"{label}: binary data, not a text ratings file")
        any_bytes = True
        match = _NON_BLANK_RE.search(block)
        if match is None:
            line_no += block.count(b"\n")  # only blank lines: nothing to keep
            continue
        pos = match.start()
        start = block.rfind(b"\n", 0, pos) + 1
        raw = block[start : block.index(b"\n", pos)]
        first_text = raw.rstrip(b"\r").decode("utf-8", "backslashreplace")
        first_line_no = line_no + block.count(b"\n", 0, start)
        pending.append((block, had_nl))
        break
    if not any_bytes:
        raise InputError(f"{label}: file is empty")
    if first_text is None:
        raise InputError(f"{label}: no ratings (only blank lines)")
    if fmt == "auto":
        fmt = _sniff(first_text, label)
    if fmt == "csv":
        sep = "," if sep is None else sep
        first_fields = _split_line(first_text, sep, quoted=True)
        if cols is None:
            if len(first_fields) == 3:
                cols = ["user", "item", "rating"]
            elif len(first_fields) == 4:
                cols = ["user", "item", "rating", "timestamp"]
            else:
                raise InputError(
                    f"{label}:{first_line_no}: cannot infer the columns from "
                    f"{len(first_fields)} fields; pass columns"
                )
    else:
        sep = _ML_SEP[fmt]
        first_fields = _split_line(first_text, sep, quoted=False)
    header = not any(_is_number(f) for f in first_fields)

    def all_blocks() -> Iterator[tuple[bytes, bool]]:
        yield from pending
        yield from blocks

    collector = _Collector()
    coders = (_IdCoder(), _IdCoder())
    positions = {name: k for k, name in enumerate(cols)} if cols else {}
    positions.pop("_", None)
    for block, had_nl in all_blocks():
        first = line_no
        line_no += block.count(b"\n")
        if header and first <= first_line_no < line_no:
            # Drop everything up to and including the header line.
            cut = 0
            for _ in range(first_line_no - first + 1):
                cut = block.index(b"\n", cut) + 1
            block = block[cut:]
            first = first_line_no + 1
            if not block:
                continue
        if fmt == "csv":
            u, i, r, t, lines = _parse_generic(
                block, sep, positions, len(cols), first, label, coders, had_nl
            )
            collector.add(u, i, r, t, first, lines)
            continue
        if not had_nl:
            # A last line without newline: drop trailing blanks so the fast path can take it.
            block = block.rstrip(b" \t\r\n") + b"\n"
        fast = _fast_parse(block, sep)
        if fast is not None:
            collector.add(*fast, first, None)
        else:
            u, i, r, t, lines = _parse_ml_slow(block, sep, first, label, fmt, had_nl)
            collector.add(u, i, r, t, first, lines)
    if collector.n == 0:
        where = "after the header line" if header else "(only blank lines)"
        raise InputError(f"{label}: no ratings {where}")
    return _finish(collector, coders, fmt, strict, label)


def _finish(
    col: _Collector, coders: tuple[_IdCoder, _IdCoder], fmt: str, strict: bool, label: str
) -> dict:
    """Index ids, sort by (user, item), drop duplicates (last wins), build both orders."""
    has_time = bool(col.stamps)
    if fmt == "csv":
        user_ids, user_rank = coders[0].sorted_ids()
        item_ids, item_rank = coders[1].sorted_ids()
        n_users, n_items = len(user_ids), len(item_ids)
        user = user_rank.astype(_index_dtype(n_users))[col._take(col.users)]
        item = item_rank.astype(_index_dtype(n_items))[col._take(col.items)]
        id_type = "string"
    else:
        user_ids, user = _index_ids(col._take(col.users))
        item_ids, item = _index_ids(col._take(col.items))
        n_users, n_items = len(user_ids), len(item_ids)
        id_type = "int64"
    rating = col._take(col.ratings)
    stamp = col._take(col.stamps) if has_time else None
    n = len(user)

    key = user.astype(np.int64) * n_items + item
    order = np.argsort(key, kind="stable")  # equal keys stay in file order
    key = key[order]
    dup = key[1:] == key[:-1]
    n_dup = int(dup.sum())
    if n_dup and strict:
        later = order[1:][dup]
        second = int(later.min())
        where = int(np.searchsorted(key, key[np.flatnonzero(order == second)[0]], side="left"))
        first = int(order[where])
        raise InputError(
            f"{label}:{col.line_of(second)}: duplicate rating of user "
            f"{user_ids[user[second]]} for item {item_ids[item[second]]} "
            f"(first at line {col.line_of(first)}); strict mode forbids duplicates"
        )
    del key
    keep = np.ones(n, dtype=bool)
    keep[:-1] = ~dup  # the last of each run of equal keys wins
    sel = order[keep]
    del order, keep, dup
    user = user[sel]
    item = item[sel]
    rating = rating[sel]
    if stamp is not None:
        stamp = stamp[sel]
    del sel
    by_item = np.argsort(item, kind="stable")  # users stay sorted within an item
    return {
        "format": fmt,
        "id_type": id_type,
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


def _write_store(tmp: Path, parsed: dict, titles: np.ndarray | None, movies) -> None:
    attrs = {
        "layout": LAYOUT,
        "layout_version": LAYOUT_VERSION,
        "n_users": parsed["n_users"],
        "n_items": parsed["n_items"],
        "n_ratings": parsed["n_ratings"],
        "n_duplicates": parsed["n_duplicates"],
        "format": parsed["format"],
        "source": parsed["source"],
        "sha256": parsed["sha256"],
        "id_type": parsed["id_type"],
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
