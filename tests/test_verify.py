"""``dask-coded-als verify`` and the check of D before a fit: every chunk read, checksums,
shapes and the layout's invariants, one line per problem, exit code 0 only when clean."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from damage import chunk_file, flip_bit, strip_checksums, truncate
from support import load_generator

from dask_coded_als.cli import EXIT_CODES, main
from dask_coded_als.data import store as store_mod
from dask_coded_als.data.ingest import ingest
from dask_coded_als.data.store import (
    compute_gram,
    gram_array,
    open_store,
    ratings_matrix,
    write_checkpoint,
    write_factors,
)
from dask_coded_als.data.verify import check_gram, verify_store
from dask_coded_als.errors import InputError

gen = load_generator()


def make_store(root: Path, n_users: int, n_items: int, seed: int) -> Path:
    """A store with ratings, D, factors and a checkpoint, every array with checksums."""
    users, items, ratings, stamps = gen.generate_ratings(n_users, n_items, 12 * n_users, seed=seed)
    paths = gen.write_movielens(
        root / "src", users=users, items=items, ratings=ratings, timestamps=stamps
    )
    path = root / "s.zarr"
    ingest(paths["ratings"], path)
    st = open_store(path)
    compute_gram(st)
    rng = np.random.default_rng(seed)
    write_factors(st, rng.normal(size=(st.n_users, 3)), rng.normal(size=(st.n_items, 3)))
    write_checkpoint(st, np.ones((min(st.n_users, st.n_items), 3)), {"iteration": 2})
    return path


@pytest.fixture(scope="module")
def tall_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("tall"), 60, 40, seed=3)


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("wide"), 30, 70, seed=4)


@pytest.fixture
def store(tmp_path, tall_store) -> Path:
    path = tmp_path / "s.zarr"
    shutil.copytree(tall_store, path)
    return path


def verify(path: Path, capsys) -> tuple[int, list[str], str]:
    """Exit code, the problem lines (without the summary) and stderr of ``verify``."""
    code = main(["verify", str(path)])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[-1].startswith(f"{path}: ") and "chunks read" in lines[-1]
    return code, lines[:-1], captured.err


def rewrite(path: Path, name: str, change) -> None:
    """Replace the values of array ``name`` by ``change(values)``, checksums and all: the
    damage is in the values themselves, as a bug or a bad memory would leave it."""
    arr = zarr.open_array(path, path=name, mode="r+")
    arr[...] = change(arr[...])


def set_entry(i: int, j: int, value: float, symmetric: bool = False):
    def change(D: np.ndarray) -> np.ndarray:
        D[i, j] = value
        if symmetric:
            D[j, i] = value
        return D

    return change


# --------------------------------------------------------------------------------------------
# Clean stores


@pytest.mark.parametrize("which", ["tall_store", "wide_store"])
def test_a_clean_store_verifies(which, request, capsys):
    path = request.getfixturevalue(which)
    code, problems, err = verify(path, capsys)
    assert code == EXIT_CODES["ok"] and problems == [] and err == ""
    report = verify_store(path)
    # ratings 5, by_item 3, ids 2, D, U, V, B: one chunk each at this size
    assert report.clean and report.arrays == 14 and report.chunks == 14


def test_an_old_store_verifies_with_a_note(store, capsys):
    strip_checksums(store)
    code, problems, err = verify(store, capsys)
    assert code == EXIT_CODES["ok"] and problems == []
    assert err.count("\n") == 1 and "note:" in err and "written before checksums" in err


# --------------------------------------------------------------------------------------------
# One line per problem


def _remove(name: str, chunk: tuple[int, ...] = (0,)):
    return lambda p: chunk_file(p, name, chunk).unlink()


def _leftover(p: Path) -> None:
    shutil.copytree(p / "gram", p / "tmp-gram-0123456789ab")


def _duplicate_id(p: Path) -> None:
    rewrite(p, "ids/items", lambda ids: np.concatenate([ids[:1], ids[:-1]]))


DAMAGE = {
    "flipped bit in D": (
        lambda p: flip_bit(chunk_file(p, "gram/D", (0, 0)), offset=8 * 3 + 7, bit=0x01),
        ["array 'gram/D' chunk 0,0 is damaged (checksum mismatch); remove the store's gram/"],
    ),
    "truncated ratings": (
        lambda p: truncate(chunk_file(p, "ratings/item")),
        [
            "array 'ratings/item' chunk 0 is damaged (checksum mismatch); ingest the source again "
            "with --overwrite"
        ],
    ),
    "missing chunk": (
        _remove("factors/U", (0, 0)),
        ["array 'factors/U' chunk 0,0 is damaged (chunk file missing); fit again"],
    ),
    "two damaged arrays": (
        lambda p: (
            truncate(chunk_file(p, "ids/users")),
            flip_bit(chunk_file(p, "checkpoint/B", (0, 0))),
        ),
        ["array 'checkpoint/B' chunk 0,0 is damaged", "array 'ids/users' chunk 0 is damaged"],
    ),
    "leftover of a write": (_leftover, ["tmp-gram-0123456789ab/ is an unfinished write of gram/"]),
    "asymmetric D": (
        lambda p: rewrite(p, "gram/D", set_entry(3, 7, 1e6)),
        ["gram/D is not symmetric in chunk 0,0: D[3, 7] = 1e+06"],
    ),
    "symmetric but wrong D": (
        lambda p: rewrite(p, "gram/D", set_entry(3, 7, 1e6, symmetric=True)),
        ["gram/D times a random vector differs from the product through R in 2 rows"],
    ),
    "wrong diagonal": (
        lambda p: rewrite(p, "gram/D", set_entry(5, 5, 1e6)),
        ["gram/D's diagonal differs from the column sums of squares of R at 1 entries"],
    ),
    "NaN in D": (
        lambda p: rewrite(p, "gram/D", set_entry(2, 2, np.nan)),
        ["array 'gram/D' chunk 0,0 is damaged (NaN or infinite values)"],
    ),
    "index out of range": (
        lambda p: rewrite(p, "ratings/item", lambda a: a + 1),
        ["ratings/item has indices outside 0..39"],
    ),
    "by_item not the transpose": (
        lambda p: rewrite(p, "by_item/rating", lambda a: a[::-1]),
        ["by_item/user and by_item/rating are not the transpose of ratings/"],
    ),
    "user ids twice": (_duplicate_id, ["ids/items holds an id twice"]),
    "NaN factor": (
        lambda p: rewrite(p, "factors/V", lambda a: np.where(a > 2, np.inf, a)),
        ["factors/V holds NaN or infinite values; fit again"],
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_each_problem_is_one_line_and_the_exit_code_says_so(store, capsys, case):
    harm, expected = DAMAGE[case]
    harm(store)
    code, problems, err = verify(store, capsys)
    assert code == EXIT_CODES["input"], problems
    assert len(problems) == len(expected), problems
    for line, fragment in zip(sorted(problems), expected, strict=True):
        assert line.startswith(f"{store}: ") and fragment in line, line


def test_old_stores_are_checked_by_their_invariants(store, capsys):
    strip_checksums(store)
    # the flip of the first test above, now with no checksum to catch it
    flip_bit(chunk_file(store, "gram/D", (0, 0)), offset=8 * (3 * 40 + 7) + 7, bit=0x01)
    code, problems, err = verify(store, capsys)
    assert code == EXIT_CODES["input"] and "note:" in err
    assert any("gram/D is not symmetric in chunk 0,0: D[3, 7]" in p for p in problems), problems


def test_a_wide_store_checks_the_row_sums(tmp_path, wide_store, capsys):
    path = tmp_path / "w.zarr"
    shutil.copytree(wide_store, path)
    rewrite(path, "gram/D", set_entry(4, 4, 1e6))
    code, problems, _ = verify(path, capsys)
    assert code == EXIT_CODES["input"]
    assert problems and "row sums of squares of R" in problems[0], problems


def _chunked_gram(path: Path, side: int, change=None, rows: int | None = None) -> None:
    """D written again in chunks of ``rows`` (default ``side``) x ``side``."""
    st = open_store(path)
    D, transposed = store_mod.load_gram(st)
    if change is not None:
        D = change(D.copy())
    attrs = {"transposed": transposed, "ingest_id": st.attrs["ingest_id"]}
    chunks = {"D": (rows or side, side)}
    store_mod._write_group(st, "gram", {"D": D}, attrs, chunks, compressed=False)


def test_chunks_of_d_are_checked_in_mirrored_pairs(store, capsys):
    _chunked_gram(store, 16)  # 40 x 40: 3 x 3 chunks
    report = verify_store(store)
    assert report.clean and report.chunks == 13 + 9
    _chunked_gram(store, 16, set_entry(3, 37, 1e5))
    flip_bit(chunk_file(store, "gram/D", (2, 1)), offset=100)
    code, problems, _ = verify(store, capsys)
    assert code == EXIT_CODES["input"]
    assert sorted(p.split(": ", 1)[1][:52] for p in problems) == [
        "array 'gram/D' chunk 2,1 is damaged (checksum mismat",
        "gram/D is not symmetric in chunks 0,2 and 2,0: D[3, ",
    ], problems


def test_chunks_of_bands_are_checked_in_square_blocks(store, capsys):
    """D in chunks of 8 rows by 16 columns (as fits store it: few rows, whole blocks wide):
    square blocks of 16 are two chunks each, read once; problems name the chunk or the block."""
    _chunked_gram(store, 16, rows=6)  # rows that do not tile the blocks
    code, problems, _ = verify(store, capsys)
    assert code == EXIT_CODES["input"]
    assert problems == [
        f"{store}: gram/D has chunks (6, 16), the layout's have a multiple of the rows as "
        "columns; remove the store's gram/ and run fit to compute D again"
    ]
    _chunked_gram(store, 16, rows=8)  # 40 x 40: 5 x 3 chunks, 3 x 3 blocks
    report = verify_store(store)
    assert report.clean and report.chunks == 13 + 15
    _chunked_gram(store, 16, set_entry(3, 37, 1e5), rows=8)
    flip_bit(chunk_file(store, "gram/D", (3, 1)), offset=100)
    code, problems, _ = verify(store, capsys)
    assert code == EXIT_CODES["input"]
    assert sorted(p.split(": ", 1)[1][:52] for p in problems) == [
        "array 'gram/D' chunk 3,1 is damaged (checksum mismat",
        "gram/D is not symmetric in blocks 0,2 and 2,0: D[3, ",
    ], problems


def test_verify_of_what_is_not_a_store(tmp_path, capsys):
    code = main(["verify", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == EXIT_CODES["input"] and err.count("\n") == 1 and "no zarr.json" in err


# --------------------------------------------------------------------------------------------
# The check before a fit


@pytest.mark.parametrize("which", ["tall_store", "wide_store"])
def test_check_gram_accepts_a_sound_d(which, request):
    st = open_store(request.getfixturevalue(which))
    check_gram(st, *gram_array(st), ratings_matrix(st))


@pytest.mark.parametrize(
    ("change", "probes", "found"),
    [
        (set_entry(5, 5, 1e3), 0, "gram/D's diagonal differs from the column sums of squares"),
        (set_entry(3, 5, 1e3), 0, "gram/D is not symmetric in chunk 0,0: D[3, 5] = 1000"),
        (set_entry(37, 3, -1.0), 3, "gram/D is not symmetric in chunks 0,2 and 2,0: D[3, 37]"),
        (set_entry(37, 3, -1.0), 0, None),  # its chunk is not probed
        (set_entry(30, 30, np.inf), 0, "array 'gram/D' chunk 1,1 is damaged (NaN or infinite"),
    ],
)
def test_check_gram_refuses_a_damaged_d(store, change, probes, found):
    _chunked_gram(store, 16, change)  # 3 x 3 chunks: 3 probes read every pair
    st = open_store(store)
    args = (st, *gram_array(st), ratings_matrix(st), probes)
    if found is None:
        check_gram(*args)
        return
    with pytest.raises(InputError) as info:
        check_gram(*args)
    message = str(info.value)
    assert message.startswith(f"{store}: ") and found in message, message
    assert message.endswith("remove the store's gram/ and run fit to compute D again")


def test_fit_refuses_a_damaged_d_before_any_cluster_starts(store, capsys, monkeypatch):
    strip_checksums(store)  # no checksum: the invariants alone must catch it
    flip_bit(chunk_file(store, "gram/D", (0, 0)), offset=8 * (5 * 40 + 5) + 6, bit=0x01)
    started = []
    monkeypatch.setattr("dask_coded_als.cli.fit.client_from_args", lambda *a: started.append(a))
    begin = time.perf_counter()
    code = main(["fit", str(store), "--factors", "3", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == EXIT_CODES["input"] and not started
    assert time.perf_counter() - begin < 10
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "note:" in lines[0], err
    assert "error: " in lines[1] and "gram/D's diagonal differs" in lines[1], err
    assert "(D[5, 5] = " in lines[1] and "R gives " in lines[1], err
