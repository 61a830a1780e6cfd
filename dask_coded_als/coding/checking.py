"""Worker results checked by the code's own redundancy (pure numpy; nothing here knows Dask).

The results of one stage are evaluations of one polynomial: worker w returns
``Y_w = sum_k c_k x_w ** e_k``, with the K = ``code.recovery_threshold`` matrix coefficients
``c_k``, the exponents ``e_k = code.product_exponents`` and the worker's point ``x_w``. Any K
results determine the coefficients, so n > K results form a codeword of a Reed-Solomon-like code
over the complex (or real) numbers, of length n and dimension K. A wrong result shows as a
residual when the polynomial is fitted to all of them, and with ``n >= K + 2e`` results up to e
wrong ones can be located: they are the only set of at most e results without which the others
fit. With ``K + 1`` results one wrong result can be detected but not located; with exactly K
nothing can be checked.

Method
------
1. **Probe.** Each result (a matrix, complex when packed) is reduced to ``n_probes`` numbers
   ``u_j^T Y_w v_j`` with seeded Gaussian vectors ``u_j``, ``v_j``. Probing is linear, so the
   probes of honest results are values of scalar polynomials with the same exponents, and a wrong
   result stays visible unless its error is orthogonal to every probe: a set of measure zero for
   errors not chosen with knowledge of the probes (a single wrong entry included). Reading each
   result once is the only cost that grows with the results' size.
2. **Fit.** The probes are fitted by least squares (SVD of the n x K matrix ``x_w ** e_k``) and the
   residual is compared with the tolerance below. Within it, nothing is wrong: the fast path, and
   the only one taken while workers behave.
3. **Locate.** Otherwise, for m = 1, 2, ... up to the number that can be located, every set S of
   m results is ranked by the residual of the syndrome (the probes' component outside the fitted
   space, with arbitrary values allowed at S: many tiny least-squares problems solved at once),
   and the two best-ranked sets are checked by refitting the other results directly (free of the
   wrong values' rounding). The first size at which one of them fits gives the answer; if both
   fit, the results do not say which is wrong and the check raises rather than guess.

Tolerance
---------
An honest residual is rounding: the workers' own (errors of relative size epsilon in the terms
``c_k x_w ** e_k``), the probes', and the fit's (a backward-stable SVD fits the column space of
``V + dV`` with ``|dV| ~ epsilon |V|``, which leaks about ``epsilon sigma_max(V) |c|`` of the
fitted part into the residual). All three scale with ``epsilon sigma_max(V) |c|``, so the
tolerance is ::

    tolerance = SAFETY_FACTOR * epsilon * sigma_max(V) * |c_fit|

with ``c_fit`` the fitted coefficients of the probes. Since ``|c_fit| <= |P| / sigma_min(V)`` it
never exceeds ``SAFETY_FACTOR`` x the code's own decoding estimate (condition number x epsilon,
``EntangledPolynomialCode.estimated_error``) x the size of the probed results ``|P|``; the two
agree for well-spread points (the circle, few workers missing, condition number near 1). The
sharper form matters where the condition number is large but the honest residual is not: fitting
does not amplify rounding the way solving for the coefficients does.
``SAFETY_FACTOR`` and the measured false alarms and detections are in docs/numerics.md.

Errors whose probes are comparable to this tolerance cannot be told from rounding. Section 6 of
docs/numerics.md measures where detection starts (relative errors of about 3e-11 at h = 2 to 3e-9
at h = 6 on the circle, in the worst straggler patterns) and how far the errors that pass can
move the decode.

Limits
------
- The probes are seeded (default ``seed=0``) so that runs are reproducible. A worker that knows
  them could craft an error they miss; pass fresh randomness (``seed=None`` or a generator) when
  workers may be malicious rather than faulty.
- With ``K + 2e`` results, ``e + 1`` errors chosen to agree with another polynomial at K - 1
  honest points can make the check drop honest results instead: the Reed-Solomon bound, which no
  decoder escapes. Random errors beyond ``e`` are detected (a raised :class:`UncorrectableError`).
- Results much smaller than their operands (heavy cancellation in the product) carry rounding
  that is large relative to them; raise ``safety`` for such data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from dask_coded_als.coding.codes import EntangledPolynomialCode
from dask_coded_als.errors import ClusterError

__all__ = [
    "DEFAULT_PROBES",
    "SAFETY_FACTOR",
    "Consistency",
    "UncorrectableError",
    "check_consistency",
    "locate_wrong_answers",
]

#: Multiple of ``epsilon * sigma_max(V) * |c_fit|`` that an honest residual may reach. The worst
#: honest ratio measured is about 8 (docs/numerics.md, section 6); the rest is margin for the
#: rounding of products with a long contraction, which grows slowly with its length. A false alarm
#: stops a round or accuses an honest worker, so the margin is generous.
SAFETY_FACTOR = 1000.0
#: Probes per result. Each is a Gaussian bilinear form ``u^T E v`` of an error E; the chance that
#: all four see less than a tenth of its typical size is about 2e-4 for a dense error and 8e-3 for
#: a single wrong entry (a hundredth: below 1e-6 and 1e-5).
DEFAULT_PROBES = 4


class UncorrectableError(ClusterError, ValueError):
    """The results disagree in a way that dropping at most ``max_wrong`` of them cannot explain.

    A :class:`~dask_coded_als.errors.ClusterError` (the workers' answers cannot be trusted) and,
    for callers that check arguments and answers alike, a ``ValueError``.

    Attributes
    ----------
    workers : tuple of int
        The workers whose results were checked.
    max_wrong : int
        How many of them the caller allowed to be wrong.
    located : int
        How many wrong results the number of results could locate (at most
        ``(len(workers) - K) // 2``); above it, wrong results are only detected.
    suspects : frozenset of int
        Results that are wrong for certain (not finite) plus, when a search was made, the
        best-fitting set of the largest size tried: a hint, not a verdict.
    residual, tolerance : float
        Residual of the best fit tried and its tolerance (inf when not finite results alone
        exceed ``max_wrong``).
    """

    def __init__(
        self,
        message: str,
        *,
        workers: tuple[int, ...],
        max_wrong: int,
        located: int,
        suspects: frozenset[int],
        residual: float,
        tolerance: float,
    ):
        super().__init__(message)
        self.workers = workers
        self.max_wrong = max_wrong
        self.located = located
        self.suspects = suspects
        self.residual = residual
        self.tolerance = tolerance


class Consistency(NamedTuple):
    """How well a set of results fits one polynomial (:func:`check_consistency`)."""

    residual: float  #: Frobenius norm of the probes' least-squares residual
    tolerance: float  #: what rounding alone may explain (see the module's notes)
    redundancy: int  #: results beyond the recovery threshold (0: nothing was checked)

    @property
    def consistent(self) -> bool:
        """True when the residual is within the tolerance."""
        return self.residual <= self.tolerance


# -- validation and probing ------------------------------------------------------------------
def _arrays(code: EntangledPolynomialCode, results: Mapping[int, object]) -> dict[int, np.ndarray]:
    """The results as arrays keyed by worker, with indices and shapes checked (not values)."""
    if not isinstance(code, EntangledPolynomialCode):
        raise TypeError(
            f"code must be an EntangledPolynomialCode (e.g. ALSCode(...).product_code), "
            f"got {type(code).__name__}"
        )
    if not isinstance(results, Mapping):
        raise ValueError("results must map worker index -> that worker's result")
    arrays: dict[int, np.ndarray] = {}
    shape = None
    for w, value in results.items():
        if not isinstance(w, (int, np.integer)) or not 0 <= w < code.n_workers:
            raise ValueError(f"unknown worker index {w!r}: workers are 0..{code.n_workers - 1}")
        arr = np.asarray(value)
        if shape is None:
            shape = arr.shape
        if arr.shape != shape:
            raise ValueError(f"result of worker {w} has shape {arr.shape}, expected {shape}")
        if code.complex and (arr.ndim < 2 or arr.shape[0] != 2):
            raise ValueError(
                f"result of worker {w} has shape {arr.shape}: packed complex results have a "
                "leading axis of 2 (real and imaginary planes)"
            )
        arrays[int(w)] = arr
    return arrays


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _probe(
    arrays: Mapping[int, np.ndarray],
    workers: tuple[int, ...],
    packed: bool,
    n_probes: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``u_j^T Y_w v_j`` for every worker (rows) and probe (columns); complex when packed.

    Bilinear probes need only rows + cols random numbers per probe, not rows x cols, and one
    skinny GEMM per result, which reads each result once.
    """
    shape = arrays[workers[0]].shape
    block = shape[1:] if packed else shape
    cols = block[-1] if block else 1
    rows = math.prod(block[:-1]) if len(block) > 1 else 1
    n_planes = 2 if packed else 1
    u = rng.standard_normal((rows, n_probes))
    v = rng.standard_normal((cols, n_probes))
    out = np.empty((len(workers), n_planes, n_probes))
    # A result that is not finite gives probes that are not finite: expected, not a warning.
    with np.errstate(invalid="ignore", over="ignore"):
        for i, w in enumerate(workers):
            right = np.asarray(arrays[w], dtype=np.float64).reshape(n_planes * rows, cols) @ v
            out[i] = np.einsum("prj,rj->pj", right.reshape(n_planes, rows, n_probes), u)
    return out[:, 0] + 1j * out[:, 1] if packed else out[:, 0]


def _epsilon(arrays: Mapping[int, np.ndarray]) -> float:
    """Unit roundoff of the results' precision (float64 unless a worker sent less)."""
    eps = float(np.finfo(np.float64).eps)
    for arr in arrays.values():
        if np.issubdtype(arr.dtype, np.floating):
            eps = max(eps, float(np.finfo(arr.dtype).eps))
    return eps


def _fit(
    code: EntangledPolynomialCode, workers: tuple[int, ...], probes: np.ndarray, scale: float
) -> tuple[float, float]:
    """Residual of the least-squares fit of ``probes`` (rows: ``workers``) and its tolerance
    ``scale * sigma_max * |c_fit|``."""
    matrix = code.points[list(workers), None] ** code.product_exponents[None, :]
    basis, singular, _ = np.linalg.svd(matrix, full_matrices=False)
    inside = basis.conj().T @ probes
    residual = float(np.linalg.norm(probes - basis @ inside))
    if singular[-1] <= 0:
        return residual, math.inf
    # |c_fit| = |Sigma^-1 U^H P|: the coefficients without forming them.
    coefficients = float(np.linalg.norm(inside / singular[:, None]))
    return residual, float(scale * singular[0] * coefficients)


def _syndrome_ranking(
    code: EntangledPolynomialCode, workers: tuple[int, ...], probes: np.ndarray, size: int
) -> list[tuple[int, ...]]:
    """Sets of ``size`` positions (into ``workers``), best explanation of the misfit first.

    The syndrome ``G P`` (G: orthonormal rows orthogonal to the fitted space) is what no choice
    of coefficients can explain; allowing arbitrary values at S removes its component along the
    columns ``G[:, S]``. All sets are solved at once as (n - K) x size least-squares problems.
    """
    matrix = code.points[list(workers), None] ** code.product_exponents[None, :]
    left = np.linalg.svd(matrix, full_matrices=True)[0]
    parity = left[:, code.recovery_threshold :].conj().T  # (n - K) x n
    syndrome = parity @ probes
    sets = list(itertools.combinations(range(len(workers)), size))
    columns = parity[:, sets].transpose(1, 0, 2)  # (sets, n - K, size)
    q = np.linalg.qr(columns)[0]
    left_over = syndrome[None] - q @ (q.conj().transpose(0, 2, 1) @ syndrome[None])
    order = np.argsort(np.linalg.norm(left_over, axis=(1, 2)), kind="stable")
    return [sets[i] for i in order]


# -- public API ------------------------------------------------------------------------------
def check_consistency(
    code: EntangledPolynomialCode,
    results: Mapping[int, np.ndarray],
    *,
    safety: float = SAFETY_FACTOR,
    n_probes: int = DEFAULT_PROBES,
    seed: int | np.random.Generator | None = 0,
) -> Consistency:
    """Residual of fitting one polynomial to all the results, and the tolerance for it.

    Parameters
    ----------
    code : EntangledPolynomialCode
        The code whose products these are (e.g. ``ALSCode(h, W).product_code`` for stage 1).
    results : mapping of int to numpy.ndarray
        Worker index -> its result of :meth:`EntangledPolynomialCode.compute`, as given to
        :meth:`EntangledPolynomialCode.decode`; at least ``code.recovery_threshold`` of them, all
        finite.
    safety : float
        Multiple of the rounding estimate allowed (see the module's notes).
    n_probes : int
        Random bilinear probes per result.
    seed : int, numpy.random.Generator or None
        Randomness of the probes.

    Returns
    -------
    Consistency
        ``residual``, ``tolerance`` and ``redundancy`` (results beyond the threshold; with none,
        the residual is 0 and nothing was checked); ``.consistent`` compares the first two.

    Examples
    --------
    >>> from dask_coded_als.coding.codes import ALSCode
    >>> rng = np.random.default_rng(0)
    >>> code = ALSCode(h=2, n_workers=7).product_code  # K = 5
    >>> A, B = rng.standard_normal((8, 8)), rng.standard_normal((8, 3))
    >>> a, b = code.encode_a(A), code.encode_b(B)
    >>> results = {w: code.compute(a[w], b[w]) for w in range(7)}
    >>> check_consistency(code, results).consistent
    True
    >>> results[3] = results[3] * (1 + 1e-6)
    >>> check_consistency(code, results).consistent
    False
    """
    arrays = _arrays(code, results)
    workers = tuple(sorted(arrays))
    threshold = code.recovery_threshold
    if len(workers) < threshold:
        raise ValueError(f"need results from at least {threshold} workers, got {len(workers)}")
    probes = _probe(arrays, workers, code.complex, n_probes, _rng(seed))
    if not np.all(np.isfinite(probes)):
        raise ValueError("results must be finite (locate_wrong_answers drops those that are not)")
    if len(workers) == threshold:
        return Consistency(0.0, 0.0, 0)
    residual, tolerance = _fit(code, workers, probes, safety * _epsilon(arrays))
    return Consistency(residual, tolerance, len(workers) - threshold)


def locate_wrong_answers(
    code: EntangledPolynomialCode,
    results: Mapping[int, np.ndarray],
    max_wrong: int,
    *,
    safety: float = SAFETY_FACTOR,
    n_probes: int = DEFAULT_PROBES,
    seed: int | np.random.Generator | None = 0,
) -> frozenset[int]:
    """Workers whose results disagree with the others, found by the code's redundancy.

    The results of one stage are values of one polynomial with K = ``code.recovery_threshold``
    coefficients. With n results, up to ``(n - K) // 2`` wrong ones can be located (the smallest
    set without which the others fit one polynomial), and beyond that, wrong results are still
    detected while ``n > K``. Results that are not finite are wrong by definition and counted
    among ``max_wrong``.

    Parameters
    ----------
    code : EntangledPolynomialCode
        The code whose products these are (e.g. ``ALSCode(h, W).product_code`` for stage 1, or
        ``.gram_code`` for stages 2 and 3).
    results : mapping of int to numpy.ndarray
        Worker index -> result, exactly as given to :meth:`EntangledPolynomialCode.decode`
        (packed complex planes on the circle, plain real arrays with ``points="real"``); at least
        K of them.
    max_wrong : int
        How many wrong results to look for. Asking for more than ``(n - K) // 2`` locates that
        many and only detects the rest; ``max_wrong=0`` detects without locating.
    safety : float
        Multiple of the rounding estimate that a residual may reach (see the module's notes).
    n_probes : int
        Random bilinear probes per result (``u^T Y v``).
    seed : int, numpy.random.Generator or None
        Randomness of the probes; the default makes runs reproducible.

    Returns
    -------
    frozenset of int
        The workers to drop before decoding; empty when every result fits. With exactly K
        finite results nothing can be checked: the set holds only the results that are not
        finite (none, usually).

    Raises
    ------
    UncorrectableError
        When no set of at most ``max_wrong`` results (and at most the number that can be
        located) explains the misfit, when two such sets of the same size do, or when the
        results left after dropping the non-finite ones are fewer than K.
    ValueError
        Unknown worker indices, results of different shapes, ``max_wrong < 0``, fewer than K
        results.

    Notes
    -----
    Locating m wrong results ranks all ``C(n, m)`` sets of m results, in one batch of tiny
    problems: fine for the few spare workers coded computing uses (990 sets for m = 2 at h = 6,
    K + 4 results), but combinatorial in ``max_wrong``. When nothing is wrong the cost is one pass
    over the results and one SVD of an n x K matrix.

    Examples
    --------
    >>> from dask_coded_als.coding.codes import ALSCode
    >>> rng = np.random.default_rng(0)
    >>> code = ALSCode(h=2, n_workers=9).product_code  # K = 5: two wrong results can be located
    >>> A, B = rng.standard_normal((8, 8)), rng.standard_normal((8, 3))
    >>> a, b = code.encode_a(A), code.encode_b(B)
    >>> results = {w: code.compute(a[w], b[w]) for w in range(9)}
    >>> sorted(locate_wrong_answers(code, results, max_wrong=2))
    []
    >>> results[4] = results[4] + 1e-3
    >>> results[7][1, 0, 2] = np.nan
    >>> wrong = locate_wrong_answers(code, results, max_wrong=2)
    >>> sorted(wrong)
    [4, 7]
    >>> good = {w: y for w, y in results.items() if w not in wrong}
    >>> np.allclose(code.decode(good), A.T @ B)
    True
    """
    if not isinstance(max_wrong, (int, np.integer)) or max_wrong < 0:
        raise ValueError(f"max_wrong must be a non-negative integer, got {max_wrong!r}")
    arrays = _arrays(code, results)
    threshold = code.recovery_threshold
    if len(arrays) < threshold:
        raise ValueError(f"need results from at least {threshold} workers, got {len(arrays)}")
    everyone = tuple(sorted(arrays))
    all_probes = _probe(arrays, everyone, code.complex, n_probes, _rng(seed))
    # A result that is not finite is wrong whatever the others say (and would poison the fit).
    # Its probes are not finite either (NaN and inf propagate through the sums), which spares a
    # second pass over the results; a probe overflowing from absurdly large values counts too.
    finite = np.all(np.isfinite(all_probes), axis=1)
    broken = frozenset(w for w, ok in zip(everyone, finite, strict=True) if not ok)
    workers = tuple(w for w, ok in zip(everyone, finite, strict=True) if ok)
    probes = all_probes[finite]
    redundancy = len(workers) - threshold
    located = max(0, min(max_wrong - len(broken), redundancy // 2))

    def error(
        message: str,
        suspects: frozenset[int] = frozenset(),
        residual: float = math.inf,
        tolerance: float = math.inf,
    ) -> UncorrectableError:
        return UncorrectableError(
            message,
            workers=everyone,
            max_wrong=int(max_wrong),
            located=located,
            suspects=broken | suspects,
            residual=residual,
            tolerance=tolerance,
        )

    if len(broken) > max_wrong or redundancy < 0:
        raise error(
            f"{len(broken)} of {len(arrays)} results are not finite (workers {sorted(broken)}): "
            f"more than max_wrong={max_wrong}, or too few left to decode ({threshold} needed)"
        )
    if redundancy == 0:
        return broken  # K results fit any polynomial: nothing to check against
    scale = safety * _epsilon(arrays)
    residual, tolerance = _fit(code, workers, probes, scale)
    if residual <= tolerance:
        return broken
    best: frozenset[int] = frozenset()
    for size in range(1, located + 1):
        ranking = _syndrome_ranking(code, workers, probes, size)
        confirmed = []
        # The syndrome ranks; a direct refit of the rest confirms, free of the wrong values'
        # rounding. A second confirmed set of the same size means the results cannot decide.
        for candidate in ranking[:2]:
            keep = [i for i in range(len(workers)) if i not in candidate]
            fit = _fit(code, tuple(workers[i] for i in keep), probes[keep], scale)
            if fit[0] <= fit[1]:
                confirmed.append(candidate)
            if candidate is ranking[0]:
                best = frozenset(workers[i] for i in candidate)
                residual, tolerance = fit
        if len(confirmed) > 1:
            sets = [sorted(workers[i] for i in c) for c in confirmed]
            raise error(
                f"ambiguous: dropping workers {sets[0]} or {sets[1]} leaves results that fit; "
                "the errors are too close to rounding to locate",
                frozenset().union(*map(frozenset, sets)),
                residual,
                tolerance,
            )
        if confirmed:
            return broken | frozenset(workers[i] for i in confirmed[0])
    if located < max_wrong - len(broken):
        limit = (
            f"only {located} of the requested {max_wrong - len(broken)} can be located with "
            f"{len(workers)} results (K = {threshold})"
        )
    else:
        limit = f"at most {located} were looked for (max_wrong={max_wrong})"
    raise error(
        f"results of workers {list(workers)} do not fit one polynomial (residual "
        f"{residual:.2e} > tolerance {tolerance:.2e}) and dropping up to {located} of them "
        f"does not explain it: more are wrong than that; {limit}",
        best,
        residual,
        tolerance,
    )
