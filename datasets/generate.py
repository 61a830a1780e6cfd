"""Synthetic MovieLens-style ratings with a planted low-rank structure.

Users mostly rate what they chose to watch: which items a user rates depends on the user's and
the item's latent vectors as well as on item popularity and user activity, and the rating values
correlate with the same affinity (see :func:`generate_ratings`).

Importable (``generate_ratings``, ``make_titles``, ``write_movielens``) and a command line tool::

    python datasets/generate.py --format ml-latest --users 300 --items 250 --ratings 15000 \\
        --out dask_coded_als/data/sample --seed 0

Only numpy is needed. Writing is streamed in blocks of rows formatted with numpy byte arithmetic,
so a 20M-line file is written without one Python object per line.
"""

from __future__ import annotations

import argparse
import csv
import gzip as _gzip
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["generate_ratings", "make_titles", "write_movielens", "FORMATS", "main"]

#: Output formats and the files each writes: (ratings, movies, separator).
FORMATS = {
    "ml-latest": ("ratings.csv", "movies.csv", b","),
    "ml-1m": ("ratings.dat", "movies.dat", b"::"),
    "ml-100k": ("u.data", "u.item", b"\t"),
}

_T0 = 946_684_800  # 2000-01-01T00:00:00Z
_SPAN = 20 * 365 * 86_400
_CHUNK = 1_000_000  # proposals per block of the sparse sampler


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # np.unique on int64 may take a hash-table path that is several times slower than a sort.
    values = np.sort(values)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def _choice_probability(affinity: np.ndarray, strength: float) -> np.ndarray:
    """P(a proposed pair is rated) = 1 / (1 + exp(-strength * affinity))."""
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative affinities: P = 0
        return 1.0 / (1.0 + np.exp(-strength * affinity))


class _Categorical:
    """Draws from a categorical distribution by inverse CDF with a guide table.

    Gives exactly ``np.searchsorted(cdf, u, side="right")`` for uniform u, but starts each search
    at the first index of u's bucket of width 1 / n and steps forward from there (about one step
    on average), which is several times faster than a binary search over a large CDF.
    """

    def __init__(self, p: np.ndarray) -> None:
        self.cdf = np.cumsum(p)
        self.cdf /= self.cdf[-1]
        self.guide = np.searchsorted(self.cdf, np.arange(len(p)) / len(p), side="right")

    def __call__(self, rng: np.random.Generator, size: int) -> np.ndarray:
        u = rng.random(size)
        n = len(self.guide)
        bucket = (u * n).astype(np.intp)
        bucket -= bucket / n > u  # rounding of u * n may give the next bucket (even n itself)
        idx = self.guide[bucket]
        pending = np.flatnonzero(self.cdf[idx] <= u)
        while pending.size:
            idx[pending] += 1
            pending = pending[self.cdf[idx[pending]] <= u[pending]]
        return idx


def _sample_pairs(
    rng: np.random.Generator,
    n_ratings: int,
    p_user: np.ndarray,
    p_item: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    strength: float,
) -> np.ndarray:
    """Distinct keys ``user * n_items + item``, every user and item at least once, sorted.

    A pair is drawn with probability proportional to ``p_user[u] * p_item[i] * P(u, i)``,
    ``P = _choice_probability(x_u . y_i, strength)``, without replacement.
    """
    n_users, n_items = len(p_user), len(p_item)
    cells = n_users * n_items
    # One rating per user and per item first: k -> (k mod n_users, perm(k mod n_items)) gives
    # max(n_users, n_items) distinct pairs covering both sides.
    k = np.arange(max(n_users, n_items), dtype=np.int64)
    perm = rng.permutation(n_items)
    must = _sorted_unique((k % n_users) * n_items + perm[k % n_items])
    if n_ratings >= cells // 4:
        # Dense request: weighted sampling without replacement over all cells (Gumbel top-k).
        weight = np.outer(p_user, p_item) * _choice_probability(x @ y.T, strength)
        with np.errstate(divide="ignore"):  # a weight of 0 is a log of -inf: never drawn
            score = np.log(weight.ravel()) + rng.gumbel(size=cells)
        score[must] = np.inf
        keys = np.argpartition(-score, n_ratings - 1)[:n_ratings]
        return np.sort(keys.astype(np.int64))
    # Sparse request: propose pairs by activity x popularity, keep each with its choice
    # probability (rejection sampling of the weights above), drop pairs already drawn, repeat.
    draw_user, draw_item = _Categorical(p_user), _Categorical(p_item)
    # float32 copies: the products decide a coin flip only, and gathering half the bytes is
    # what dominates at 20M ratings.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    keys = must
    yield_rate = 0.5  # distinct new pairs per proposal, updated after every pass
    stalls = 0
    while len(keys) < n_ratings:
        need = n_ratings - len(keys)
        m = min(int(need * 1.1 / yield_rate) + 64, 64_000_000)
        kept = []
        for lo in range(0, m, _CHUNK):  # bounded temporaries
            size = min(_CHUNK, m - lo)
            users, items = draw_user(rng, size), draw_item(rng, size)
            affinity = np.einsum("ij,ij->i", x32[users], y32[items])
            keep = rng.random(size) < _choice_probability(affinity, strength)
            kept.append(users[keep].astype(np.int64) * n_items + items[keep])
        new = _sorted_unique(np.concatenate(kept))
        new = new[~np.isin(new, keys, assume_unique=True)]
        yield_rate = max(len(new) / m, 1e-3)
        if len(new) == 0:
            stalls += 1
            if stalls > 20:
                raise RuntimeError("could not place the requested number of distinct ratings")
            continue
        if len(new) > need:
            new = rng.choice(new, size=need, replace=False)
        keys = np.sort(np.concatenate([keys, new]))  # disjoint: no dedup needed
    return keys


def generate_ratings(
    n_users: int,
    n_items: int,
    n_ratings: int,
    *,
    rank: int = 8,
    seed: int = 0,
    popularity_skew: float = 1.0,
    rating_step: float = 0.5,
    choice_strength: float = 5.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate ratings of a planted low-rank model in which people rate what they like.

    Each user u and item i has a latent vector (``rank`` dimensions, ``x_u ~ N(0, I / rank)``,
    ``y_i ~ N(0, I)``, so the affinity ``x_u . y_i`` is about standard normal) and a bias.

    Which pairs are rated: a pair is drawn with probability proportional to
    ``activity_u * popularity_i * P(u, i)``, without replacement, where the activity is
    log-normal (sigma 1), the popularity is Zipf-like ``1 / rank_i ** popularity_skew`` (ranks
    randomly permuted) and ``P(u, i) = 1 / (1 + exp(-choice_strength * x_u . y_i))`` is the
    chance that a user who comes across the item chooses to watch and rate it. Every user and
    every item has at least one rating (one random pair each is placed first).

    The rating of a drawn pair: ``3.5 + b_u + b_i + 0.8 x_u . y_i + noise`` (biases sd 0.4,
    noise sd 0.3) rounded to ``rating_step`` and clipped to ``[rating_step, 5]``. Since rated
    pairs lean towards high affinity, the mean rating is above 3.5, as on real data.

    Parameters
    ----------
    n_users, n_items : int
        Number of users and items (ids 1..n_users; item ids increasing with gaps, as in
        MovieLens).
    n_ratings : int
        Number of ratings, ``max(n_users, n_items) <= n_ratings <= n_users * n_items``.
    rank : int, default 8
        Dimension of the latent vectors.
    seed : int, default 0
    popularity_skew : float, default 1.0
        Zipf exponent of item popularity (0 = uniform).
    rating_step : float, default 0.5
        0.5 for ml-latest style ratings (0.5, 1.0, ..., 5.0); 1 for ml-100k / ml-1m (1..5).
    choice_strength : float, default 5.0
        How much affinity decides which items a user rates; 0 makes the choice depend on
        activity and popularity only (the held-out items then carry no personal signal).

    Returns
    -------
    users, items : numpy.ndarray
        int64 original ids, sorted by (user, item).
    ratings : numpy.ndarray
        float64.
    timestamps : numpy.ndarray
        int64 Unix times.

    Examples
    --------
    >>> users, items, ratings, timestamps = generate_ratings(30, 20, 200, seed=1)
    >>> len(users), int(users.min()), int(users.max()), len(set(zip(users, items)))
    (200, 1, 30, 200)
    """
    if n_users < 1 or n_items < 1 or rank < 1:
        raise ValueError("n_users, n_items and rank must be positive")
    if not max(n_users, n_items) <= n_ratings <= n_users * n_items:
        raise ValueError(
            f"n_ratings must be between max(n_users, n_items) = {max(n_users, n_items)} and "
            f"n_users * n_items = {n_users * n_items}"
        )
    if rating_step not in (0.5, 1, 1.0):
        raise ValueError("rating_step must be 0.5 or 1")
    if not (np.isfinite(choice_strength) and choice_strength >= 0):
        raise ValueError(f"choice_strength must be a finite number >= 0, not {choice_strength}")
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    p_user = activity / activity.sum()
    popularity = 1.0 / rng.permutation(np.arange(1, n_items + 1)) ** popularity_skew
    p_item = popularity / popularity.sum()
    x = rng.normal(size=(n_users, rank)) / np.sqrt(rank)
    y = rng.normal(size=(n_items, rank))
    keys = _sample_pairs(rng, n_ratings, p_user, p_item, x, y, choice_strength)
    u_pos = keys // n_items
    i_pos = keys % n_items
    del keys

    b_user = rng.normal(scale=0.4, size=n_users)
    b_item = rng.normal(scale=0.4, size=n_items)
    ratings = np.empty(n_ratings, dtype=np.float64)
    step = 2_000_000  # bounded temporaries for 20M ratings
    for lo in range(0, n_ratings, step):
        u, i = u_pos[lo : lo + step], i_pos[lo : lo + step]
        signal = np.einsum("ij,ij->i", x[u], y[i])
        noise = rng.normal(scale=0.3, size=len(u))
        ratings[lo : lo + step] = 3.5 + b_user[u] + b_item[i] + 0.8 * signal + noise
    ratings = np.clip(np.round(ratings / rating_step) * rating_step, rating_step, 5.0)

    start = rng.integers(_T0, _T0 + _SPAN, size=n_users)
    timestamps = start[u_pos] + rng.integers(0, 2 * 365 * 86_400, size=n_ratings)
    item_ids = np.sort(rng.choice(np.arange(1, 3 * n_items + 1), size=n_items, replace=False))
    return (u_pos + 1).astype(np.int64), item_ids[i_pos].astype(np.int64), ratings, timestamps


_WORDS_A = ["Silent", "Red", "Last", "Hidden", "Broken", "Golden", "Lost", "Wild", "Dark", "Café"]
_WORDS_B = ["River", "Summer", "Garden", "Empire", "Station", "Mirror", "Road", "Island", "Öffnung"]
_GENRES = ["Action", "Comedy", "Drama", "Romance", "Thriller", "Sci-Fi", "Animation", "Horror"]


def make_titles(item_ids: Sequence[int], seed: int = 0) -> list[str]:
    """Fake titles like ``"Lost Garden, The (1994)"``, some with non-ASCII letters.

    All characters are Latin-1 encodable (movies.dat and u.item are Latin-1) and no title
    contains ``|`` or ``::``; some contain commas and quotes to exercise CSV quoting.
    """
    rng = np.random.default_rng(seed + 1)
    titles = []
    for k, item in enumerate(item_ids):
        a = _WORDS_A[rng.integers(len(_WORDS_A))]
        b = _WORDS_B[rng.integers(len(_WORDS_B))]
        year = 1930 + int(rng.integers(90))
        title = f"{a} {b} {item}"
        if k % 7 == 3:
            title += ", The"
        if k % 11 == 5:
            title = f'"{title}"'
        titles.append(f"{title} ({year})")
    return titles


def _to_bytes(values: np.ndarray) -> np.ndarray:
    """Decimal text of integers as a fixed-width, NUL-padded bytes array."""
    width = max(1, len(str(int(values.max()))), len(str(int(values.min()))))
    return values.astype(f"S{width}")


def _format_block(columns: list[np.ndarray], sep: bytes) -> bytes:
    """Rows ``c0 sep c1 sep ... \\n`` from NUL-padded bytes columns, without per-row objects."""
    n = len(columns[0])
    parts = []
    sep_arr = np.broadcast_to(np.frombuffer(sep, dtype=np.uint8), (n, len(sep)))
    for k, col in enumerate(columns):
        parts.append(col.view(np.uint8).reshape(n, col.dtype.itemsize))
        parts.append(sep_arr if k < len(columns) - 1 else np.full((n, 1), 10, dtype=np.uint8))
    table = np.hstack(parts)
    return table[table != 0].tobytes()  # dropping the NUL padding joins the fields


def _format_ratings(ratings: np.ndarray, integer: bool) -> np.ndarray:
    if integer:
        return _to_bytes(np.rint(ratings).astype(np.int64))
    # numpy prints the shortest repr, e.g. b"3.5", b"4.0" (as MovieLens does).
    return np.asarray(ratings, dtype=np.float64).astype("S24")


def _open_out(path: Path, gzip: bool):
    return _gzip.open(path, "wb", compresslevel=6) if gzip else open(path, "wb")  # noqa: SIM115


def write_movielens(
    path: str | Path,
    format: str = "ml-latest",
    *,
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    timestamps: np.ndarray,
    titles: dict[int, str] | None = None,
    gzip: bool = False,
    chunk_rows: int = 1_000_000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ratings and a movies file in one of the MovieLens layouts.

    Rows are written in the given order. ``ml-latest``: ``ratings.csv`` (with header) and
    ``movies.csv`` (UTF-8, csv quoting); ``ml-1m``: ``ratings.dat`` and ``movies.dat``
    (Latin-1); ``ml-100k``: ``u.data`` and ``u.item`` (Latin-1). With ``gzip`` both files get a
    ``.gz`` suffix.

    Parameters
    ----------
    path : str or pathlib.Path
        Output directory (created if missing).
    format : {"ml-latest", "ml-1m", "ml-100k"}
    users, items, ratings, timestamps : numpy.ndarray
        Columns of equal length (ids positive integers).
    titles : dict, optional
        Item id -> title; default :func:`make_titles` for every distinct item.
    gzip : bool, default False
    chunk_rows : int, default 1_000_000
        Rows formatted per block.
    seed : int, default 0
        Seed of the default titles.

    Returns
    -------
    dict
        ``{"ratings": path, "movies": path}``.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, not {format!r}")
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    ratings, timestamps = np.asarray(ratings, np.float64), np.asarray(timestamps, np.int64)
    if not len(users) == len(items) == len(ratings) == len(timestamps):
        raise ValueError("users, items, ratings and timestamps must have equal lengths")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    ratings_name, movies_name, sep = FORMATS[format]
    suffix = ".gz" if gzip else ""
    ratings_path = out / (ratings_name + suffix)
    movies_path = out / (movies_name + suffix)
    integer = format != "ml-latest"
    with _open_out(ratings_path, gzip) as f:
        if format == "ml-latest":
            f.write(b"userId,movieId,rating,timestamp\n")
        for lo in range(0, len(users), chunk_rows):
            hi = lo + chunk_rows
            cols = [
                _to_bytes(users[lo:hi]),
                _to_bytes(items[lo:hi]),
                _format_ratings(ratings[lo:hi], integer),
                _to_bytes(timestamps[lo:hi]),
            ]
            f.write(_format_block(cols, sep))
    ids = _sorted_unique(items).tolist()
    if titles is None:
        titles = dict(zip(ids, make_titles(ids, seed), strict=True))
    rng = np.random.default_rng(seed + 2)
    with _open_out(movies_path, gzip) as f:
        if format == "ml-latest":
            text = io.StringIO(newline="")
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(["movieId", "title", "genres"])
            for item in ids:
                genres = "|".join(rng.choice(_GENRES, size=2, replace=False))
                writer.writerow([item, titles.get(item, ""), genres])
            f.write(text.getvalue().encode("utf-8"))
        elif format == "ml-1m":
            lines = []
            for item in ids:
                genres = "|".join(rng.choice(_GENRES, size=2, replace=False))
                lines.append(f"{item}::{titles.get(item, '')}::{genres}\n")
            f.write("".join(lines).encode("latin-1"))
        else:
            lines = []
            for item in ids:
                flags = "|".join(str(v) for v in rng.integers(0, 2, size=19))
                date = f"01-Jan-{1930 + item % 90}"
                url = f"http://example.org/title/{item}"
                lines.append(f"{item}|{titles.get(item, '')}|{date}||{url}|{flags}\n")
            f.write("".join(lines).encode("latin-1"))
    return {"ratings": ratings_path, "movies": movies_path}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="Write synthetic MovieLens-style ratings.")
    parser.add_argument("--format", choices=sorted(FORMATS), default="ml-latest")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--ratings", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--gzip", action="store_true", help="gzip both files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of popularity")
    parser.add_argument(
        "--choice-strength",
        type=float,
        default=5.0,
        help="how much user-item affinity decides which items are rated (0: not at all)",
    )
    args = parser.parse_args(argv)
    step = 0.5 if args.format == "ml-latest" else 1.0
    try:
        users, items, ratings, stamps = generate_ratings(
            args.users,
            args.items,
            args.ratings,
            rank=args.rank,
            seed=args.seed,
            popularity_skew=args.skew,
            rating_step=step,
            choice_strength=args.choice_strength,
        )
    except ValueError as exc:
        parser.error(str(exc))
    # Mimic the row order of the real files: ml-latest by (user, item), ml-1m by user then
    # time, ml-100k shuffled.
    if args.format == "ml-1m":
        order = np.lexsort((stamps, users))
    elif args.format == "ml-100k":
        order = np.random.default_rng(args.seed + 3).permutation(len(users))
    else:
        order = slice(None)
    paths = write_movielens(
        args.out,
        args.format,
        users=users[order],
        items=items[order],
        ratings=ratings[order],
        timestamps=stamps[order],
        gzip=args.gzip,
        seed=args.seed,
    )
    for kind, p in paths.items():
        print(f"{kind}: {p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
