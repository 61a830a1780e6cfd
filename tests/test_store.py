"""Tests of dask_coded_als.data.store: layout checks, matrices, the Gram matrix and factors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from damage import chunk_file, flip_bit, strip_checksums, truncate
from support import load_generator

from dask_coded_als.data import checksums
from dask_coded_als.data import gram as gram_mod
from dask_coded_als.data import store as store_mod
from dask_coded_als.data.ingest import ingest, ingest_dataframe
from dask_coded_als.data.store import (
    RatingsStore,
    compute_gram,
    compute_gram_on_cluster,
    gram_array,
    gram_source,
    load_gram,
    open_store,
    ratings_dask,
    ratings_matrix,
    read_checkpoint,
    read_factors,
    write_checkpoint,
    write_factors,
)
from dask_coded_als.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


gen = load_generator()


def make_store(root: Path, n_users: int, n_items: int, n_ratings: int, seed: int):
    """A store from generated ratings, and the oracle matrix built directly with scipy."""
    users, items, ratings, stamps = gen.generate_ratings(n_users, n_items, n_ratings, seed=seed)
    paths = gen.write_movielens(
        root / "src", users=users, items=items, ratings=ratings, timestamps=stamps
    )
    ingest(paths["ratings"], root / "s.zarr")
    uid, iid = np.unique(users), np.unique(items)
    oracle = sp.csr_matrix(
        (ratings, (np.searchsorted(uid, users), np.searchsorted(iid, items))),
        shape=(len(uid), len(iid)),
    )
    return root / "s.zarr", oracle


@pytest.fixture(scope="module")
def tall(tmp_path_factory):
    """n_users >= n_items: D = R^T R."""
    return make_store(tmp_path_factory.mktemp("tall"), 60, 35, 700, seed=1)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """n_users < n_items: D = R R^T."""
    return make_store(tmp_path_factory.mktemp("wide"), 25, 70, 600, seed=2)


@pytest.fixture
def tall_copy(tmp_path, tall):
    path = tmp_path / "s.zarr"
    shutil.copytree(tall[0], path)
    return path, tall[1]


def same(a, b) -> bool:
    return a.shape == b.shape and (sp.csr_matrix(a) != sp.csr_matrix(b)).nnz == 0


# --------------------------------------------------------------------------------------------
# open_store


def test_open_store_properties(tall):
    path, oracle = tall
    st = open_store(path)
    assert isinstance(st, RatingsStore)
    assert (st.n_users, st.n_items, st.n_ratings) == (60, 35, 700) == (*oracle.shape, oracle.nnz)
    assert st.user_ids.tolist() == list(range(1, 61))
    assert st.item_ids.dtype == np.int64 and np.all(np.diff(st.item_ids) > 0)
    assert st.titles is None
    assert st.has_timestamps
    attrs = st.attrs
    assert attrs["layout"] == store_mod.LAYOUT and attrs["layout_version"] == 1
    attrs["n_users"] = -1  # a copy: the store is not changed
    assert st.n_users == 60
    assert "n_users=60" in repr(st)
    assert pickle.loads(pickle.dumps(st)).path == st.path


def _drop_attr(path: Path) -> None:
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    del attrs["layout"]
    group.attrs.put(attrs)


def _set_attr(key, value):
    def damage(path: Path) -> None:
        zarr.open_group(path, mode="r+").attrs[key] = value

    return damage


def _replace_array(name, length):
    def damage(path: Path) -> None:
        shutil.rmtree(path / name)
        group = zarr.open_group(path, mode="r+")
        group.create_array(name, shape=(length,), dtype="int32")

    return damage


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: shutil.rmtree(p), "no such store"),
        (lambda p: (shutil.rmtree(p), p.write_text("x")), "a store is a directory"),
        (lambda p: (p / "zarr.json").unlink(), "no zarr.json"),
        (lambda p: (p / "zarr.json").write_text("{not json"), "cannot open the Zarr group"),
        (_drop_attr, "not a ratings store"),
        (_set_attr("layout_version", 99), "layout version 99 is newer"),
        (_set_attr("layout_version", "1"), "bad layout_version"),
        (_set_attr("n_items", -3), "bad root attribute n_items"),
        (lambda p: shutil.rmtree(p / "ratings" / "item"), "missing array 'ratings/item'"),
        (lambda p: shutil.rmtree(p / "by_item"), "missing array 'by_item/indptr'"),
        (_replace_array("ratings/rating", 700), "wrong dtype"),
        (_replace_array("ratings/user", 5), "has shape (5,), expected (700,)"),
    ],
)
def test_open_store_errors(tall_copy, damage, match):
    path, _ = tall_copy
    damage(path)
    with pytest.raises(InputError, match=match.replace("(", r"\(").replace(")", r"\)")) as info:
        open_store(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_pointer_is_detected(tall_copy):
    path, _ = tall_copy
    zarr.open_array(path, path="ratings/indptr", mode="r+")[5] = 10**6
    with pytest.raises(InputError, match="corrupt store"):
        ratings_matrix(path)


# --------------------------------------------------------------------------------------------
# Matrices


@pytest.mark.parametrize("which", ["tall", "wide"])
def test_ratings_matrix(which, request):
    path, oracle = request.getfixturevalue(which)
    mat = ratings_matrix(path)
    assert isinstance(mat, sp.csr_matrix) and mat.dtype == np.float64
    assert mat.has_sorted_indices
    assert same(mat, oracle)
    assert same(ratings_matrix(open_store(path)), oracle)


@pytest.mark.parametrize("rows_per_chunk", [None, 1, 7, 16, 1000])
@pytest.mark.parametrize("transpose", [False, True])
def test_ratings_dask(tall, rows_per_chunk, transpose):
    path, oracle = tall
    arr = ratings_dask(path, rows_per_chunk, transpose=transpose)
    want = oracle.T.tocsr() if transpose else oracle
    assert arr.shape == want.shape and arr.dtype == np.float64
    if rows_per_chunk is not None:
        assert arr.numblocks == (-(-want.shape[0] // rows_per_chunk), 1)
    blocks = dask.compute(*arr.to_delayed().ravel())
    assert all(isinstance(b, sp.csr_matrix) for b in blocks)
    assert same(sp.vstack(blocks), want)
    assert same(arr.compute(), want)


def test_ratings_dask_automatic_blocks(tall, monkeypatch):
    path, oracle = tall
    monkeypatch.setattr(store_mod, "TARGET_RATINGS_PER_BLOCK", 100)
    arr = ratings_dask(path)
    assert 5 <= arr.numblocks[0] <= 9  # 700 ratings in blocks of about 100
    sizes = [b.nnz for b in dask.compute(*arr.to_delayed().ravel())]
    assert sum(sizes) == 700 and max(sizes) < 200
    assert same(arr.compute(), oracle)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_ratings_dask_rejects_bad_block_sizes(tall, bad):
    with pytest.raises(InputError, match="rows_per_chunk"):
        ratings_dask(tall[0], bad)


# --------------------------------------------------------------------------------------------
# Gram matrix


@pytest.mark.parametrize("rows_per_chunk", [None, 1, 4, 13, 1000])
@pytest.mark.parametrize("split_every", [2, 3, 8])
@pytest.mark.parametrize("which", ["tall", "wide"])
def test_compute_gram_matches_oracle(tmp_path, request, which, rows_per_chunk, split_every):
    src, oracle = request.getfixturevalue(which)
    path = tmp_path / "s.zarr"
    shutil.copytree(src, path)
    D, transposed = compute_gram(path, rows_per_chunk=rows_per_chunk, split_every=split_every)
    assert transposed == (which == "wide")
    want = (oracle @ oracle.T if transposed else oracle.T @ oracle).toarray()
    # Ratings are multiples of 0.5: every product and partial sum is exact in float64.
    np.testing.assert_array_equal(D, want)
    assert D.dtype == np.float64 and np.array_equal(D, D.T)
    loaded, flag = load_gram(path)
    np.testing.assert_array_equal(loaded, want)
    assert flag == transposed
    gram = zarr.open_group(path, path="gram", mode="r")
    assert gram.attrs["transposed"] == transposed and gram["D"].dtype == np.float64
    assert gram["D"].attrs["transposed"] == transposed


@pytest.mark.parametrize("column_block", [1, 5, 1000])
@pytest.mark.parametrize("which", ["tall", "wide"])
def test_gram_by_column_blocks_matches_oracle(tmp_path, request, which, column_block):
    src, oracle = request.getfixturevalue(which)
    path = tmp_path / "s.zarr"
    shutil.copytree(src, path)
    D, transposed = compute_gram(path, column_block=column_block)
    want = (oracle @ oracle.T if transposed else oracle.T @ oracle).toarray()
    np.testing.assert_array_equal(D, want)


def test_large_grams_are_computed_by_column_blocks(tall_copy, monkeypatch):
    path, oracle = tall_copy
    monkeypatch.setattr(store_mod, "GRAM_BY_COLUMNS_BYTES", 0)
    monkeypatch.setattr(store_mod, "tree_sum", None)  # the tree must not be used
    D, _ = compute_gram(path)
    np.testing.assert_array_equal(D, (oracle.T @ oracle).toarray())


@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_gram_dense_and_sparse_partial_sums(tall_copy, monkeypatch, threshold):
    path, oracle = tall_copy
    monkeypatch.setattr(gram_mod, "DENSE_FRACTION", threshold)
    D, _ = compute_gram(path, rows_per_chunk=3, split_every=3)
    np.testing.assert_array_equal(D, (oracle.T @ oracle).toarray())


def test_gram_overwrite(tall_copy):
    path, oracle = tall_copy
    compute_gram(path, rows_per_chunk=10)
    before = {p: p.read_bytes() for p in (path / "gram").rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="gram exists; pass overwrite=True"):
        compute_gram(path)
    assert before == {p: p.read_bytes() for p in (path / "gram").rglob("*") if p.is_file()}
    D, _ = compute_gram(path, overwrite=True)
    np.testing.assert_array_equal(D, (oracle.T @ oracle).toarray())
    assert sorted(p.name for p in path.iterdir()) == [
        "by_item",
        "gram",
        "ids",
        "ratings",
        "zarr.json",
    ]


def test_gram_missing(tall_copy):
    with pytest.raises(InputError, match="no gram matrix"):
        load_gram(tall_copy[0])


def test_gram_with_a_distributed_client(tall_copy):
    distributed = pytest.importorskip("distributed")
    path, oracle = tall_copy
    want = (oracle.T @ oracle).toarray()
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0"
    ):
        D, _ = compute_gram(path, rows_per_chunk=9)  # local threads despite the client
        np.testing.assert_array_equal(D, want)
        D, _ = compute_gram(path, rows_per_chunk=9, overwrite=True, scheduler=None)  # the client
        np.testing.assert_array_equal(D, want)


def test_gram_rejects_bad_split(tall_copy):
    with pytest.raises(InputError, match="split_every"):
        compute_gram(tall_copy[0], split_every=1)


# --------------------------------------------------------------------------------------------
# Factors


def test_factors_round_trip(tall_copy):
    path, _ = tall_copy
    rng = np.random.default_rng(0)
    U, V = rng.normal(size=(60, 4)), rng.normal(size=(35, 4)).astype(np.float32)
    attrs = {"d": 4, "history": [{"it": 1, "residual": 0.5}], "points": "circle", "t": (1, 2)}
    write_factors(path, U, V, attrs)
    U2, V2, attrs2 = read_factors(path)
    np.testing.assert_array_equal(U2, U)
    np.testing.assert_array_equal(V2, V.astype(np.float64))
    assert U2.dtype == V2.dtype == np.float64
    assert attrs2 == json.loads(json.dumps(attrs))  # tuples come back as lists
    assert open_store(path).has_factors
    # A second write replaces the factors and leaves no temporary groups.
    write_factors(open_store(path), U[:, :2], V[:, :2])
    U3, V3, attrs3 = read_factors(path)
    assert U3.shape == (60, 2) and V3.shape == (35, 2) and attrs3 == {}
    assert not [p for p in path.iterdir() if p.name.startswith(("tmp-", "old-"))]


@pytest.mark.parametrize(
    ("u_shape", "v_shape", "attrs", "match"),
    [
        ((59, 3), (35, 3), {}, r"U has shape \(59, 3\)"),
        ((60, 3), (36, 3), {}, r"V has shape \(36, 3\)"),
        ((60, 3), (35, 2), {}, "same number d"),
        ((60, 0), (35, 0), {}, "same number d"),
        ((60,), (35, 3), {}, "U has shape"),
        ((60, 3), (35, 3), {"f": object()}, "not JSON-serializable"),
        ((60, 3), (35, 3), {"bad": {1, 2}}, "not JSON-serializable"),
    ],
)
def test_write_factors_errors(tall_copy, u_shape, v_shape, attrs, match):
    path, _ = tall_copy
    with pytest.raises(InputError, match=match):
        write_factors(path, np.ones(u_shape), np.ones(v_shape), attrs)
    assert not (path / "factors").exists()


def test_write_factors_rejects_non_finite_and_non_real(tall_copy):
    path, _ = tall_copy
    U = np.ones((60, 2))
    U[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        write_factors(path, U, np.ones((35, 2)))
    with pytest.raises(InputError, match="real arrays"):
        write_factors(path, np.ones((60, 2), dtype=complex), np.ones((35, 2)))


@pytest.mark.parametrize("step", ["array", "swap"])
def test_failed_factor_write_keeps_old_factors(tall_copy, monkeypatch, step):
    path, _ = tall_copy
    write_factors(path, np.ones((60, 2)), np.ones((35, 2)), {"run": 1})
    before = {p: p.read_bytes() for p in (path / "factors").rglob("*") if p.is_file()}
    if step == "swap":

        def fail_swap(root, tmp, name):
            raise OSError("rename failed")

        monkeypatch.setattr(store_mod, "_swap_in", fail_swap)
    else:
        real = zarr.Group.create_array
        calls = []

        def fail_second(self, name, **kwargs):
            calls.append(name)
            if len(calls) == 2:
                raise OSError("disk full")
            return real(self, name, **kwargs)

        monkeypatch.setattr(zarr.Group, "create_array", fail_second)
    with pytest.raises(OSError):
        write_factors(path, np.zeros((60, 3)), np.zeros((35, 3)), {"run": 2})
    monkeypatch.undo()
    assert before == {p: p.read_bytes() for p in (path / "factors").rglob("*") if p.is_file()}
    U, V, attrs = read_factors(path)
    assert U.shape == (60, 2) and attrs == {"run": 1}
    assert not [p for p in path.iterdir() if p.name.startswith(("tmp-", "old-"))]


def test_swap_replaces_an_existing_group(tmp_path):
    (tmp_path / "tmp-x").mkdir()
    (tmp_path / "tmp-x" / "new").write_text("new")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "old").write_text("old")
    store_mod._swap_in(tmp_path, "tmp-x", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["x"]
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["new"]


def test_read_factors_missing(tall_copy):
    with pytest.raises(InputError, match="no factors stored"):
        read_factors(tall_copy[0])


def test_generic_store_ids_are_strings(tmp_path):
    src = tmp_path / "r.txt"
    src.write_text("bob,x,1\nann,y,2\n")
    ingest(src, tmp_path / "s.zarr", format="csv")
    st = open_store(tmp_path / "s.zarr")
    assert st.user_ids.dtype == object and st.user_ids.tolist() == ["ann", "bob"]
    assert st.item_ids.tolist() == ["x", "y"]
    D, transposed = compute_gram(st)
    np.testing.assert_array_equal(D, [[1.0, 0.0], [0.0, 4.0]])  # x: bob 1, y: ann 2
    assert not transposed


# --------------------------------------------------------------------------------------------
# D on the cluster


def _float_store(root: Path, n_users: int, n_items: int, n_ratings: int, seed: int) -> Path:
    """A store whose ratings are arbitrary floats, so that sums round and their order shows."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_items, size=n_ratings, replace=False)
    frame = pd.DataFrame(
        {
            "user": pairs // n_items,
            "item": pairs % n_items,
            "rating": rng.uniform(0.5, 5.0, size=n_ratings),
        }
    )
    ingest_dataframe(frame, root / "s.zarr")
    return root / "s.zarr"


@pytest.mark.parametrize("shape", [(90, 40), (30, 75)], ids=["tall", "wide"])
@pytest.mark.parametrize("block", [7, 40, 4096])
def test_gram_on_cluster_equals_local_gram(tmp_path, client, shape, block):
    """The workers' blocks of D equal the local computation bit for bit, whatever the blocks."""
    path = _float_store(tmp_path, *shape, n_ratings=900, seed=block)
    local, transposed = compute_gram(path, column_block=11)
    assert compute_gram_on_cluster(path, client, block=block, overwrite=True) == transposed
    stored, flag = gram_array(path)
    side = local.shape[0]
    rows, cols = stored.chunks
    # each task writes whole chunks; square blocks a chunk wide are whole chunks (verify's)
    assert flag == transposed and rows <= 128 and cols % rows == 0
    assert cols == block if block < side else cols >= side
    np.testing.assert_array_equal(stored[...], local)
    # And the threaded tree of partial sums agrees to rounding.
    D_tree, _ = compute_gram(path, overwrite=True, rows_per_chunk=13)
    np.testing.assert_allclose(D_tree, local, rtol=1e-13, atol=1e-12)


def test_gram_on_cluster_float32_and_no_clobber(tmp_path, client):
    path = _float_store(tmp_path, 50, 30, 500, seed=3)
    local, _ = compute_gram(path, column_block=8)
    before = {p: p.read_bytes() for p in (path / "gram").rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="gram exists; pass overwrite=True"):
        compute_gram(path, client=client)
    assert before == {p: p.read_bytes() for p in (path / "gram").rglob("*") if p.is_file()}
    D, _ = compute_gram(path, client=client, overwrite=True, dtype="float32")
    assert D is None
    stored, _ = gram_array(path)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored[...], local.astype(np.float32))
    with pytest.raises(InputError, match="dtype must be 'float64' or 'float32'"):
        compute_gram(path, client=client, overwrite=True, dtype="float16")
    assert not [p for p in path.iterdir() if p.name.startswith(".tmp") or "tmp" in p.name]


def test_gram_on_cluster_failure_leaves_no_partial_group(tmp_path, client, monkeypatch):
    path = _float_store(tmp_path, 40, 20, 300, seed=4)
    monkeypatch.setattr(store_mod, "_gram_pair_task", _failing_pair_task)
    with pytest.raises(RuntimeError, match="block failed"):
        compute_gram_on_cluster(path, client, block=5)
    assert sorted(p.name for p in path.iterdir()) == ["by_item", "ids", "ratings", "zarr.json"]


def _failing_pair_task(*args):
    raise RuntimeError("block failed")


def test_gram_source_reads_on_a_worker(tmp_path, client):
    path = _float_store(tmp_path, 40, 20, 300, seed=5)
    compute_gram(path)
    source = gram_source(path)
    assert source.shape == (20, 20) and source.dtype == np.float64
    rows = client.submit(lambda s: s.open_array()[2:5], source, pure=False).result(timeout=30)
    np.testing.assert_array_equal(rows, load_gram(path)[0][2:5])


# --------------------------------------------------------------------------------------------
# Checksums: every array written here carries one, a damaged chunk is named


def _arrays(path: Path) -> dict[str, zarr.Array]:
    root = zarr.open_group(path, mode="r")
    return {n: a for n, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}


def test_every_array_written_carries_a_checksum(tall_copy):
    path, _ = tall_copy
    compute_gram(path)
    write_factors(path, np.ones((60, 2)), np.zeros((35, 2)))  # zeros: every chunk still written
    write_checkpoint(path, np.ones((35, 2)), {"iteration": 1})
    arrays = _arrays(path)
    assert {"gram/D", "factors/U", "factors/V", "checkpoint/B", "ratings/item"} <= set(arrays)
    for name, arr in arrays.items():
        assert checksums.has_checksums(arr), name
        assert chunk_file(path, name, (0,) * arr.ndim).is_file(), name


@pytest.mark.parametrize(
    ("name", "read", "harm", "hint"),
    [
        ("gram/D", load_gram, flip_bit, "fit to compute D again"),
        ("gram/D", load_gram, truncate, "fit to compute D again"),
        ("factors/V", read_factors, flip_bit, "fit again to write new factors"),
        ("checkpoint/B", read_checkpoint, truncate, "fit again from the start"),
        ("ratings/item", ratings_matrix, truncate, "ingest the source again"),
        ("by_item/user", lambda p: ratings_dask(p, transpose=True).compute(), flip_bit, "ingest"),
        ("ratings/rating", ratings_matrix, Path.unlink, "(chunk file missing); ingest"),
        ("gram/D", load_gram, Path.unlink, "(chunk file missing); remove the store's gram/"),
    ],
)
def test_a_damaged_chunk_is_named(tall_copy, name, read, harm, hint):
    path, _ = tall_copy
    compute_gram(path)
    write_factors(path, np.ones((60, 2)), np.ones((35, 2)))
    write_checkpoint(path, np.ones((35, 2)), {"iteration": 1})
    chunk = (0, 0) if name.split("/")[0] in ("gram", "factors", "checkpoint") else (0,)
    harm(chunk_file(path, name, chunk))
    with pytest.raises(InputError) as info:
        read(path)
    message = str(info.value)
    assert f"{path}: array {name!r} chunk {','.join(map(str, chunk))} is damaged" in message
    assert hint in message and "\n" not in message


def test_the_damaged_chunk_among_many_is_named(tall_copy, monkeypatch):
    path, _ = tall_copy
    U = np.arange(120.0).reshape(60, 2)
    monkeypatch.setattr(store_mod, "_write_group", _small_chunks(store_mod._write_group, 8))
    write_factors(path, U, np.ones((35, 2)))
    assert zarr.open_array(path / "factors" / "U", mode="r").cdata_shape == (8, 1)
    truncate(chunk_file(path, "factors/U", (5, 0)))
    with pytest.raises(InputError, match=r"'factors/U' chunk 5,0 is damaged \(checksum mismatch"):
        read_factors(path)
    arr = open_store(path).array("factors/U")
    np.testing.assert_array_equal(arr[:40], U[:40])  # the chunks before it still read
    with pytest.raises(InputError, match="chunk 5,0"):
        arr[38:45, 1]


def _small_chunks(write_group, rows):
    def write(st, name, arrays, attrs, chunks, *args, **kwargs):
        chunks = {k: (rows, *c[1:]) for k, c in chunks.items()}
        return write_group(st, name, arrays, attrs, chunks, *args, **kwargs)

    return write


def test_a_store_written_before_checksums_still_opens_and_says_so_once(tall_copy, monkeypatch):
    path, oracle = tall_copy
    compute_gram(path)
    D = load_gram(path)[0]
    strip_checksums(path)
    assert not any(checksums.has_checksums(a) for a in _arrays(path).values())
    monkeypatch.setattr(checksums, "_NOTED", set())
    with pytest.warns(checksums.UncheckedStoreWarning, match="written before checksums") as seen:
        st = open_store(path)
        open_store(path)
    assert len(seen) == 1 and str(path) in str(seen[0].message)
    assert same(ratings_matrix(st), oracle)
    np.testing.assert_array_equal(load_gram(st)[0], D)
    # What it can still find: an unreadable chunk is named all the same.
    truncate(chunk_file(path, "ratings/rating"))
    with pytest.raises(InputError, match=r"'ratings/rating' chunk 0 is damaged \(Zstd"):
        ratings_matrix(st)
