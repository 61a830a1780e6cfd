"""Entangled polynomial codes and the coded-ALS stage codes (pure numpy; nothing here knows Dask).

Two schemes share one interface, chosen by the evaluation points:

Real points (``points="real"``), the paper's code
    A (N x M) is split r x p, B (N x M') r x q. Worker w stores
    ``A~(x) = sum A[j,i] x^(j + i r)`` and ``B~(x) = sum B[j,k] x^(r-1-j + k r p)`` at its point
    ``x_w`` and returns ``A~(x_w)^T B~(x_w)``, a polynomial of degree ``p q r + r - 2`` whose
    coefficient of ``x^(r-1 + i r + k r p)`` is the block ``C[i,k]`` of ``C = A^T B``.

Points on the unit circle (the default)
    The contraction dimension is split into 2r blocks and the two halves are paired into r
    complex blocks ``a[j,i] = A_top[j,i] + 1j A_bottom[j,i]`` (likewise ``b``). Worker w stores
    ``a~(z) = sum a[j,i] z^(j + i r)`` and ``b~(z) = conj(sum b[j,k] z^(j - k r p))`` and returns
    ``a~(z_w)^T b~(z_w)``. Because ``conj(z) = 1/z`` on the circle this is a Laurent polynomial
    with exponents ``-(r-1) .. p q r - 1`` (again ``p q r + r - 1`` of them), and the real part of
    its coefficient of ``z^(i r + k r p)`` is
    ``C[i,k] = sum_j A_top[j,i]^T B_top[j,k] + A_bottom[j,i]^T B_bottom[j,k]``.
    Same recovery threshold and the same storage per worker as the real code; decoding is a
    Vandermonde system on roots of unity, well conditioned for every straggler pattern. A worker's
    product costs three real GEMMs with half the inner dimension (Gauss's trick), 1.5x the real
    code's multiply-adds; see docs/numerics.md.

Shards of the circle scheme are float64 arrays with a leading axis of 2 (real and imaginary
planes), so everything that crosses the network is plain contiguous float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg

from dask_coded_als._util import check_int
from dask_coded_als.coding.points import evaluation_points

__all__ = [
    "partition",
    "worker_product",
    "EntangledPolynomialCode",
    "ALSCode",
    "NumericalWarning",
    "ERROR_WARNING_LEVEL",
]

#: A decode whose estimated relative error (condition number x machine epsilon) exceeds this warns.
ERROR_WARNING_LEVEL = 1e-6
_EPS = float(np.finfo(np.float64).eps)
_MAX_CACHED_SUBSETS = 4096
#: Above this condition number a decode solves with an LU factorization instead of inverse rows.
GEMM_CONDITION_LIMIT = 1e5


class NumericalWarning(UserWarning):
    """A decode whose estimated relative error exceeds :data:`ERROR_WARNING_LEVEL`."""


def partition(h: int | tuple[int, int]) -> tuple[int, int]:
    """``(p, r)`` from h (the paper's ``(h, h)``) or from a pair ``(p, r)`` of positive integers.

    Examples
    --------
    >>> partition(3), partition((11, 1))
    ((3, 3), (11, 1))
    """
    pair = (h, h) if isinstance(h, (int, np.integer)) else h
    try:
        p, r = pair
    except (TypeError, ValueError):
        raise ValueError(f"h must be a positive integer or a pair (p, r), got {h!r}") from None
    return check_int(p, "p", 1), check_int(r, "r", 1)


class _Plan(NamedTuple):
    rows: np.ndarray | None  # rows of the (pseudo-)inverse giving the wanted coefficients
    lu: tuple[np.ndarray, np.ndarray] | None  # LU factors, for ill-conditioned square systems
    cond: float


def _unpack(planes: np.ndarray) -> np.ndarray:
    return planes[0] + 1j * planes[1]


def _conj_packed(planes: np.ndarray) -> np.ndarray:
    return np.stack([planes[0], -planes[1]])


#: A worker's product is computed in column chunks of about this many multiply-adds (a few
#: milliseconds of one core), so that it can stop between two chunks (``interrupt``) and so that
#: Gauss's trick adds the planes of a shard one chunk at a time, never copying the whole shard.
CHUNK_MULTIPLY_ADDS = 2**25
#: :meth:`ALSCode.data_shard` reads D in bands of whole rows of about this many bytes (what a
#: worker holds besides its shard while it builds it).
STRIP_BYTES = 2**25
#: Bytes of one piece of a shard that :meth:`ALSCode.data_shard` updates at a time: with the
#: piece of D and their product it stays in a core's cache.
CACHED_BYTES = 2**19
_MIN_CHUNK_COLUMNS = 64


def _chunk_columns(n_columns: int, multiply_adds_per_column: int) -> int:
    return max(_MIN_CHUNK_COLUMNS, CHUNK_MULTIPLY_ADDS // max(1, multiply_adds_per_column))


def matmul_t(
    a: np.ndarray, b: np.ndarray, interrupt: Callable[[], bool] | None = None
) -> np.ndarray | None:
    """``a^T b`` computed in column chunks of ``a``; None if ``interrupt()`` turns true between
    two chunks. In the operands' precision (float32 shards and operands give float32)."""
    n_out = a.shape[1]
    step = _chunk_columns(n_out, a.shape[0] * b.shape[1])
    out = np.empty((n_out, b.shape[1]), np.result_type(a, b))
    for c in range(0, n_out, step):
        if interrupt is not None and interrupt():
            return None
        np.matmul(a[:, c : c + step].T, b, out=out[c : c + step])
    return out


def worker_product(
    kind: str, a: np.ndarray, b: np.ndarray, interrupt: Callable[[], bool] | None = None
) -> np.ndarray | None:
    """A worker's product ``a^T b`` of its shards, for codes of ``kind``: ``"real"`` (real
    points), ``"packed"`` (paired complex operands, three real GEMMs) or ``"planes"`` (paired
    output blocks, real B: two real GEMMs). In chunks; None if interrupted.

    A plain function of its arguments, so a task carries a name and a word, not a code object.
    """
    products = {"real": matmul_t, "packed": _matmul_t_packed, "planes": _matmul_t_planes}
    return products[kind](a, b, interrupt)


def _matmul_t_planes(
    a: np.ndarray, b: np.ndarray, interrupt: Callable[[], bool] | None = None
) -> np.ndarray | None:
    """``a^T b`` for a packed complex ``a`` and a real ``b``: two real products."""
    out = np.empty((2, a.shape[2], b.shape[1]), np.result_type(a, b))
    for plane in (0, 1):
        part = matmul_t(a[plane], b, interrupt)
        if part is None:
            return None
        out[plane] = part
    return out


def _matmul_t_packed(
    a: np.ndarray, b: np.ndarray, interrupt: Callable[[], bool] | None = None
) -> np.ndarray | None:
    """``a^T b`` for packed complex operands with three real GEMMs (Gauss's trick), in column
    chunks of ``a``; None if interrupted."""
    n_out = a.shape[2]
    step = _chunk_columns(n_out, a.shape[1] * b.shape[2])
    b_sum = b[0] + b[1]
    out = np.empty((2, n_out, b.shape[2]), np.result_type(a, b))
    for c in range(0, n_out, step):
        if interrupt is not None and interrupt():
            return None
        a0, a1 = a[0, :, c : c + step], a[1, :, c : c + step]
        t1 = a0.T @ b[0]
        t2 = a1.T @ b[1]
        t3 = (a0 + a1).T @ b_sum
        out[0, c : c + step] = t1 - t2
        out[1, c : c + step] = t3 - t1 - t2
    return out


class _Decoder:
    """Decoding of a Vandermonde system, prepared once per set of answering workers.

    A well-conditioned system is decoded with the precomputed rows of its inverse that give the
    wanted coefficients: one GEMM. Applying an explicit inverse loses accuracy roughly with the
    square of the condition number, so above :data:`GEMM_CONDITION_LIMIT` (a few straggler
    patterns with many spare workers in one arc) the decode uses a cached LU factorization
    instead, whose error grows only linearly with it.
    """

    def __init__(self, points: np.ndarray, exponents: np.ndarray, wanted: np.ndarray):
        self.points = points
        self.exponents = exponents
        self.wanted = wanted  # positions (into exponents) of the coefficients to recover
        self._cache: dict[tuple[int, ...], _Plan] = {}

    @property
    def threshold(self) -> int:
        return len(self.exponents)

    def __getstate__(self) -> dict:
        # Codes travel with every task; the cached plans stay at the master.
        return {**self.__dict__, "_cache": {}}

    def plan(self, workers: tuple[int, ...]) -> _Plan:
        cached = self._cache.get(workers)
        if cached is not None:
            return cached
        matrix = self.points[list(workers), None] ** self.exponents[None, :]
        singular = np.linalg.svd(matrix, compute_uv=False)
        cond = float(singular[0] / singular[-1]) if singular[-1] > 0 else float("inf")
        square = len(workers) == len(self.exponents)
        if not square:
            # More answers than needed: least squares over all of them, via the normal
            # equations' well-conditioned cousin, the pseudo-inverse (conditioning improves).
            plan = _Plan(np.ascontiguousarray(np.linalg.pinv(matrix)[self.wanted]), None, cond)
        elif cond <= GEMM_CONDITION_LIMIT:
            plan = _Plan(np.ascontiguousarray(np.linalg.inv(matrix)[self.wanted]), None, cond)
        else:
            plan = _Plan(None, scipy.linalg.lu_factor(matrix), cond)
        if len(self._cache) >= _MAX_CACHED_SUBSETS:
            self._cache.clear()
        self._cache[workers] = plan
        return plan

    def estimated_error(self, workers: Sequence[int], eps: float = _EPS) -> float:
        """Condition number times the results' epsilon: the relative error to expect."""
        return self.plan(tuple(sorted(workers))).cond * eps

    def apply(self, results: Mapping[int, np.ndarray], packed: bool, real_part: bool) -> np.ndarray:
        """Recover the wanted coefficients; returns shape ``(len(wanted),) + block shape``."""
        workers = tuple(sorted(results))
        plan = self.plan(workers)
        if plan.cond * _EPS > ERROR_WARNING_LEVEL:
            warnings.warn(
                f"decoding from workers {list(workers)} has condition number {plan.cond:.2e}; "
                f"expect a relative error near {plan.cond * _EPS:.1e} (use points on the circle)",
                NumericalWarning,
                stacklevel=4,
            )
        first = results[workers[0]]
        block_shape = first.shape[1:] if packed else first.shape
        out_shape = (len(self.wanted),) + block_shape
        n_planes = 2 if packed else 1
        flat = np.stack([np.asarray(results[w]).reshape(n_planes, -1) for w in workers])
        if plan.lu is not None:
            values = flat[:, 0] + 1j * flat[:, 1] if packed else flat[:, 0]
            out = scipy.linalg.lu_solve(plan.lu, values)[self.wanted]
            if real_part or not packed:
                out = out.real
            return out.reshape(out_shape)
        rows = plan.rows
        if not packed:
            out = rows @ flat[:, 0]
            return (out.real if np.iscomplexobj(out) else out).reshape(out_shape)
        # Only the real part is needed for products: two real GEMMs instead of a complex one.
        out_re = rows.real @ flat[:, 0] - rows.imag @ flat[:, 1]
        if real_part:
            return out_re.reshape(out_shape)
        out_im = rows.real @ flat[:, 1] + rows.imag @ flat[:, 0]
        return (out_re + 1j * out_im).reshape(out_shape)


def _check_results(
    results: Mapping[int, Any], n_workers: int, threshold: int, shape: tuple[int, ...] | None
) -> None:
    if not isinstance(results, Mapping):
        raise ValueError("results must map worker index -> that worker's result")
    if len(results) < threshold:
        raise ValueError(f"need results from at least {threshold} workers, got {len(results)}")
    first_shape = None
    for w, value in results.items():
        if not isinstance(w, (int, np.integer)) or not 0 <= w < n_workers:
            raise ValueError(f"unknown worker index {w!r}: workers are 0..{n_workers - 1}")
        arr = np.asarray(value)
        if first_shape is None:
            first_shape = arr.shape
        if arr.shape != first_shape or (shape is not None and arr.shape != shape):
            expected = shape if shape is not None else first_shape
            raise ValueError(f"result of worker {w} has shape {arr.shape}, expected {expected}")


def _check_decoded(decoded: np.ndarray, results: Mapping[int, Any]) -> np.ndarray:
    """``decoded`` if finite; otherwise the error names a worker whose result was not.

    Checking the (smaller) decoded blocks instead of every result saves a pass over all the
    answers: a non-finite answer always reaches the decoded values (its weights are nonzero).
    """
    if np.all(np.isfinite(decoded)):
        return decoded
    for w, value in results.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"result of worker {w} is not finite")
    raise ValueError("decoding produced values that are not finite")


class EntangledPolynomialCode:
    """Entangled polynomial code for ``C = A^T B`` on ``n_workers`` workers.

    ``A`` (N x M) is split into r x p blocks and ``B`` (N x M') into r x q blocks; the results of
    any :attr:`recovery_threshold` = ``p q r + r - 1`` workers give ``C``.

    Parameters
    ----------
    p, q, r : int
        Partition parameters: p column blocks of A, q column blocks of B, r blocks of the shared
        (contraction) dimension.
    n_workers : int
        Number of workers W (at least the recovery threshold).
    points : {"circle", "real"}, array-like or None
        Evaluation points, see :func:`dask_coded_als.coding.points.evaluation_points`. The default
        (points on the unit circle) decodes stably; ``"real"`` is the paper's real-valued code.
    pairing : {"contraction", "output"} or None
        On the circle, which real blocks are paired into complex ones. ``"contraction"`` (the
        default): halves of the shared dimension, for every p, q, r; a worker's product costs
        1.5x the real code's multiply-adds. ``"output"``: neighbouring column blocks of A, for
        the MDS-coded row split (``q = r = 1``), where B needs no encoding and stays real, so a
        worker's product costs what the real code's does (two real products of half the
        width) with the same storage, threshold and conditioning.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.standard_normal((12, 6)), rng.standard_normal((12, 4))
    >>> code = EntangledPolynomialCode(p=2, q=2, r=3, n_workers=16)
    >>> code.recovery_threshold
    14
    >>> a, b = code.encode_a(A), code.encode_b(B)
    >>> results = {w: code.compute(a[w], b[w]) for w in range(2, 16)}
    >>> np.allclose(code.decode(results), A.T @ B)
    True
    """

    def __init__(
        self,
        p: int,
        q: int,
        r: int,
        n_workers: int,
        points: str | Sequence[complex] | None = None,
        pairing: str | None = None,
    ):
        self.p, self.q, self.r = (
            check_int(v, name, 1) for v, name in ((p, "p"), (q, "q"), (r, "r"))
        )
        self.points = evaluation_points(n_workers, points)
        self.n_workers = int(n_workers)
        if self.recovery_threshold > self.n_workers:
            raise ValueError(
                f"recovery threshold {self.recovery_threshold} exceeds n_workers={n_workers}"
            )
        self.complex = np.iscomplexobj(self.points)
        if pairing not in (None, "contraction", "output"):
            raise ValueError(f"pairing must be 'contraction' or 'output', got {pairing!r}")
        if pairing == "output" and not (self.complex and self.q == 1 and self.r == 1):
            raise ValueError("pairing='output' needs points on the circle and q = r = 1")
        #: the output blocks of A are paired (B is then sent as it is)
        self.pairs_output = pairing == "output"
        self._offset = 0 if self.complex else self.r - 1
        j = np.arange(self.r)
        # Exponents of the product polynomial, lowest first, and where the blocks C[i, k] sit.
        low = self._offset - (self.r - 1)
        exponents = np.arange(low, low + self.recovery_threshold)
        wanted = np.array(
            [
                self._offset + i * self.r + k * self.r * self.p - low
                for k in range(self.q)
                for i in range(self.p)
            ]
        )
        self._product_decoder = _Decoder(self.points, exponents, wanted)
        # Encoded B is a polynomial in its own right; decode_b interpolates it over the whole span
        # of its exponents (contiguous when p = 1 or q = 1, as in coded ALS).
        b_exponents = np.array(
            [self._offset - jj + k * self.r * self.p for k in range(self.q) for jj in j]
        )
        span = np.arange(b_exponents.min(), b_exponents.max() + 1)
        if self.pairs_output:
            span = np.zeros(1, dtype=int)  # B is not encoded: any one shard is B itself
        self._b_decoder = _Decoder(self.points, span, b_exponents - span[0])

    # -- properties ---------------------------------------------------------------------------
    @property
    def recovery_threshold(self) -> int:
        """Number of results that suffice to decode ``A^T B``: ``p q r + r - 1``."""
        return self.p * self.q * self.r + self.r - 1

    @property
    def product_exponents(self) -> np.ndarray:
        """Exponents of the workers' product polynomial, lowest first (a copy).

        There are :attr:`recovery_threshold` of them (negative ones on the circle): the result of
        worker w is ``sum_k c_k * points[w] ** product_exponents[k]`` for matrix coefficients
        ``c_k``, which is what lets redundant results be checked against each other.
        """
        return self._product_decoder.exponents.copy()

    @property
    def b_threshold(self) -> int:
        """Number of encoded ``B`` shards that suffice to recover ``B`` (:meth:`decode_b`):
        ``r q`` when p = 1 or q = 1."""
        return self._b_decoder.threshold

    @property
    def contraction_blocks(self) -> int:
        """How many blocks the shared dimension N is cut into (2r when the circle pairs
        contraction blocks, r otherwise)."""
        return 2 * self.r if self.complex and not self.pairs_output else self.r

    @property
    def output_blocks(self) -> int:
        """How many column blocks A is cut into (2p when its output blocks are paired, else p)."""
        return 2 * self.p if self.pairs_output else self.p

    def estimated_error(self, workers: Sequence[int], eps: float = _EPS) -> float:
        """Relative decoding error to expect from these workers (condition number x epsilon of
        the results, float64's by default)."""
        return self._product_decoder.estimated_error(workers, eps)

    def estimated_b_error(self, workers: Sequence[int]) -> float:
        """Like :meth:`estimated_error`, for :meth:`decode_b`."""
        return self._b_decoder.estimated_error(workers)

    # -- encoding -----------------------------------------------------------------------------
    def _blocks(
        self,
        M: np.ndarray,
        n_cols: int,
        name: str,
        pad_to: tuple[int, int] | None = None,
    ) -> tuple[Callable[[int, int], np.ndarray], tuple[int, int]]:
        """A getter of the blocks of M (contraction block, column block) and their shape.

        With ``pad_to`` the matrix is taken as zero-extended to that shape without copying it
        (D can be most of the master's memory).
        """
        # An array that reads from disk on slicing (a zarr.Array) is read block by block.
        lazy = not isinstance(M, np.ndarray) and hasattr(M, "shape") and hasattr(M, "__getitem__")
        if not lazy:
            M = np.asarray(M, dtype=np.float64)
        if len(M.shape) != 2:
            raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(M.shape)}")
        n_rows = self.contraction_blocks
        shape = tuple(M.shape) if pad_to is None else pad_to
        if shape[0] < M.shape[0] or shape[1] < M.shape[1]:
            raise ValueError(f"cannot pad {name} of shape {tuple(M.shape)} to {shape}")
        if shape[0] % n_rows or shape[1] % n_cols:
            raise ValueError(
                f"{name} has shape {shape}: its rows must divide into {n_rows} blocks and its "
                f"columns into {n_cols} (pad with zeros to a multiple)"
            )
        if not lazy and not np.all(np.isfinite(M)):
            raise ValueError(f"{name} contains NaN or infinite values")
        rows, cols = shape[0] // n_rows, shape[1] // n_cols

        def block(j: int, i: int) -> np.ndarray:
            part = M[j * rows : (j + 1) * rows, i * cols : (i + 1) * cols]
            if lazy:
                part = np.asarray(part, dtype=np.float64)
                if not np.all(np.isfinite(part)):
                    raise ValueError(f"{name} contains NaN or infinite values")
            if part.shape == (rows, cols):
                return part
            full = np.zeros((rows, cols))
            full[: part.shape[0], : part.shape[1]] = part
            return full

        return block, (rows, cols)

    def _encode(
        self,
        blocks: tuple[Callable[[int, int], np.ndarray], tuple[int, int]],
        exponents: np.ndarray,
        workers,
        conjugate: bool = False,
        dense: bool = False,
    ) -> list[np.ndarray]:
        """Each worker's sum of blocks times its point's powers, accumulated block by block so
        that no copy of the whole matrix is made (``dense``: as one product of the stacked
        blocks with all workers' coefficients, for small matrices encoded every iteration).

        On the circle block ``(j, i)`` stands for ``top + 1j bottom`` (``top - 1j bottom`` when
        ``conjugate``), with top = block(j, i), bottom = block(j + r, i) (with output pairing:
        block(j, 2i) and block(j, 2i + 1)); the shard is returned as packed real and imaginary
        planes.
        """
        workers = range(self.n_workers) if workers is None else workers
        block, shape = blocks
        if self.complex:
            block = self._paired(block, exponents.shape[0])
        sign = -1.0 if conjugate else 1.0
        if dense:
            return self._encode_dense(block, shape, exponents, workers, sign)
        r, n_cols = exponents.shape
        shards = []
        for w in workers:
            coefficients = self.points[w] ** exponents  # (r, n_cols)
            if not self.complex:
                shard = np.zeros(shape)
                for j in range(r):
                    for i in range(n_cols):
                        shard += coefficients[j, i] * block(j, i)
                shards.append(shard)
                continue
            planes = np.zeros((2, *shape))
            for j in range(r):
                for i in range(n_cols):
                    c = coefficients[j, i]
                    top, bottom = block(j, i)
                    # (c.re + 1j c.im) (top + 1j sign bottom)
                    planes[0] += c.real * top - (sign * c.imag) * bottom
                    planes[1] += c.imag * top + (sign * c.real) * bottom
            shards.append(planes)
        return shards

    def _paired(
        self, block: Callable[[int, int], np.ndarray], r: int
    ) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
        """The (top, bottom) real blocks that make complex block (j, i) on the circle."""
        if self.pairs_output:
            return lambda j, i: (block(j, 2 * i), block(j, 2 * i + 1))
        return lambda j, i: (block(j, i), block(j + r, i))

    def _encode_dense(
        self,
        block: Callable[[int, int], np.ndarray],
        shape: tuple[int, int],
        exponents: np.ndarray,
        workers: Sequence[int],
        sign: float,
    ) -> list[np.ndarray]:
        r, n_cols = exponents.shape
        pairs = [(j, i) for j in range(r) for i in range(n_cols)]
        if self.complex:
            stacked = np.stack(
                [top + (1j * sign) * bot for top, bot in (block(*ji) for ji in pairs)]
            )
        else:
            stacked = np.stack([block(j, i) for j, i in pairs])
        flat_exponents = np.array([exponents[j, i] for j, i in pairs])
        coefficients = self.points[list(workers), None] ** flat_exponents[None, :]
        encoded = (coefficients @ stacked.reshape(len(pairs), -1)).reshape(-1, *shape)
        if not self.complex:
            return list(encoded)
        return [np.stack([e.real, e.imag]) for e in encoded]

    def encode_a(
        self,
        A: np.ndarray,
        workers: Sequence[int] | None = None,
        pad_to: tuple[int, int] | None = None,
    ) -> list[np.ndarray]:
        """Encoded ``A`` for every worker (or for ``workers``), in worker order. With
        ``pad_to``, A is taken as zero-extended to that shape (no copy)."""
        blocks = self._blocks(A, self.output_blocks, "A", pad_to)
        j, i = np.meshgrid(np.arange(self.r), np.arange(self.p), indexing="ij")
        return self._encode(blocks, j + i * self.r, workers)

    def encode_b(self, B: np.ndarray, workers: Sequence[int] | None = None) -> list[np.ndarray]:
        """Encoded ``B`` for every worker (or for ``workers``), in worker order (with output
        pairing, B itself for every worker)."""
        blocks = self._blocks(B, self.q, "B")
        if self.pairs_output:
            B = np.asarray(B, dtype=np.float64)
            return [B] * len(range(self.n_workers) if workers is None else workers)
        j, k = np.meshgrid(np.arange(self.r), np.arange(self.q), indexing="ij")
        exponents = self._offset - j + k * self.r * self.p
        if self.q == 1 and isinstance(B, np.ndarray):
            return self._encode_row_blocks(
                np.asarray(B, dtype=np.float64), exponents[:, 0], workers
            )
        # On the circle b~(z) = conj(sum b z^(j - krp)) = sum conj(b) z^(krp - j).
        # B (a factor) is small and encoded every iteration: one product for all workers.
        return self._encode(blocks, exponents, workers, conjugate=self.complex, dense=True)

    def _encode_row_blocks(
        self, B: np.ndarray, exponents: np.ndarray, workers: Sequence[int] | None
    ) -> list[np.ndarray]:
        """``encode_b`` for q = 1, where B's blocks are its row blocks: B reshaped is the stack
        of them (no copy), and one product gives every worker's operand (the factor is encoded
        every iteration, so this is on the master's critical path)."""
        workers = list(range(self.n_workers) if workers is None else workers)
        n = self.contraction_blocks
        rows = np.ascontiguousarray(B).reshape(n, -1)
        if self.complex:  # conj(top + 1j bottom): the circle's b~ is conjugated
            rows = rows[: self.r] - 1j * rows[self.r :]
        encoded = (self.points[workers, None] ** exponents[None, :]) @ rows
        shape = (B.shape[0] // n, B.shape[1])
        if not self.complex:
            return list(encoded.reshape(len(workers), *shape))
        planes = np.stack([encoded.real, encoded.imag], axis=1)
        return list(planes.reshape(len(workers), 2, *shape))

    # -- the workers' product -----------------------------------------------------------------
    def compute(
        self,
        a_shard: np.ndarray,
        b_shard: np.ndarray,
        interrupt: Callable[[], bool] | None = None,
    ) -> np.ndarray | None:
        """What a worker computes from its two shards: ``A~(x_w)^T B~(x_w)``.

        Computed in chunks; when ``interrupt`` is given and returns True between two chunks the
        computation stops and returns None.
        """
        return worker_product(self.product_kind, a_shard, b_shard, interrupt)

    @property
    def product_kind(self) -> str:
        """How a worker multiplies its shards (see :func:`worker_product`)."""
        return "planes" if self.pairs_output else "packed" if self.complex else "real"

    @staticmethod
    def scale_b(b_shard: np.ndarray, G: np.ndarray) -> np.ndarray:
        """``B~(x_w) G``, the encoding of ``B G`` (for real G), at the worker's own cost."""
        return b_shard @ G

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, results: Mapping[int, np.ndarray]) -> np.ndarray:
        """``A^T B`` from the products of any :attr:`recovery_threshold` (or more) workers.

        With more results than the threshold, all of them are used (least squares).
        """
        _check_results(results, self.n_workers, self.recovery_threshold, None)
        if self.pairs_output:
            # complex block i holds the real blocks 2i (real part) and 2i + 1 (imaginary part)
            paired = self._product_decoder.apply(results, packed=True, real_part=False)
            paired = _check_decoded(paired, results)
            rows, cols = paired.shape[1:]
            return np.stack([paired.real, paired.imag], axis=1).reshape(2 * self.p * rows, cols)
        blocks = self._product_decoder.apply(results, packed=self.complex, real_part=True)
        blocks = _check_decoded(blocks, results)
        # blocks are ordered k-major: (q * p, rows, cols)
        rows, cols = blocks.shape[1:]
        return (
            blocks.reshape(self.q, self.p, rows, cols)
            .transpose(1, 2, 0, 3)
            .reshape(self.p * rows, self.q * cols)
        )

    def decode_b(self, shards: Mapping[int, np.ndarray]) -> np.ndarray:
        """``B`` from any :attr:`b_threshold` encoded ``B`` shards (e.g. the results of
        :meth:`scale_b`, which give ``B G``)."""
        _check_results(shards, self.n_workers, self.b_threshold, None)
        if self.pairs_output:
            return _check_decoded(np.asarray(next(iter(shards.values()))), shards)
        coefficients = self._b_decoder.apply(shards, packed=self.complex, real_part=False)
        coefficients = _check_decoded(coefficients, shards)
        # coefficients: (q * r, rows, cols) ordered k-major, j-minor
        rows, cols = coefficients.shape[1:]
        coefficients = coefficients.reshape(self.q, self.r, rows, cols)
        if self.complex:
            coefficients = coefficients.conj()
            coefficients = np.concatenate([coefficients.real, coefficients.imag], axis=1)
        n_rows = coefficients.shape[1]
        return coefficients.transpose(1, 2, 0, 3).reshape(n_rows * rows, self.q * cols)


class ALSCode:
    """The codes of one coded-ALS iteration (the paper's Sec. III-C) for a partition of D.

    The paper splits D into ``h x h`` blocks. More generally D's output rows are split p ways
    and its contraction (and B) r ways, ``partition=(p, r)``: stage 1 decodes ``E = D B`` from
    any ``p r + r - 1`` workers (an entangled code with ``q = 1``), stages 2 and 3 decode
    ``F = B^T B`` and ``S = B^T E`` from any ``2r - 1`` (``p = q = 1``), stage 4 decodes
    ``B+ = E G`` from any ``r``. ``h`` stands for ``(h, h)``; ``(k, 1)`` is the MDS-coded row
    split, whose stage-1 product on the circle pairs output blocks and so costs what the real
    code's does (see :class:`EntangledPolynomialCode`).

    Parameters
    ----------
    h : int or (int, int)
        h (the paper's h x h blocks) or the partition (p, r).
    n_workers : int
        Number of workers W, at least the recovery threshold ``p r + r - 1``.
    points : {"circle", "real"}, array-like or None
        Evaluation points; see :class:`EntangledPolynomialCode`.

    Notes
    -----
    Worker-side methods (``stage1`` ... ``stage4``) are pure functions of their arguments, so a
    scheduler can run them anywhere the shards are. A *factor shard* holds what worker w needs of
    B: ``f_L(B, x_w)`` and ``f_R(B, x_w)``. On the circle ``f_R = conj(f_L)``, so only ``f_L``
    travels and the worker conjugates it.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> R = rng.standard_normal((40, 24))
    >>> D, B = R.T @ R, rng.standard_normal((24, 3))
    >>> code = ALSCode(h=2, n_workers=7)
    >>> data, factor = code.encode_data(D), code.encode_factor(B)
    >>> E = code.decode_stage1({w: code.stage1(data[w], factor[w]) for w in (0, 2, 3, 4, 6)})
    >>> np.allclose(E, D @ B)
    True
    >>> mds = ALSCode((3, 1), n_workers=5)  # any 3 of 5 workers decode E
    >>> operand = mds.encode_operand(B)
    >>> shards = mds.encode_data(D)
    >>> E = mds.decode_stage1({w: mds.product(shards[w], operand[w]) for w in (1, 2, 4)})
    >>> np.allclose(E, D @ B)
    True
    """

    def __init__(
        self,
        h: int | tuple[int, int],
        n_workers: int,
        points: str | Sequence[complex] | None = None,
    ):
        p, r = partition(h)
        self.p, self.r = p, r
        #: the paper's h (None for a partition with p != r)
        self.h = p if p == r else None
        self.n_workers = int(n_workers)
        self.gram_code = EntangledPolynomialCode(1, 1, r, n_workers, points)
        self.complex = self.gram_code.complex
        # With r = 1 on the circle B needs no encoding: pair output blocks instead (1x cost).
        pairing = "output" if self.complex and r == 1 else None
        self.product_code = EntangledPolynomialCode(p, 1, r, n_workers, points, pairing)
        self.points = self.product_code.points

    @property
    def partition(self) -> tuple[int, int]:
        """(p, r): D's output rows split p ways, its contraction r ways."""
        return self.p, self.r

    @property
    def recovery_threshold(self) -> int:
        """Workers needed per iteration: ``p r + r - 1`` (``h^2 + h - 1``, Lemma 2)."""
        return self.product_code.recovery_threshold

    @property
    def stage_thresholds(self) -> dict[str, int]:
        """Results needed by each stage, keyed by what it decodes."""
        return {
            "E": self.product_code.recovery_threshold,
            "F": self.gram_code.recovery_threshold,
            "S": self.gram_code.recovery_threshold,
            "B": self.gram_code.b_threshold,
        }

    @property
    def block_multiple(self) -> int:
        """D's side must be a multiple of this: of its contraction blocks and of its output
        blocks (2h for h x h on the circle, h with real points)."""
        return math.lcm(self.product_code.contraction_blocks, self.product_code.output_blocks)

    def padded_size(self, size: int) -> int:
        """Smallest multiple of :attr:`block_multiple` that is at least ``size``."""
        m = self.block_multiple
        return -(-size // m) * m

    # -- master side: encoding ----------------------------------------------------------------
    def encode_data(self, D: np.ndarray, workers: Sequence[int] | None = None) -> list[np.ndarray]:
        """Coded data shards ``D~(x_w)`` (once per fit); D is zero-padded to
        :meth:`padded_size` on the fly."""
        size = self.padded_size(D.shape[0])
        return self.product_code.encode_a(D, workers, pad_to=(size, size))

    def data_shard(
        self, D: Any, worker: int, dtype: Any = np.float64, strip_bytes: int = STRIP_BYTES
    ) -> np.ndarray:
        """Worker ``worker``'s shard ``D~(x_w)`` as :meth:`encode_data` makes it, in ``dtype``.

        D is read once, in bands of whole rows of about ``strip_bytes`` (a multiple of D's chunk
        rows when it has chunks, so that a D stored on disk is read chunk by chunk, each chunk
        once). Each band is added into the shard a few rows at a time, block by block, so that
        the rows of D, of the shard and of their product stay in the processor's cache while
        they are scaled and added. With real points in
        float64 the sums are those of :meth:`encode_data`, in the same order; on the circle, or
        summed in float32, they agree to rounding.
        """
        code = self.product_code
        size = self.padded_size(D.shape[0])
        n_rows, width = D.shape
        rows, cols = size // code.contraction_blocks, size // code.output_blocks
        coefficients = self._data_coefficients(worker)  # (row block, column block, plane)
        shard = np.zeros((coefficients.shape[2], rows, cols), dtype)
        chunk_rows = int((getattr(D, "chunks", None) or (1,))[0])
        item = np.dtype(getattr(D, "dtype", np.float64)).itemsize
        band = max(1, strip_bytes // (item * width))
        band = max(chunk_rows, band - band % chunk_rows)
        step = max(1, CACHED_BYTES // (shard.itemsize * cols))  # rows of a piece in cache
        scaled = np.empty((min(step, rows, band), cols), dtype)
        for start in range(0, n_rows, band):
            stop = min(start + band, n_rows)
            values = np.asarray(D[start:stop])
            low = start
            while low < stop:
                row_block = low // rows
                high = min(low + step, stop, (row_block + 1) * rows)
                part = values[low - start : high - start]
                top = low - row_block * rows
                for col_block in range(code.output_blocks):
                    c0, c1 = col_block * cols, min((col_block + 1) * cols, width)
                    if c0 >= c1:
                        break  # the zero padding
                    out = scaled[: high - low, : c1 - c0]
                    target = shard[:, top : top + high - low, : c1 - c0]
                    for plane, c in enumerate(coefficients[row_block, col_block]):
                        if c != 0.0:
                            np.multiply(part[:, c0:c1], c, out=out)
                            target[plane] += out
                low = high
        return shard if self.complex else shard[0]

    def _data_coefficients(self, worker: int) -> np.ndarray:
        """The real coefficient of every block (J, I) of D in each plane of worker's shard: by
        linearity, the encoding of the matrix whose blocks are 1 x 1 with a 1 at (J, I)."""
        code = self.product_code
        n_rows, n_cols = code.contraction_blocks, code.output_blocks
        planes = 2 if self.complex else 1
        coefficients = np.zeros((n_rows, n_cols, planes))
        for row_block in range(n_rows):
            for col_block in range(n_cols):
                unit = np.zeros((n_rows, n_cols))
                unit[row_block, col_block] = 1.0
                encoded = code.encode_a(unit, [worker])[0]
                coefficients[row_block, col_block] = np.asarray(encoded).reshape(planes)
        return coefficients

    def encode_factor(self, B: np.ndarray) -> list[np.ndarray]:
        """Per-worker factor shards holding ``f_L(B, x_w)`` and ``f_R(B, x_w)`` (the operand of
        the paper's stage 1, whose workers also return ``f_L^T f_R``)."""
        left = self.gram_code.encode_a(B)
        if self.complex:
            return left
        right = self.gram_code.encode_b(B)
        return [np.stack([fl, fr]) for fl, fr in zip(left, right, strict=True)]

    def encode_operand(
        self, B: np.ndarray, workers: Sequence[int] | None = None
    ) -> list[np.ndarray]:
        """Per-worker operand of :meth:`product`: ``f_R(B, x_w)`` (B itself when the stage-1
        code pairs output blocks)."""
        return self.product_code.encode_b(B, workers)

    def encode_right(self, M: np.ndarray) -> list[np.ndarray]:
        """Per-worker ``f_R(M, x_w)``: the operand of :meth:`product` (``M = B``), of stage 3
        (``M = E``) and of stage 4 (``M = E`` or ``B``)."""
        return self.gram_code.encode_b(M)

    def encode_e(self, E: np.ndarray) -> list[np.ndarray]:
        """Per-worker ``f_R(E, x_w)`` for stage 3 (same as :meth:`encode_right`)."""
        return self.encode_right(E)

    # -- worker side ---------------------------------------------------------------------------
    def _left_right(self, factor_shard: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.complex:
            return factor_shard, _conj_packed(factor_shard)
        return factor_shard[0], factor_shard[1]

    def product(
        self,
        data_shard: np.ndarray,
        operand: np.ndarray,
        interrupt: Callable[[], bool] | None = None,
    ) -> np.ndarray | None:
        """``D~(x_w) f_R(B, x_w)``, the costly product, from the operand of
        :meth:`encode_operand`; computed in chunks and None if ``interrupt()`` turns true
        between two of them."""
        return self.product_code.compute(data_shard, operand, interrupt)

    def _operand(self, factor_shard: np.ndarray) -> np.ndarray:
        """The stage-1 operand from a factor shard."""
        if self.product_code.pairs_output:
            # r = 1: f_L(B, x) = B_top + 1j B_bottom at every point, so its planes are B.
            return np.concatenate([factor_shard[0], factor_shard[1]])
        return self._left_right(factor_shard)[1]

    def stage1(self, data_shard: np.ndarray, factor_shard: np.ndarray) -> np.ndarray:
        """``D~(x_w) f_R(B, x_w)`` from a factor shard (see :meth:`product`)."""
        return self.product(data_shard, self._operand(factor_shard))

    def stage1_and_2(
        self,
        data_shard: np.ndarray,
        factor_shard: np.ndarray,
        interrupt: Callable[[], bool] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The paper's step 1: ``D~(x_w) f_R(B, x_w)`` and ``f_L(B, x_w)^T f_R(B, x_w)``
        together (None if interrupted)."""
        product = self.product(data_shard, self._operand(factor_shard), interrupt)
        if product is None:
            return None
        return product, self.gram_code.compute(*self._left_right(factor_shard))

    def stage2(self, factor_shard: np.ndarray) -> np.ndarray:
        """``f_L(B, x_w)^T f_R(B, x_w)``."""
        left, right = self._left_right(factor_shard)
        return self.gram_code.compute(left, right)

    def stage3(
        self,
        factor_shard: np.ndarray,
        e_shard: np.ndarray,
        interrupt: Callable[[], bool] | None = None,
    ) -> np.ndarray | None:
        """``f_L(B, x_w)^T f_R(E, x_w)``."""
        return self.gram_code.compute(self._left_right(factor_shard)[0], e_shard, interrupt)

    def stage4(
        self, e_shard: np.ndarray, G: np.ndarray, interrupt: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """``f_R(E, x_w) G = f_R(E G, x_w)``."""
        return self.gram_code.scale_b(e_shard, np.asarray(G, dtype=np.float64))

    # -- master side: decoding ----------------------------------------------------------------
    def decode_stage1(self, results: Mapping[int, np.ndarray]) -> np.ndarray:
        """``E = D B`` from any ``h^2 + h - 1`` stage-1 results (D is symmetric)."""
        return self.product_code.decode(results)

    def decode_stage2(self, results: Mapping[int, np.ndarray]) -> np.ndarray:
        """``F = B^T B`` from any ``2h - 1`` stage-2 results."""
        return self.gram_code.decode(results)

    def decode_stage3(self, results: Mapping[int, np.ndarray]) -> np.ndarray:
        """``S = B^T E`` from any ``2h - 1`` stage-3 results."""
        return self.gram_code.decode(results)

    def decode_stage4(self, results: Mapping[int, np.ndarray]) -> np.ndarray:
        """``B+ = E G`` from any ``h`` stage-4 results."""
        return self.gram_code.decode_b(results)
