"""Tests of dask_coded_als.ingest: formats, round trips, duplicates, bad input, atomicity."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import load_generator

from dask_coded_als import ingest as ingest_mod
from dask_coded_als.errors import InputError
from dask_coded_als.ingest import IngestReport, ingest
from dask_coded_als.store import open_store, ratings_matrix

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "data" / "bad"
SAMPLE = ROOT / "datasets" / "sample"
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


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 7, 1000])
def test_blocks_give_the_same_result(tmp_path, chunk_rows):
    users, items, ratings, stamps = gen.generate_ratings(11, 9, 60, seed=5)
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in zip(users, items, ratings, stamps, strict=True)]
    # Blank lines and CRLF force some blocks through the line-by-line parser.
    lines[10] += "\r"
    lines.insert(20, "")
    lines.insert(40, "   ")
    path = write(tmp_path / "ratings.csv", HEADER + "\n".join(lines) + "\n\n")
    ingest(path, tmp_path / "s.zarr", chunk_rows=chunk_rows)
    assert same(ratings_matrix(tmp_path / "s.zarr"), expected(users, items, ratings)[0])


def test_fast_and_line_parsers_agree():
    rng = np.random.default_rng(1)
    n = 500
    user = rng.integers(1, 10 ** rng.integers(1, 19, size=n), dtype=np.int64)
    item = rng.integers(1, 2**63 - 1, size=n, dtype=np.int64)
    stamp = rng.integers(0, 10**12, size=n)
    rating = rng.integers(0, 10**6, size=n) / 10.0 ** rng.integers(0, 4, size=n)
    for sep in [",", "\t", "::"]:
        text = "".join(
            f"{u}{sep}{i}{sep}{r!r}{sep}{t}\n"
            for u, i, r, t in zip(*(c.tolist() for c in (user, item, rating, stamp)), strict=True)
        ).encode()
        fast = ingest_mod._fast_parse(text, sep)
        slow = ingest_mod._parse_ml_slow(text, sep, 1, "x", "ml", True)
        assert fast is not None
        for a, b in zip(fast, slow[:4], strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fast[0], user)
        np.testing.assert_array_equal(fast[1], item)
        np.testing.assert_array_equal(fast[2], rating.astype(np.float32))
        np.testing.assert_array_equal(fast[3], stamp)


@pytest.mark.parametrize(
    "block",
    [
        b"1,2,3,4\n\n",  # blank line
        b"1, 2,3,4\n",  # blank inside a field
        b"-1,2,3,4\n",  # sign
        b"0,2,3,4\n",  # zero id
        b"1,2,3e0,4\n",  # exponent
        b"1,2,3.5.1,4\n",  # two dots
        b"1,2.0,3,4\n",  # dot in an id
        b"1,2,3\n",  # a field missing
        b"1,2,3,4,5\n",  # a field too many
        b"1,2,,4\n",  # empty field
        b"99999999999999999999,2,3,4\n",  # 20 digits
        b"9223372036854775808,2,3,4\n",  # int64 max + 1
        b"1,2,3,4\r5,6,7,8\n",  # a lone CR
    ],
)
def test_fast_parser_hands_odd_blocks_to_the_line_parser(block):
    assert ingest_mod._fast_parse(block, ",") is None


def test_lenient_forms(tmp_path):
    text = (
        "\ufeff"  # byte-order mark
        "\n"
        "userId,movieId,rating,timestamp\r\n"
        " 007 , 3 , 4e0 , +12\r\n"
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
    assert store.user_ids.tolist() == ["9", "10", "100"]
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
        ({"chunk_rows": 0}, "chunk_rows must be a positive integer"),
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
    "generic-rating-nan.txt": ({"format": "csv"}, ":2: rating 'nan' is not a finite number"),
    "header-only.csv": ({}, "no ratings after the header line"),
    "header-twice.csv": ({}, ":5: user id 'userId' is not a positive integer"),
    "item-not-integer.dat": ({}, ":1: item id 'abc' is not a positive integer"),
    "item-too-large.csv": ({}, ":2: item id '9223372036854775808' is out of range"),
    "item-zero.dat": ({}, ":2: item id '0' is not a positive integer"),
    "missing-column.csv": ({}, ":3: expected 4 fields separated by ',', found 3"),
    "mixed-delimiter.dat": ({}, ":2: expected 4 fields separated by '::', found 1"),
    "movies-bad-id.csv": ({"movies": True}, ":3: movie id 'x32' is not a positive integer"),
    "movies-duplicate-id.dat": ({"movies": True}, ":2: movie id '31' appears twice"),
    "nul-byte.dat": ({}, "binary data"),
    "rating-empty.csv": ({}, ":2: empty rating"),
    "rating-inf.dat": ({}, ":2: rating 'inf' is not a finite number"),
    "rating-nan.csv": ({}, ":2: rating 'NaN' is not a finite number"),
    "rating-not-number.csv": ({}, ":3: rating 'abc' is not a number"),
    "rating-overflow.csv": ({}, ":2: rating '1e999' is not a finite number"),
    "string-user-id.csv": ({}, ":2: user id 'alice' is not a positive integer"),
    "timestamp-not-integer.csv": ({}, ":2: timestamp '1260759144.5' is not an integer"),
    "truncated-last-line.csv": ({}, ":5: expected 4 fields separated by ',', found 2; the last"),
    "truncated.csv.gz": ({}, "corrupt or truncated gzip stream"),
    "unknown-format.txt": ({}, "cannot tell the format"),
    "user-exponent.data": ({}, ":1: user id '1e3' is not a positive integer"),
    "user-fractional.data": ({}, ":2: user id '186.5' is not a positive integer"),
    "user-negative.csv": ({}, ":2: user id '-1' is not a positive integer"),
    "wrong-delimiter.csv": ({}, ":2: expected 4 fields separated by ',', found 1"),
    # Not files of the corpus: made by bad_input() below.
    "<missing>": ({}, "no such file"),
    "<directory>": ({}, "is a directory"),
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
    with pytest.raises(InputError, match="store exists; use --overwrite"):
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
