"""Tests of dask_coded_als.data.ingest: formats, sources, ids as labels, duplicates, bad input,
atomicity. pandas, reading the same files, is the oracle for what the files hold."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import shutil
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import zarr
from damage import chunk_file, flip_bit, truncate
from support import SAMPLE, load_generator

import dask_coded_als
from dask_coded_als.cli import EXIT_CODES, build_parser, main
from dask_coded_als.data import checksums
from dask_coded_als.data import ingest as ingest_mod
from dask_coded_als.data.ingest import (
    FORMAT_NAMES,
    IngestReport,
    ingest,
    ingest_dataframe,
    ratings_from_dataframe,
)
from dask_coded_als.data.store import open_store, ratings_matrix, write_factors
from dask_coded_als.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "data" / "bad"
LABELS = Path(__file__).parent / "data" / "labels"

HEADER = "userId,movieId,rating,timestamp\n"


gen = load_generator()


def expected(users, items, values):
    """The matrix the store must hold: rows/columns in sorted-id order."""
    uid, iid = np.unique(users), np.unique(items)
    mat = sp.csr_matrix(
        (
            np.asarray(values, dtype=np.float64),
            (np.searchsorted(uid, users), np.searchsorted(iid, items)),
        ),
        shape=(len(uid), len(iid)),
    )
    return mat, uid, iid


def stored_timestamps(store) -> sp.csr_matrix:
    user = store.array("ratings/user")[...]
    item = store.array("ratings/item")[...]
    stamp = store.array("ratings/timestamp")[...].astype(np.float64)
    return sp.csr_matrix((stamp, (user, item)), shape=(store.n_users, store.n_items))


def same(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    return a.shape == b.shape and (a != b).nnz == 0


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under path with its bytes (for byte-identical comparisons)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --------------------------------------------------------------------------------------------
# Round trips through every format


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("fmt", ["ml-latest", "ml-1m", "ml-100k"])
def test_round_trip(tmp_path, fmt, compress):
    step = 0.5 if fmt == "ml-latest" else 1.0
    users, items, ratings, stamps = gen.generate_ratings(37, 23, 400, seed=3, rating_step=step)
    order = np.random.default_rng(0).permutation(len(users))  # file order must not matter
    paths = gen.write_movielens(
        tmp_path / "src",
        fmt,
        users=users[order],
        items=items[order],
        ratings=ratings[order],
        timestamps=stamps[order],
        gzip=compress,
    )
    report = ingest(paths["ratings"], tmp_path / "s.zarr", movies=paths["movies"])
    assert isinstance(report, IngestReport)
    assert report.format == fmt
    assert (report.n_users, report.n_items, report.n_ratings) == (37, 23, 400)
    assert report.n_duplicates == 0
    assert report.store_path == tmp_path / "s.zarr"
    store = open_store(tmp_path / "s.zarr")
    mat, uid, iid = expected(users, items, ratings)
    assert same(ratings_matrix(store), mat)
    np.testing.assert_array_equal(store.user_ids, uid)
    np.testing.assert_array_equal(store.item_ids, iid)
    assert store.user_ids.dtype == np.int64
    titles = dict(zip(iid.tolist(), gen.make_titles(iid.tolist()), strict=True))
    assert store.titles.tolist() == [titles[i] for i in iid.tolist()]
    assert same(stored_timestamps(store), expected(users, items, stamps)[0])
    attrs = store.attrs
    assert attrs["sha256"] == hashlib.sha256(paths["ratings"].read_bytes()).hexdigest()
    assert attrs["source"] == paths["ratings"].name
    assert attrs["format"] == fmt and attrs["id_type"] == "int64"
    assert attrs["movies_source"] == paths["movies"].name


def test_bundled_sample(tmp_path):
    report = ingest(SAMPLE / "ratings.csv", tmp_path / "s.zarr", movies=SAMPLE / "movies.csv")
    assert report.format == "ml-latest"
    assert (report.n_users, report.n_items, report.n_duplicates) == (300, 250, 0)
    assert 10_000 <= report.n_ratings <= 20_000
    store = open_store(tmp_path / "s.zarr")
    assert all(store.titles)  # every rated movie has a title
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 500_000


def test_sample_matches_its_generator_command():
    """The sample is what the command recorded in datasets/README.md writes."""
    readme = (ROOT / "datasets" / "README.md").read_text()
    assert "--users 300 --items 250 --ratings 15000" in readme
    users, items, ratings, stamps = gen.generate_ratings(300, 250, 15000, seed=0)
    lines = (SAMPLE / "ratings.csv").read_text().splitlines()
    assert lines[0] == HEADER.strip()
    assert len(lines) == 15001
    assert lines[1] == f"{users[0]},{items[0]},{ratings[0]},{stamps[0]}"


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_blocks_give_the_same_result(tmp_path, chunk_rows):
    # About 100 kB: with small chunk_rows pyarrow reads it in several blocks, each with its
    # own id dictionary, which must be merged into one numbering.
    users, items, ratings, stamps = gen.generate_ratings(300, 200, 4000, seed=5)
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in zip(users, items, ratings, stamps, strict=True)]
    lines[10] += "\r"  # CRLF, blank and blank-looking lines are no ratings
    lines.insert(20, "")
    lines.insert(40, "   ")
    path = write(tmp_path / "ratings.csv", HEADER + "\n".join(lines) + "\n\n")
    ingest(path, tmp_path / "s.zarr", chunk_rows=chunk_rows)
    store = open_store(tmp_path / "s.zarr")
    mat, uid, iid = expected(users, items, ratings)
    assert same(ratings_matrix(store), mat)
    np.testing.assert_array_equal(store.user_ids, uid)
    assert same(stored_timestamps(store), expected(users, items, stamps)[0])


def oracle_labels(raw: pd.Series) -> list:
    """The labels the module docstring promises, from pandas' reading of the column as text."""
    text = [str(v).strip() for v in raw]
    if all(re.fullmatch(r"0|-?[1-9][0-9]*", v) and abs(int(v)) < 2**63 for v in text):
        return sorted({int(v) for v in text})
    return sorted(set(text))


def read_with_pandas(path: Path, sep: str, header: bool, compression=None) -> pd.DataFrame:
    return pd.read_csv(
        path,
        sep=sep,
        header=0 if header else None,
        dtype=str,
        engine="python" if len(sep) > 1 else "c",
        compression=compression,
    )


def check_against_pandas(store_path: Path, frame: pd.DataFrame) -> None:
    """The store holds what pandas read (as text): labels, and the matrix in label order."""
    store = open_store(store_path)
    rows_cols = []
    for k, stored in enumerate((store.user_ids, store.item_ids)):
        labels = oracle_labels(frame.iloc[:, k])
        assert stored.tolist() == labels
        index = {label: pos for pos, label in enumerate(labels)}
        keys = [str(v).strip() for v in frame.iloc[:, k]]
        rows_cols.append([index[int(v) if isinstance(labels[0], int) else v] for v in keys])
    values = frame.iloc[:, 2].astype(np.float64).astype(np.float32)
    shape = (len(store.user_ids), len(store.item_ids))
    assert same(ratings_matrix(store), sp.csr_matrix((values, tuple(rows_cols)), shape=shape))


@pytest.mark.parametrize("sep", [",", "\t", "::", ";", "|"])
@pytest.mark.parametrize("compression", [None, "gzip", "bz2", "xz"])
def test_separators_and_compression_match_pandas(tmp_path, sep, compression):
    rng = np.random.default_rng(1)
    n = 300
    user = rng.integers(-(2**62), 2**62, size=40)[rng.integers(0, 40, size=n)]
    item = rng.integers(0, 10**18, size=25)[rng.integers(0, 25, size=n)]
    rating = np.round(rng.normal(size=n) * 10.0 ** rng.integers(-3, 6, size=n), 4)
    stamp = rng.integers(-(10**12), 10**12, size=n)
    text = "".join(
        f"{u}{sep}{i}{sep}{r!r}{sep}{t}\n"
        for u, i, r, t in zip(*(c.tolist() for c in (user, item, rating, stamp)), strict=True)
    ).encode()
    pack = {None: bytes, "gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}
    path = write(tmp_path / "ratings.txt", pack[compression](text))
    report = ingest(path, tmp_path / "s.zarr", format="csv")
    raw = read_with_pandas(path, sep, header=False, compression=compression)
    last = raw.drop_duplicates([0, 1], keep="last")
    assert report.n_duplicates == n - len(last)
    check_against_pandas(tmp_path / "s.zarr", last)
    store = open_store(tmp_path / "s.zarr")
    assert store.attrs["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "line",
    [
        "1, 2 ,3,4",  # blanks around fields
        "-1,2,3,4",
        "0,2,3,4",
        "1,2,3e0,4",
        "1,2.0,3,4",  # a label "2.0": the item column holds strings
        "99999999999999999999,2,3,4",  # beyond int64: strings
        "1,2,3,4\r5,6,7,8",  # a lone CR ends a line
        "\t  ",  # blank
        "1,2,3.5.1,4",
        "1,2,3",
        "1,2,3,4,5",
        "1,2,,4",
        ",2,3,4",
        "1,2,3,+4",
        "1,2,nan,4",
        "1,2,1e39,4",
        "1,2,3,4.5",
        '1,"2"x,3,4',
        '1,"2,3,4',
        "1,2,3,\x00",
        "1,\xe9,3,4",
    ],
)
def test_every_line_is_read_or_named(tmp_path, line):
    """What pyarrow rejects, or the checks after it, the line-by-line pass names by line."""
    # 600 good lines first, so that the binary-file check of the first 4 kB passes.
    good = "".join(f"{k},1,1,1\n" for k in range(600))
    text = (HEADER + good + line + "\n7,7,7,7\n").encode()
    path = write(tmp_path / "ratings.csv", text.replace(b"\xc3\xa9", b"\xe9"))  # not UTF-8
    try:
        ingest(path, tmp_path / "s.zarr")
    except InputError as exc:
        assert str(exc).startswith(f"{path}:602: "), exc
        return
    frame = pd.read_csv(path, dtype=str, skip_blank_lines=True)
    check_against_pandas(tmp_path / "s.zarr", frame.dropna(how="all"))


def test_lenient_forms(tmp_path):
    text = (
        "\ufeff"  # byte-order mark
        "\n"
        "userId,movieId,rating,timestamp\r\n"
        " 7 , 3 , 4e0 , 12\r\n"
        "2,3,.5,-5\n"
        "9223372036854775807,1,5.,0\n"
        "\n\n"
        "2,1,3.25,7"  # no final newline
    )
    path = write(tmp_path / "ratings.csv", text)
    report = ingest(path, tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    assert report.n_ratings == 4
    np.testing.assert_array_equal(store.user_ids, [2, 7, 2**63 - 1])
    np.testing.assert_array_equal(store.item_ids, [1, 3])
    dense = ratings_matrix(store).toarray()
    np.testing.assert_array_equal(dense, [[3.25, 0.5], [0, 4.0], [5.0, 0]])


def test_headerless_and_header_variants(tmp_path):
    body = "1,10,4.0,5\n2,20,3.5,6\n"
    for k, head in enumerate(["", HEADER, "user,item,score,time\n", "\n\nu,i,r,t\n"]):
        path = write(tmp_path / f"ratings{k}.csv", head + body)
        report = ingest(path, tmp_path / f"s{k}.zarr")
        assert report.n_ratings == 2, head
    dat = write(tmp_path / "ratings.dat", "UserID::MovieID::Rating::Timestamp\n1::2::3::4\n")
    assert ingest(dat, tmp_path / "d.zarr").n_ratings == 1


def test_large_sparse_ids_use_the_sorting_path(tmp_path):
    path = write(tmp_path / "u.data", "1000000000000\t5\t3\t1\n7\t999999999999\t4\t2\n")
    ingest(path, tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.user_ids, [7, 10**12])
    np.testing.assert_array_equal(store.item_ids, [5, 999999999999])
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[0, 4], [3, 0]])


def test_zero_rating_is_an_explicit_entry(tmp_path):
    path = write(tmp_path / "ratings.csv", HEADER + "1,1,0,1\n1,2,4,1\n")
    ingest(path, tmp_path / "s.zarr")
    mat = ratings_matrix(tmp_path / "s.zarr")
    assert mat.nnz == 2 and mat[0, 0] == 0


# --------------------------------------------------------------------------------------------
# Generic delimited files


def test_generic_string_ids_and_titles(tmp_path):
    text = (
        "user,item,rating\n"
        '"smith, anna",Matrix,4.5\n'
        "bob,Alien,3\n"
        "Émile,Matrix,2\n"
        '"smith, anna",Alien,1\n'
    )
    path = write(tmp_path / "ratings.txt", text)
    movies = write(tmp_path / "items.csv", 'item,title\nMatrix,"The Matrix, 1999"\n')
    report = ingest(path, tmp_path / "s.zarr", format="csv", movies=movies)
    assert report.format == "csv"
    store = open_store(tmp_path / "s.zarr")
    assert store.user_ids.tolist() == ["bob", "smith, anna", "Émile"]  # code-point order
    assert store.item_ids.tolist() == ["Alien", "Matrix"]
    assert store.titles.tolist() == ["", "The Matrix, 1999"]
    assert store.attrs["id_type"] == "string" and not store.has_timestamps
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[3, 0], [1, 4.5], [0, 2]])


def test_generic_integer_ids_sort_numerically(tmp_path):
    path = write(tmp_path / "r.tsv", "10\tb\t1\t100\n9\ta\t2\t200\n100\ta\t3\t300\n")
    ingest(path, tmp_path / "s.zarr", sep="\t")
    store = open_store(tmp_path / "s.zarr")
    # Integer labels are stored as integers, each column by its own labels.
    assert store.user_ids.tolist() == [9, 10, 100]
    assert store.item_ids.tolist() == ["a", "b"]
    assert store.attrs["user_id_type"] == "int64" and store.attrs["id_type"] == "mixed"
    assert store.has_timestamps
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[2, 0], [0, 1], [3, 0]])


def test_generic_columns_and_multichar_separator(tmp_path):
    path = write(tmp_path / "r.txt", "x::m1::alice::5\ny::m2::bob::2.5\ny::m1::bob::1\n")
    ingest(path, tmp_path / "s.zarr", sep="::", columns=["_", "item", "user", "rating"])
    store = open_store(tmp_path / "s.zarr")
    assert store.user_ids.tolist() == ["alice", "bob"]
    assert store.item_ids.tolist() == ["m1", "m2"]
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[5, 0], [1, 2.5]])


# --------------------------------------------------------------------------------------------
# Ids are labels; columns from headers, names or positions


@pytest.mark.parametrize("path", sorted(LABELS.iterdir()), ids=lambda p: p.name)
def test_ids_once_refused_are_labels(tmp_path, path):
    """0, negative, string, beyond-int64, '1e3' and '186.5' ids: labels, as pandas reads them."""
    ingest(path, tmp_path / "s.zarr")
    sep = {".dat": "::", ".data": "\t", ".csv": ","}[path.suffix]
    check_against_pandas(tmp_path / "s.zarr", read_with_pandas(path, sep, path.suffix == ".csv"))


def test_label_types_per_column(tmp_path):
    text = "user,isbn,rating\n7,0195153448,5\n 0 ,0195153448,3\n-3,034545104X,4\n7,034545104X,1\n"
    path = write(tmp_path / "books.csv", text)
    report = ingest(path, tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    assert report.format == "csv"
    assert store.user_ids.tolist() == [-3, 0, 7] and store.user_ids.dtype == np.int64
    assert store.item_ids.tolist() == ["0195153448", "034545104X"]  # leading zero kept
    assert (store.attrs["user_id_type"], store.attrs["item_id_type"]) == ("int64", "string")
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[0, 4], [3, 0], [5, 1]])
    # Only plainly written integers make an integer column: a leading zero keeps strings.
    write(path, "user,item,rating\n007,1,5\n8,1,4\n")
    ingest(path, tmp_path / "t.zarr")
    assert open_store(tmp_path / "t.zarr").user_ids.tolist() == ["007", "8"]


def test_store_checks_each_side_by_its_id_type(tmp_path):
    path = write(tmp_path / "r.csv", "user,isbn,rating\n1,0195153448,5\n")
    ingest(path, tmp_path / "s.zarr")
    root = zarr.open_group(tmp_path / "s.zarr", mode="r+")
    # A store written before the per-side types has one id_type for both sides.
    for key in ("user_id_type", "item_id_type"):
        del root.attrs[key]
    root.attrs["id_type"] = "string"
    with pytest.raises(InputError, match="'ids/users' has the wrong dtype"):
        open_store(tmp_path / "s.zarr")
    root.attrs.update({"user_id_type": "int64", "item_id_type": "int64"})
    with pytest.raises(InputError, match="'ids/items' has the wrong dtype"):
        open_store(tmp_path / "s.zarr")
    root.attrs["item_id_type"] = "string"
    assert open_store(tmp_path / "s.zarr").item_ids.tolist() == ["0195153448"]
    ingest(write(tmp_path / "t.csv", "1,2,3\n"), tmp_path / "t.zarr")
    root = zarr.open_group(tmp_path / "t.zarr", mode="r+")
    for key in ("user_id_type", "item_id_type"):
        del root.attrs[key]
    assert open_store(tmp_path / "t.zarr").user_ids.tolist() == [1]  # id_type "int64" alone


@pytest.mark.parametrize(
    ("header", "roles"),
    [
        ("userId,movieId,rating,timestamp", ["user", "item", "rating", "timestamp"]),
        ("user_id,item_id,rating", ["user", "item", "rating"]),
        ("movieId,userId,rating,timestamp", ["item", "user", "rating", "timestamp"]),
        ("rating,item,user", ["rating", "item", "user"]),
        (
            "reviewerID,asin,reviewerName,overall,unixReviewTime",
            ["user", "item", "_", "rating", "timestamp"],
        ),
        ('"User-ID";"ISBN";"Book-Rating"', ["user", "item", "rating"]),
        ("u,i,r,t", ["user", "item", "rating", "timestamp"]),  # unknown names: by position
    ],
)
def test_columns_from_the_header(tmp_path, header, roles):
    users, items, ratings, stamps = gen.generate_ratings(9, 7, 30, seed=1)
    values = {"user": users, "item": items, "rating": ratings, "timestamp": stamps, "_": users}
    sep = ";" if ";" in header else ","
    body = "".join(
        sep.join(f'"{values[r][k]}"' if sep == ";" else str(values[r][k]) for r in roles) + "\n"
        for k in range(len(users))
    )
    ingest(write(tmp_path / "r.csv", header + "\n" + body), tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    assert same(ratings_matrix(store), expected(users, items, ratings)[0])
    assert store.has_timestamps == ("timestamp" in roles)


def test_columns_by_name_and_by_position(tmp_path):
    path = write(tmp_path / "r.csv", "a,b,c,d\n1,x,5,100\n2,y,4,200\n")
    ingest(path, tmp_path / "s.zarr", columns={"user": "a", "item": "b", "rating": "c"})
    store = open_store(tmp_path / "s.zarr")
    assert store.user_ids.tolist() == [1, 2] and not store.has_timestamps
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[5, 0], [0, 4]])
    ingest(path, tmp_path / "t.zarr", columns=["user", "item", "_", "rating"])
    np.testing.assert_array_equal(
        ratings_matrix(tmp_path / "t.zarr").toarray(), [[100, 0], [0, 200]]
    )
    bad = [
        ({"rating": "c"}, "cannot tell which column holds the user ids among a, b, c, d"),
        ({"user": "a", "item": "b", "rating": "zz"}, "no column 'zz' (columns: a, b, c, d)"),
        ({"user": "a", "item": "b", "score": "c"}, "unknown role 'score'"),
        (["user", "item", "rating"], "columns names 3 fields, the data has 4"),
    ]
    for columns, message in bad:
        with pytest.raises(InputError, match=re.escape(message)):
            ingest(path, tmp_path / "u.zarr", columns=columns)
    path = write(tmp_path / "r.csv", "user,item,rating,score\n1,2,3,4\n")
    with pytest.raises(InputError, match="both 'rating' and 'score' look like the ratings"):
        ingest(path, tmp_path / "u.zarr")
    assert not (tmp_path / "u.zarr").exists()


@pytest.mark.parametrize(("name", "sep"), [("u.data", "\t"), ("ratings.dat", "::"), ("r.csv", ",")])
def test_timestamp_is_optional(tmp_path, name, sep):
    path = write(tmp_path / name, f"1{sep}20{sep}3\n0{sep}20{sep}4.5\n0{sep}-5{sep}1\n")
    for fmt in ("auto", {"u.data": "ml-100k", "ratings.dat": "ml-1m", "r.csv": "ml-latest"}[name]):
        ingest(path, tmp_path / f"{fmt}.zarr", format=fmt)
        store = open_store(tmp_path / f"{fmt}.zarr")
        assert not store.has_timestamps
        assert store.user_ids.tolist() == [0, 1] and store.item_ids.tolist() == [-5, 20]
        np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[1, 4.5], [0, 3]])


# --------------------------------------------------------------------------------------------
# Parquet, part files and DataFrames


def ratings_frame(n_users=30, n_items=20, n=200, seed=0) -> pd.DataFrame:
    users, items, ratings, stamps = gen.generate_ratings(n_users, n_items, n, seed=seed)
    order = np.random.default_rng(seed).permutation(n)
    return pd.DataFrame(
        {"userId": users, "movieId": items, "rating": ratings, "timestamp": stamps}
    ).iloc[order]


def store_arrays(path: Path) -> dict:
    store = open_store(path)
    out = {name: store.array(name)[...] for name in ("ratings/rating", "by_item/user")}
    out.update(users=store.user_ids.tolist(), items=store.item_ids.tolist())
    if store.has_timestamps:
        out["stamps"] = store.array("ratings/timestamp")[...]
    return out


def assert_same_store(a: Path, b: Path) -> None:
    left, right = store_arrays(a), store_arrays(b)
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


@pytest.fixture
def csv_reference(tmp_path) -> tuple[pd.DataFrame, Path]:
    """A shuffled frame, and the store ingested from it written as ratings.csv."""
    frame = ratings_frame()
    frame.to_csv(tmp_path / "ratings.csv", index=False)
    ingest(tmp_path / "ratings.csv", tmp_path / "csv.zarr")
    return frame, tmp_path / "csv.zarr"


def test_parquet_file_and_parts(tmp_path, csv_reference):
    frame, reference = csv_reference
    frame.to_parquet(tmp_path / "ratings.parquet", index=False)
    report = ingest(tmp_path / "ratings.parquet", tmp_path / "pq.zarr")
    assert report.format == "parquet" and report.n_ratings == len(frame)
    assert_same_store(tmp_path / "pq.zarr", reference)
    store = open_store(tmp_path / "pq.zarr")
    digest = hashlib.sha256((tmp_path / "ratings.parquet").read_bytes()).hexdigest()
    assert store.attrs["sha256"] == digest
    # A dask-written directory of parts, and a glob of them, is the same data set.
    dd.from_pandas(frame, npartitions=3, sort=False).to_parquet(tmp_path / "parts")
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    ingest(tmp_path / "parts", tmp_path / "dir.zarr", chunk_rows=17)
    assert_same_store(tmp_path / "dir.zarr", reference)
    ingest(str(tmp_path / "parts" / "part.*.parquet"), tmp_path / "glob.zarr")
    assert_same_store(tmp_path / "glob.zarr", reference)
    for kwargs in ({"format": "ml-1m"}, {"format": "csv"}, {"sep": ","}):
        with pytest.raises(InputError, match="Parquet, not text: format and sep do not apply"):
            ingest(tmp_path / "ratings.parquet", tmp_path / "x.zarr", **kwargs)


def test_parquet_string_ids_datetimes_and_named_columns(tmp_path):
    table = pa.table(
        {
            "asin": pa.array(["B0", "B1", "B0"]).dictionary_encode(),
            "reviewer": ["A3SG", "A1D8", "A1D8"],
            "stars": pa.array([5, 4, 2], pa.int8()),
            "when": pa.array([1, 2, 3_000_000_000_123], pa.timestamp("ms")),
        }
    )
    pq.write_table(table, tmp_path / "r.parquet")
    columns = {"user": "reviewer", "item": "asin", "rating": "stars", "timestamp": "when"}
    ingest(tmp_path / "r.parquet", tmp_path / "s.zarr", columns=columns)
    store = open_store(tmp_path / "s.zarr")
    assert store.user_ids.tolist() == ["A1D8", "A3SG"] and store.item_ids.tolist() == ["B0", "B1"]
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[2, 4], [5, 0]])
    np.testing.assert_array_equal(store.array("ratings/timestamp")[...], [3_000_000_000, 0, 0])


def test_parts_in_natural_order_and_empty_parts(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    write(parts / "part.10.csv", "user,item,rating\n1,1,5\n")  # last: its rating wins
    write(parts / "part.2.csv", "user,item,rating\n1,1,1\n2,1,3\n")
    write(parts / "part.3.csv", "")  # an empty partition
    write(parts / ".part.2.csv.crc", "xx")
    report = ingest(parts, tmp_path / "s.zarr")
    assert report.n_duplicates == 1
    np.testing.assert_array_equal(ratings_matrix(tmp_path / "s.zarr").toarray(), [[5], [3]])
    with pytest.raises(
        InputError, match=r"part\.10\.csv:2: duplicate .*\(first at .*part\.2\.csv:2\)"
    ):
        ingest(parts, tmp_path / "t.zarr", strict=True)
    with pytest.raises(InputError, match="no file matches|with no data files"):
        ingest(str(tmp_path / "nothing-*.csv"), tmp_path / "t.zarr")


def test_csv_parts_with_headers(tmp_path, csv_reference):
    frame, reference = csv_reference
    dd.from_pandas(frame, npartitions=4, sort=False).to_csv(tmp_path / "out-*.csv", index=False)
    ingest(str(tmp_path / "out-*.csv"), tmp_path / "s.zarr")
    assert_same_store(tmp_path / "s.zarr", reference)


def test_parquet_errors_name_file_and_row(tmp_path):
    pq.write_table(
        pa.table({"u": [1, 2, 1], "i": [5, 5, 5], "r": [1.0, 2.0, 3.0]}), tmp_path / "a.pq"
    )
    with pytest.raises(
        InputError,
        match=r"a\.pq: row 3: duplicate rating of user 1 for item 5 "
        r"\(first at row 1\)",
    ):
        ingest(tmp_path / "a.pq", tmp_path / "s.zarr", strict=True)
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"u": [1], "i": [5], "r": [1.0]}), parts / "part.0.parquet")
    pq.write_table(pa.table({"u": ["x"], "i": [5], "r": [1.0]}), parts / "part.1.parquet")
    with pytest.raises(InputError, match="user ids mix types: integers in some rows, strings"):
        ingest(parts, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("kind", ["pandas", "dask"])
def test_dataframe_matches_the_csv(tmp_path, csv_reference, kind):
    frame, reference = csv_reference
    df = frame if kind == "pandas" else dd.from_pandas(frame, npartitions=3, sort=False)
    report = ingest_dataframe(df, tmp_path / "df.zarr", chunk_rows=50)
    assert report.format == "dataframe" and report.n_ratings == len(frame)
    assert_same_store(tmp_path / "df.zarr", reference)
    assert open_store(tmp_path / "df.zarr").attrs["source"] == "DataFrame"


def test_dataframe_named_columns_categories_and_datetimes(tmp_path):
    df = pd.DataFrame(
        {
            "who": pd.Categorical(["b", "a", "b"]),
            "what": ["0012", "0012", "7"],
            "score": [1, 2, 3],
            "timestamp": pd.to_datetime([1, 2, 3], unit="s"),
        }
    )
    ingest_dataframe(df, tmp_path / "s.zarr", user="who", item="what", rating="score")
    store = open_store(tmp_path / "s.zarr")
    assert store.user_ids.tolist() == ["a", "b"] and store.item_ids.tolist() == ["0012", "7"]
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[2, 0], [1, 3]])
    np.testing.assert_array_equal(store.array("ratings/timestamp")[...], [2, 1, 3])
    ingest_dataframe(
        df, tmp_path / "t.zarr", user="who", item="what", rating="score", timestamp=False
    )
    assert not open_store(tmp_path / "t.zarr").has_timestamps


DATAFRAME_BAD = [
    (
        pd.DataFrame({"user": [1, 2, 3], "item": [1, 1, 2], "rating": [4.0, np.nan, 1.0]}),
        {},
        "DataFrame.iloc[1]: missing or NaN rating",
    ),
    (
        pd.DataFrame({"user": [1, "b"], "item": [1, 1], "rating": [4.0, 2.0]}),
        {},
        "DataFrame column 'user': the user ids mix types",
    ),
    (
        pd.DataFrame({"user": [1.0, 2.0], "item": [1, 1], "rating": [4.0, 2.0]}),
        {},
        "DataFrame: user ids have type double; use integers or strings",
    ),
    (
        pd.DataFrame({"user": [1, 2], "item": ["a", None], "rating": [4.0, 2.0]}),
        {},
        "DataFrame.iloc[1]: missing item id",
    ),
    (
        pd.DataFrame({"user": [1, 2], "item": [1, 1], "comment": [4.0, 5.0]}),
        {},
        "DataFrame: cannot tell which column holds the ratings among user, item, comment",
    ),
    (
        pd.DataFrame({"u": [1, 2], "i": [1, 1], "r": [1.0, 2.0]}),
        {"rating": "stars"},
        "DataFrame: no column 'stars' (columns: u, i, r)",
    ),
    (
        pd.DataFrame({"user": [1, 1], "item": [2, 2], "rating": [1.0, 2.0]}),
        {"strict": True},
        "DataFrame.iloc[1]: duplicate rating of user 1 for item 2 (first at iloc[0])",
    ),
    ([(1, 2, 3.0)], {}, "expected a pandas or dask DataFrame, not list"),
]


@pytest.mark.parametrize(
    ("df", "kwargs", "message"), DATAFRAME_BAD, ids=[m for _, _, m in DATAFRAME_BAD]
)
def test_bad_dataframes(tmp_path, df, kwargs, message, good_store):
    target = tmp_path / "store.zarr"
    shutil.copytree(good_store, target)
    before = snapshot(target)
    with pytest.raises(InputError) as info:
        ingest_dataframe(df, target, overwrite=True, **kwargs)
    check_error(info.value, "", message)
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]


def test_mixed_types_across_dask_partitions(tmp_path):
    frames = [
        pd.DataFrame({"user": users, "item": [1, 1], "rating": [1.0, 2.0]})
        for users in ([1, 2], ["c", "d"])
    ]
    df = dd.from_delayed([dask.delayed(f) for f in frames], meta=frames[0], verify_meta=False)
    with pytest.raises(InputError, match="user ids mix types"):
        ingest_dataframe(df, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_top_level_export():
    assert dask_coded_als.ingest_dataframe is ingest_dataframe
    assert "ingest_dataframe" in dask_coded_als.__all__


# --------------------------------------------------------------------------------------------
# The command line: format names, columns, string ids


def test_cli_offers_every_format_name(tmp_path):
    ingest_parser = build_parser()._subparsers._group_actions[0].choices["ingest"]
    choices = next(a.choices for a in ingest_parser._actions if a.dest == "format")
    assert tuple(choices) == FORMAT_NAMES
    wanted = {"auto", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest", "csv"}
    assert wanted <= set(FORMAT_NAMES)
    seps = {"ml-100k": "\t", "ml-1m": "::", "ml-10m": "::"}
    for name in FORMAT_NAMES:
        sep = seps.get(name, ",")
        path = write(tmp_path / "ratings.txt", f"1{sep}2{sep}3.5{sep}4\n")
        assert main(["ingest", str(path), str(tmp_path / f"{name}.zarr"), "--format", name]) == 0
        assert ratings_matrix(tmp_path / f"{name}.zarr")[0, 0] == 3.5


def test_cli_columns_by_name_and_string_ids(tmp_path, capsys):
    path = write(
        tmp_path / "reviews.csv",
        "reviewer,product,stars,helpful\n"
        "A3SGXH7AUHU8GW,0195153448,5,1\nA1D87F6ZCVE5NK,0195153448,4,0\n"
        "A1D87F6ZCVE5NK,B00004T2SJ,2,3\nA2,B00004T2SJ,5,0\n",
    )
    store = tmp_path / "s.zarr"
    argv = ["ingest", str(path), str(store), "--columns", "user=reviewer,item=product,rating=stars"]
    assert main(argv) == 0
    st = open_store(store)
    assert st.item_ids.tolist() == ["0195153448", "B00004T2SJ"] and not st.has_timestamps
    rng = np.random.default_rng(0)
    write_factors(store, rng.normal(size=(3, 2)), rng.normal(size=(2, 2)))
    capsys.readouterr()
    assert main(["recommend", str(store), "--user", "A3SGXH7AUHU8GW", "--json"]) == 0
    assert '"B00004T2SJ"' in capsys.readouterr().out
    assert main(["similar", str(store), "--item", "0195153448", "--json"]) == 0
    assert '"B00004T2SJ"' in capsys.readouterr().out
    assert main(["similar", str(store), "--item", "195153448"]) == EXIT_CODES["input"]
    assert "unknown item id 195153448" in capsys.readouterr().err


def test_cli_negative_and_zero_ids(tmp_path, capsys):
    path = write(tmp_path / "u.data", "-1\t0\t5\t1\n0\t7\t3\t2\n-1\t-7\t1\t3\n")
    store = tmp_path / "s.zarr"
    assert main(["ingest", str(path), str(store)]) == 0
    assert open_store(store).user_ids.tolist() == [-1, 0]
    write_factors(store, np.ones((2, 2)), np.arange(6.0).reshape(3, 2))
    capsys.readouterr()
    assert main(["recommend", str(store), "--user", "-1", "--json"]) == 0
    assert '"item_id": 7' in capsys.readouterr().out
    assert main(["similar", str(store), "--item", "-7", "--json"]) == 0


# --------------------------------------------------------------------------------------------
# Duplicates


def test_duplicates_last_wins(tmp_path):
    text = HEADER + "1,5,1.0,1\n2,5,2.0,2\n1,5,3.0,3\n1,6,4.0,4\n1,5,4.5,5\n"
    path = write(tmp_path / "ratings.csv", text)
    report = ingest(path, tmp_path / "s.zarr", chunk_rows=2)
    assert report.n_duplicates == 2 and report.n_ratings == 3
    store = open_store(tmp_path / "s.zarr")
    assert store.attrs["n_duplicates"] == 2
    np.testing.assert_array_equal(ratings_matrix(store).toarray(), [[4.5, 4.0], [2.0, 0]])
    np.testing.assert_array_equal(store.array("ratings/timestamp")[...], [5, 4, 2])
    with pytest.raises(InputError, match=r"ratings\.csv:4: duplicate .* \(first at line 2\)"):
        ingest(path, tmp_path / "t.zarr", strict=True)
    assert not (tmp_path / "t.zarr").exists()


def test_duplicates_in_generic_mode(tmp_path):
    path = write(tmp_path / "r.txt", "a,x,1\nb,x,2\na,x,3\n")
    report = ingest(path, tmp_path / "s.zarr", format="csv")
    assert report.n_duplicates == 1
    np.testing.assert_array_equal(ratings_matrix(tmp_path / "s.zarr").toarray(), [[3], [2]])
    with pytest.raises(InputError, match=r"r\.txt:3: duplicate rating of user a for item x"):
        ingest(path, tmp_path / "t.zarr", format="csv", strict=True)


# --------------------------------------------------------------------------------------------
# Format detection and parameters


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("u.data", "1\t2\t3\t4\n", "ml-100k"),
        ("u1.base", "1\t2\t3\t4\n", "ml-100k"),
        ("ua.test", "1\t2\t3\t4\n", "ml-100k"),
        ("ratings.dat", "1::2::3::4\n", "ml-1m"),
        ("ratings.csv", "1,2,3,4\n", "ml-latest"),
        ("ratings.txt", "1::2::3::4\n", "ml-1m"),
        ("ratings", "1\t2\t3\t4\n", "ml-100k"),
        ("export.log", "1,2,3.5,4\n", "ml-latest"),
    ],
)
def test_auto_format(tmp_path, name, text, fmt):
    path = write(tmp_path / name, text)
    assert ingest(path, tmp_path / "s.zarr").format == fmt
    # gzip is recognised by content, with or without a .gz suffix
    gz = write(tmp_path / f"z-{name}", gzip.compress(text.encode()))
    assert ingest(gz, tmp_path / "g.zarr").format == fmt


def test_format_aliases_and_explicit_formats(tmp_path):
    path = write(tmp_path / "data.txt", "1::2::3::4\n")
    assert ingest(path, tmp_path / "a.zarr", format="ml-10m").format == "ml-1m"
    csv_path = write(tmp_path / "x.txt", HEADER + "1,2,3,4\n")
    assert ingest(csv_path, tmp_path / "b.zarr", format="ml-25m").format == "ml-latest"
    assert ingest(csv_path, tmp_path / "c.zarr", format="csv").format == "csv"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"format": "parquet"}, "unknown format 'parquet'"),
        ({"format": "ml-1m", "sep": ","}, "apply to format='csv'"),
        ({"chunk_rows": 0}, "chunk_rows must be an integer >= 1"),
        ({"sep": ""}, "sep must be a non-empty string"),
        ({"sep": "\n"}, "sep must be a non-empty string"),
        ({"columns": ["user", "item"]}, "must name 'rating' exactly once"),
        ({"columns": ["user", "item", "rating", "score"]}, "unknown column name 'score'"),
        ({"columns": "user,item,rating"}, "columns must be a list"),
        ({"columns": ["user", "item", "rating", "timestamp", "timestamp"]}, "'timestamp' twice"),
    ],
)
def test_parameter_errors(tmp_path, kwargs, match):
    path = write(tmp_path / "ratings.csv", HEADER + "1,2,3,4\n")
    with pytest.raises(InputError, match=match):
        ingest(path, tmp_path / "s.zarr", **kwargs)
    assert not (tmp_path / "s.zarr").exists()


def test_generic_columns_cannot_be_inferred(tmp_path):
    path = write(tmp_path / "r.txt", "a,b,1,2,3\n")
    with pytest.raises(InputError, match=r"r\.txt:1: cannot infer the columns from 5 fields"):
        ingest(path, tmp_path / "s.zarr", format="csv")


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-100k"])
def test_latin1_movie_files(tmp_path, fmt):
    users, items, ratings, stamps = gen.generate_ratings(20, 15, 100, seed=2, rating_step=1)
    paths = gen.write_movielens(
        tmp_path, fmt, users=users, items=items, ratings=ratings, timestamps=stamps
    )
    ingest(paths["ratings"], tmp_path / "s.zarr", movies=paths["movies"])
    titles = open_store(tmp_path / "s.zarr").titles.tolist()
    assert titles == gen.make_titles(np.unique(items).tolist())
    assert any("é" in t or "Ö" in t for t in titles)


def test_movies_file_with_unknown_and_extra_ids(tmp_path):
    path = write(tmp_path / "ratings.csv", HEADER + "1,2,3,4\n1,3,3,4\n")
    movies = write(tmp_path / "movies.csv", "movieId,title,genres\n3,Three,Drama\n99,Other,X\n")
    ingest(path, tmp_path / "s.zarr", movies=movies)
    assert open_store(tmp_path / "s.zarr").titles.tolist() == ["", "Three"]


# --------------------------------------------------------------------------------------------
# The bad-input corpus

#: file in tests/data/bad -> (extra ingest arguments, expected message fragment)
BAD_CASES = {
    "archive.zip": ({}, "a zip archive"),
    "binary-garbage.csv": ({}, "binary data"),
    "blank-lines-only.csv": ({}, "no ratings (only blank lines)"),
    "corrupt.csv.gz": ({}, "corrupt or truncated gzip stream"),
    "crlf-missing-field.data": ({}, ":2: expected 4 fields separated by '\\t', found 3"),
    "duplicate-strict.csv": ({"strict": True}, ":4: duplicate rating of user 1 for item 31"),
    "empty.csv": ({}, "file is empty"),
    "extra-column.csv": ({}, ":2: expected 4 fields separated by ',', found 5"),
    "generic-bad-quote.txt": ({"format": "csv"}, ":2: malformed CSV"),
    "generic-empty-id.txt": ({"format": "csv"}, ":2: empty user id"),
    "generic-missing-field.tsv": ({"sep": "\t"}, ":2: expected 4 fields"),
    "generic-not-utf8.txt": ({"format": "csv"}, ":2: not UTF-8 text"),
    "generic-open-quote.txt": ({"format": "csv"}, ":2: malformed CSV (unexpected end of data)"),
    "generic-rating-nan.txt": ({"format": "csv"}, ":2: rating 'nan' is not a finite number"),
    "header-only.csv": ({}, "no ratings after the header line"),
    "header-twice.csv": ({}, ":5: the header line appears again"),
    "missing-column.csv": ({}, ":3: expected 4 fields separated by ',', found 3"),
    "mixed-delimiter.dat": ({}, ":2: expected 4 fields separated by '::', found 1"),
    "movies-bad-id.csv": ({"movies": True}, ":3: movie id 'x32' is not an integer"),
    "movies-duplicate-id.dat": ({"movies": True}, ":2: movie id '31' appears twice"),
    "nul-byte.dat": ({}, "binary data"),
    "parquet-corrupt.parquet": ({}, "cannot read Parquet"),
    "parquet-float-ids.parquet": ({}, "user ids have type double; use integers or strings"),
    "parquet-missing-column.parquet": ({}, "cannot tell which column holds the ratings"),
    "parquet-rating-nan.parquet": ({}, ": row 2: missing or NaN rating"),
    "rating-empty.csv": ({}, ":2: empty rating"),
    "rating-inf.dat": ({}, ":2: rating 'inf' is not a finite number"),
    "rating-nan.csv": ({}, ":2: rating 'NaN' is not a finite number"),
    "rating-not-number.csv": ({}, ":3: rating 'abc' is not a number"),
    "rating-overflow.csv": ({}, ":2: rating '1e999' is not a finite number"),
    "rating-too-large.csv": ({}, ":2: rating '1e39' is too large for float32"),
    "timestamp-not-integer.csv": ({}, ":2: timestamp '1260759144.5' is not an integer"),
    "truncated-last-line.csv": ({}, ":5: expected 4 fields separated by ',', found 2; the last"),
    "truncated.csv.gz": ({}, "corrupt or truncated gzip stream"),
    "corrupt.csv.bz2": ({}, "corrupt or truncated bzip2 stream"),
    "unknown-format.txt": ({}, "cannot tell the format"),
    "wrong-delimiter.csv": (
        {"format": "ml-latest"},
        ":1: 1 field(s) separated by ',', not the 3 or more of user, item, rating",
    ),
    # Not files of the corpus: made by bad_input() below.
    "<missing>": ({}, "no such file"),
    "<directory>": ({}, "is a directory"),
    "<mixed-parts>": ({}, "mixes Parquet and text files"),
}


def test_corpus_is_complete():
    files = {p.name for p in BAD.iterdir()}
    assert files == {name for name in BAD_CASES if not name.startswith("<")}
    assert len(files) >= 20
    assert all(p.stat().st_size < 4096 for p in BAD.iterdir())


def bad_input(tmp_path: Path, case: str) -> tuple[Path, dict, str]:
    """(input path, ingest kwargs, the file the message must name)."""
    kwargs, _ = BAD_CASES[case]
    kwargs = dict(kwargs)
    if case == "<missing>":
        path = tmp_path / "nothing-here.csv"
        return path, kwargs, path.name
    if case == "<directory>":
        path = tmp_path / "ratings.csv"
        path.mkdir()
        return path, kwargs, path.name
    if case == "<mixed-parts>":
        path = tmp_path / "parts"
        path.mkdir()
        shutil.copy(SAMPLE / "ratings.csv", path / "part.0.csv")
        shutil.copy(BAD / "parquet-rating-nan.parquet", path / "part.1.parquet")
        return path, kwargs, path.name
    if kwargs.pop("movies", False):
        kwargs["movies"] = BAD / case
        return SAMPLE / "ratings.csv", kwargs, case
    return BAD / case, kwargs, case


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    src = write(root / "ratings.csv", HEADER + "1,2,3.5,4\n2,2,1,5\n")
    ingest(src, root / "store.zarr")
    return root / "store.zarr"


def check_error(exc: InputError, names: str, fragment: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and "\r" not in msg, msg
    assert names in msg, msg
    assert fragment in msg, msg


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_leaves_nothing(tmp_path, case):
    path, kwargs, names = bad_input(tmp_path, case)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as info:
        ingest(path, out / "store.zarr", **kwargs)
    check_error(info.value, names, BAD_CASES[case][1])
    assert list(out.iterdir()) == []  # no store, no temporary directory


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_keeps_existing_store(tmp_path, case, good_store):
    path, kwargs, names = bad_input(tmp_path, case)
    target = tmp_path / "out" / "store.zarr"
    shutil.copytree(good_store, target)
    before = snapshot(target)
    with pytest.raises(InputError) as info:
        ingest(path, target, overwrite=True, **kwargs)
    check_error(info.value, names, BAD_CASES[case][1])
    assert snapshot(target) == before
    assert [p.name for p in target.parent.iterdir()] == ["store.zarr"]


# --------------------------------------------------------------------------------------------
# Atomicity and overwrite


def small_file(tmp_path: Path, rating: str = "4.0") -> Path:
    return write(tmp_path / "ratings.csv", HEADER + f"1,2,{rating},4\n3,4,2.0,5\n")


def test_existing_store_needs_overwrite(tmp_path):
    src = small_file(tmp_path)
    ingest(src, tmp_path / "s.zarr")
    before = snapshot(tmp_path / "s.zarr")
    with pytest.raises(InputError, match="store exists; pass overwrite=True"):
        ingest(src, tmp_path / "s.zarr")
    assert snapshot(tmp_path / "s.zarr") == before


def test_overwrite_replaces_the_store(tmp_path):
    ingest(small_file(tmp_path, "4.0"), tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "extra").mkdir()  # a leftover that the new store must not keep
    ingest(small_file(tmp_path, "1.5"), tmp_path / "s.zarr", overwrite=True)
    assert ratings_matrix(tmp_path / "s.zarr")[0, 0] == 1.5
    assert not (tmp_path / "s.zarr" / "extra").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv", "s.zarr"]


@pytest.mark.parametrize("kind", ["directory", "file", "other-zarr"])
def test_overwrite_refuses_what_is_not_a_ratings_store(tmp_path, kind):
    target = tmp_path / "target"
    if kind == "file":
        write(target, "keep me")
    else:
        target.mkdir()
        write(target / ("zarr.json" if kind == "other-zarr" else "notes.txt"), "{}")
    src = small_file(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(InputError, match="not a ratings store; refusing"):
        ingest(src, target, overwrite=True)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("existing", [False, True])
def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, existing):
    src = small_file(tmp_path)
    target = tmp_path / "out" / "s.zarr"
    target.parent.mkdir()
    if existing:
        ingest(src, target)
    before = snapshot(tmp_path)
    real = ingest_mod._write_array
    calls = []

    def failing(group, name, values):
        calls.append(name)
        if len(calls) == 4:
            raise OSError("disk full")
        real(group, name, values)

    monkeypatch.setattr(ingest_mod, "_write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        ingest(src, target, overwrite=True)
    assert snapshot(tmp_path) == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == (["s.zarr"] if existing else [])


def test_overwrite_through_a_symlink_keeps_the_linked_store(tmp_path):
    src = small_file(tmp_path)
    ingest(src, tmp_path / "real.zarr")
    before = snapshot(tmp_path / "real.zarr")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    ingest(src, tmp_path / "link.zarr", overwrite=True)
    assert not (tmp_path / "link.zarr").is_symlink()
    assert open_store(tmp_path / "link.zarr").n_ratings == 2
    assert snapshot(tmp_path / "real.zarr") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zarr", "ratings.csv", "real.zarr"]


def test_many_leading_blank_lines(tmp_path):
    path = write(tmp_path / "ratings.csv", "\n" * 5000 + HEADER + "1,2,3,4\n\n1,3,x,4\n")
    with pytest.raises(InputError, match=r"ratings\.csv:5004: rating 'x' is not a number"):
        ingest(path, tmp_path / "s.zarr", chunk_rows=100)


def test_missing_parents_are_created_and_removed_on_failure(tmp_path):
    ingest(small_file(tmp_path), tmp_path / "a" / "b" / "s.zarr")
    assert open_store(tmp_path / "a" / "b" / "s.zarr").n_ratings == 2
    with pytest.raises(InputError):
        ingest(BAD / "empty.csv", tmp_path / "c" / "d" / "s.zarr")
    assert not (tmp_path / "c").exists()


def test_failed_swap_restores_the_old_store(tmp_path, monkeypatch):
    src = small_file(tmp_path)
    ingest(src, tmp_path / "s.zarr")
    before = snapshot(tmp_path / "s.zarr")
    real_rename = os.rename

    def rename(a, b):
        if ".tmp-" in os.fspath(a):
            raise OSError("rename failed")
        real_rename(a, b)

    monkeypatch.setattr(ingest_mod.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        ingest(src, tmp_path / "s.zarr", overwrite=True)
    monkeypatch.undo()
    assert snapshot(tmp_path / "s.zarr") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv", "s.zarr"]


# --------------------------------------------------------------------------------------------
# The generator


def test_generator_properties():
    users, items, ratings, stamps = gen.generate_ratings(200, 100, 2000, seed=4)
    assert len(users) == len(items) == len(ratings) == len(stamps) == 2000
    keys = users * 10**9 + items
    assert len(np.unique(keys)) == 2000  # no duplicate pairs
    assert np.all(np.diff(keys) > 0)  # sorted by (user, item)
    assert set(users.tolist()) == set(range(1, 201))
    assert len(np.unique(items)) == 100 and items.min() >= 1
    assert set(np.unique(ratings * 2).tolist()) <= set(range(1, 11))
    again = gen.generate_ratings(200, 100, 2000, seed=4)
    for a, b in zip((users, items, ratings, stamps), again, strict=True):
        np.testing.assert_array_equal(a, b)
    counts = np.bincount(np.searchsorted(np.unique(items), items))
    assert counts.max() > 4 * np.median(counts)  # popular items exist
    ints = gen.generate_ratings(30, 30, 900, seed=1, rating_step=1)[2]  # dense: every cell
    assert set(np.unique(ints).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_generator_low_rank_signal():
    """Ratings correlate with a rank-8 fit far better than with item means alone."""
    users, items, ratings, _ = gen.generate_ratings(200, 60, 12000, seed=0, rating_step=0.5)
    mat = expected(users, items, ratings)[0].toarray()
    s = np.linalg.svd(mat - mat.mean(), compute_uv=False)
    assert s[:9].sum() > 0.3 * s.sum()


def test_generator_rejects_impossible_requests():
    with pytest.raises(ValueError, match="n_ratings must be between"):
        gen.generate_ratings(10, 10, 101)
    with pytest.raises(ValueError, match="n_ratings must be between"):
        gen.generate_ratings(10, 20, 19)
    with pytest.raises(ValueError, match="rating_step"):
        gen.generate_ratings(10, 10, 50, rating_step=0.25)


@pytest.mark.parametrize("fmt", ["ml-latest", "ml-1m", "ml-100k"])
def test_generator_cli(tmp_path, fmt, capsys):
    out = tmp_path / "out"
    code = gen.main(
        ["--format", fmt, "--users", "12", "--items", "9", "--ratings", "50", "--out", str(out)]
        + ["--gzip", "--seed", "7"]
    )
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert all(name.endswith(".gz") for name in files) and len(files) == 2
    ratings_file = next(p for p in out.iterdir() if p.name.startswith(("ratings", "u.data")))
    report = ingest(ratings_file, tmp_path / "s.zarr")
    assert (report.format, report.n_ratings) == (fmt, 50)
    assert "ratings:" in capsys.readouterr().out


def test_generator_streams_in_blocks(tmp_path):
    users, items, ratings, stamps = gen.generate_ratings(30, 20, 300, seed=9)
    a = gen.write_movielens(
        tmp_path / "a", users=users, items=items, ratings=ratings, timestamps=stamps
    )
    b = gen.write_movielens(
        tmp_path / "b",
        users=users,
        items=items,
        ratings=ratings,
        timestamps=stamps,
        chunk_rows=7,
    )
    assert a["ratings"].read_bytes() == b["ratings"].read_bytes()
    lines = a["ratings"].read_text().splitlines()
    assert lines[1] == f"{users[0]},{items[0]},{ratings[0]},{stamps[0]}"


# --------------------------------------------------------------------------------------------
# Checksums


def test_every_array_and_chunk_is_written_with_a_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "_ARRAY_CHUNK", 4)
    # user 1's ratings have timestamp 0: a chunk of the timestamps holds only the fill value
    src = write(
        tmp_path / "r.csv", HEADER + "".join(f"1,{i},3,0\n" for i in range(1, 6)) + "2,7,4,9\n"
    )
    movies = write(tmp_path / "movies.csv", "movieId,title\n1,One\n7,Seven\n")
    ingest(src, tmp_path / "s.zarr", movies=movies)
    root = zarr.open_group(tmp_path / "s.zarr", mode="r")
    arrays = {n: a for n, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}
    assert {"ids/titles", "ratings/timestamp", "by_item/rating"} <= set(arrays)
    for name, arr in arrays.items():
        assert checksums.has_checksums(arr), name
        for c in range(arr.cdata_shape[0]):
            assert chunk_file(tmp_path / "s.zarr", name, (c,)).is_file(), (name, c)
    assert open_store(tmp_path / "s.zarr").array("ratings/timestamp")[:4].tolist() == [0] * 4


@pytest.mark.parametrize(
    ("argv", "name", "harm", "hint"),
    [
        (["fit", "{store}", "--factors", "2"], "ratings/rating", truncate, "ingest the source"),
        (["recommend", "{store}", "--user", "1"], "ids/items", flip_bit, "ingest the source"),
        (["recommend", "{store}", "--user", "1"], "factors/V", truncate, "fit again"),
    ],
)
def test_cli_names_a_damaged_chunk_instead_of_an_internal_error(
    tmp_path, capsys, argv, name, harm, hint
):
    store = tmp_path / "s.zarr"
    ingest(SAMPLE / "ratings.csv", store)
    st = open_store(store)
    write_factors(st, np.ones((st.n_users, 2)), np.ones((st.n_items, 2)))
    harm(chunk_file(store, name, (0, 0) if name.startswith("factors") else (0,)))
    code = main([word.format(store=store) for word in argv])
    err = capsys.readouterr().err
    assert code == EXIT_CODES["input"], err
    assert err.count("\n") == 1 and "internal error" not in err, err
    assert f"array {name!r} chunk" in err and "is damaged" in err and hint in err, err
    assert "--overwrite" in err or name.startswith("factors"), err


@pytest.mark.parametrize("kind", ["pandas", "dask"])
def test_ratings_from_dataframe_is_the_stored_matrix(csv_reference, kind):
    frame, reference = csv_reference
    df = frame if kind == "pandas" else dd.from_pandas(frame, npartitions=3, sort=False)
    R, user_ids, item_ids = ratings_from_dataframe(df)
    store = open_store(reference)
    assert (R != ratings_matrix(store)).nnz == 0 and R.dtype == np.float64
    assert user_ids.tolist() == store.user_ids.tolist()
    assert item_ids.tolist() == store.item_ids.tolist()
    bad = pd.DataFrame({"user": [1, 2], "item": [1, 1], "rating": [4.0, np.nan]})
    with pytest.raises(InputError, match=r"DataFrame.iloc\[1\]: missing or NaN rating"):
        ratings_from_dataframe(bad)
