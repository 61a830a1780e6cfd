"""Reproduce the numbers of docs/numerics.md (conditioning, decoding error and per-worker cost).

Usage::

    python pipelines/numerics_table.py

Prints markdown tables for both evaluation schemes: ``points=None`` (the default: W-th roots of
unity, contraction dimension paired into complex blocks) and ``points="real"`` (the paper's real
code at Chebyshev nodes). Everything is seeded. The timing section runs in a subprocess with
single-threaded BLAS (``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import scipy.linalg

from dask_coded_als.coding.codes import ALSCode, EntangledPolynomialCode, NumericalWarning
from dask_coded_als.coding.points import evaluation_points, vandermonde, worst_case_condition_number

SCHEMES = {"circle": None, "real": "real"}
EXHAUSTIVE_LIMIT = 5000  # as in dask_coded_als.coding.points
COND_PAIRS = [
    (14, 11),
    (18, 15),
    (20, 11),
    (24, 19),
    (32, 29),
    (34, 32),
    (38, 29),
    (43, 41),
    (44, 41),
    (50, 41),
]
SPARES = (0, 1, 3, 9)
N_RANDOM = 50
_EPS = float(np.finfo(np.float64).eps)
SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def fmt(x: float) -> str:
    return f"{x:.1e}"


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cyclic_runs(n_workers: int, k: int) -> list[tuple[int, ...]]:
    return [tuple(sorted((s + i) % n_workers for i in range(k))) for s in range(n_workers)]


def test_subsets(n_workers: int, k: int, rng: np.random.Generator) -> tuple[list, str]:
    """Cyclic runs, all k-subsets when at most 5000, and N_RANDOM random subsets."""
    out = set(cyclic_runs(n_workers, k))
    exhaustive = math.comb(n_workers, k) <= EXHAUSTIVE_LIMIT
    if exhaustive:
        out.update(itertools.combinations(range(n_workers), k))
    out.update(tuple(sorted(rng.choice(n_workers, k, replace=False))) for _ in range(N_RANDOM))
    return sorted(out), ("all" if exhaustive else "runs+rand")


def stage1_code(h: int, n_workers: int, points) -> EntangledPolynomialCode:
    return EntangledPolynomialCode(h, 1, h, n_workers, points)


def operands(h: int, rng: np.random.Generator, rows: int = 2, cols: int = 3, d: int = 2):
    """A (N x M) and B (N x d) whose N divides into 2h (circle) and h (real) blocks."""
    n = 2 * h * rows
    return rng.standard_normal((n, h * cols)), rng.standard_normal((n, d))


# -- 1. condition numbers ----------------------------------------------------------------------
def section_conditioning() -> str:
    rows = []
    for w, k in COND_PAIRS:
        n_sub = math.comb(w, k)
        how = f"all {n_sub}" if n_sub <= EXHAUSTIVE_LIMIT else f"{w} runs + 200 random"
        circle = worst_case_condition_number(w, k)
        real = worst_case_condition_number(w, k, "real")
        rows.append([str(w), str(k), str(w - k), how, fmt(circle), fmt(real)])
    return table(["W", "K", "W-K", "subsets", "circle (default)", "real (Chebyshev)"], rows)


# -- 2. measured decoding error of the stage-1 code --------------------------------------------
def section_decoding_error() -> str:
    rows = []
    for h in range(3, 7):
        k = h * h + h - 1
        for spare in SPARES:
            w = k + spare
            rng = np.random.default_rng(1000 * h + spare)
            A, B = operands(h, rng)
            expected = A.T @ B
            subsets, how = test_subsets(w, k, rng)
            row = [str(h), str(k), str(w), str(spare), f"{len(subsets)} ({how})"]
            for points in SCHEMES.values():
                code = stage1_code(h, w, points)
                a, b = code.encode_a(A), code.encode_b(B)
                products = [code.compute(a[i], b[i]) for i in range(w)]
                worst = worst_est = 0.0
                warned = 0
                for subset in subsets:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", NumericalWarning)
                        decoded = code.decode({i: products[i] for i in subset})
                    warned += any(issubclass(c.category, NumericalWarning) for c in caught)
                    worst = max(worst, rel_err(decoded, expected))
                    worst_est = max(worst_est, code.estimated_error(subset))
                row += [f"{fmt(worst)} ({fmt(worst_est)})", f"{warned}/{len(subsets)}"]
            rows.append(row)
    header = ["h", "K", "W", "W-K", "subsets", "circle: err (est.)", "circle: warned"]
    header += ["real: err (est.)", "real: warned"]
    return table(header, rows)


# -- 3. per-worker cost (run in a single-threaded subprocess) ----------------------------------
def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median time of each callable, run in turn so that background load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(values) for key, values in times.items()}


def section_cost(l_size: int, d: int, h: int, repeats: int) -> str:
    rng = np.random.default_rng(7)
    D = rng.standard_normal((l_size, l_size))
    D = (D + D.T) / 2
    B = rng.standard_normal((l_size, d))
    k = h * h + h - 1
    w = k + 3
    expected = D.T @ B
    fns, sizes = {}, {}
    for name, points in SCHEMES.items():
        code = stage1_code(h, w, points)
        a, b = code.encode_a(D, workers=range(k)), code.encode_b(B, workers=range(k))
        results = {i: code.compute(a[i], b[i]) for i in range(k)}
        assert rel_err(code.decode(results), expected) < 1e-10
        fns["compute", name] = lambda code=code, a=a[0], b=b[0]: code.compute(a, b)
        if code.complex:  # the three real GEMMs of Gauss's trick alone, without the additions
            s0, s1 = a[0][0] + a[0][1], b[0][0] + b[0][1]
            fns["gemms", name] = lambda a=a[0], b=b[0], s0=s0, s1=s1: (
                a[0].T @ b[0],
                a[1].T @ b[1],
                s0.T @ s1,
            )
        else:
            fns["gemms", name] = lambda a=a[0], b=b[0]: a.T @ b
        # A new set of workers needs a decoding plan (SVD + inverse rows), cached afterwards.
        fns["plan", name] = lambda points=points, workers=list(results): stage1_code(
            h, w, points
        ).estimated_error(workers)
        fns["decode", name] = lambda code=code, res=results: code.decode(res)
        als = ALSCode(h, w, points)
        data = als.encode_data(D, workers=[0])[0]
        factor = als.encode_factor(B)[0]
        e_shard = als.encode_e(expected)[0]
        sizes[name] = {
            "data shard D~(x_w) (stored once)": data.size,
            "factor shard (upload per iteration)": factor.size,
            "f_R(E, x_w) (upload, stage 3)": e_shard.size,
            "stage-1 result (download)": als.stage1(data, factor).size,
            "stage-2/3 result (download)": als.stage2(factor).size,
            "stage-4 result (download)": als.stage4(e_shard, np.eye(d)).size,
        }
    med = interleaved_medians(fns, repeats)
    times = {
        name: (med["compute", name], med["plan", name], med["decode", name], med["gemms", name])
        for name in SCHEMES
    }
    c, r = times["circle"], times["real"]
    macs_real = (l_size // h) ** 2 * d
    macs_circle = 3 * (l_size // h) * (l_size // (2 * h)) * d
    out = [
        f"l = {l_size}, d = {d}, h = {h} (K = {k}), single-threaded BLAS, "
        f"median of {repeats} interleaved repeats.",
        "",
        table(
            ["", "circle (default)", "real", "circle / real"],
            [
                [
                    "multiply-adds per worker (stage 1)",
                    f"{macs_circle:.3g}",
                    f"{macs_real:.3g}",
                    f"{macs_circle / macs_real:.2f}",
                ],
                [
                    "worker: `code.compute` (ms)",
                    f"{1e3 * c[0]:.1f}",
                    f"{1e3 * r[0]:.1f}",
                    f"{c[0] / r[0]:.2f}",
                ],
                [
                    "worker: its GEMMs alone, 3 (circle) / 1 (real) (ms)",
                    f"{1e3 * c[3]:.1f}",
                    f"{1e3 * r[3]:.1f}",
                    f"{c[3] / r[3]:.2f}",
                ],
                [
                    f"master: plan for a new set of {k} workers (ms)",
                    f"{1e3 * c[1]:.2f}",
                    f"{1e3 * r[1]:.2f}",
                    f"{c[1] / r[1]:.2f}",
                ],
                [
                    f"master: decode of {k} results, plan cached (ms)",
                    f"{1e3 * c[2]:.2f}",
                    f"{1e3 * r[2]:.2f}",
                    f"{c[2] / r[2]:.2f}",
                ],
            ],
        ),
        "",
        table(
            ["float64 values per worker", "circle (default)", "real", "circle / real"],
            [
                [
                    key,
                    str(sizes["circle"][key]),
                    str(sizes["real"][key]),
                    f"{sizes['circle'][key] / sizes['real'][key]:.2f}",
                ]
                for key in sizes["real"]
            ],
        ),
    ]
    return "\n".join(out)


def run_cost_subprocess(l_size: int, d: int, h: int, repeats: int) -> str:
    env = dict(os.environ, **{name: "1" for name in SINGLE_THREAD})
    cmd = [sys.executable, os.path.abspath(__file__), "--cost-only"]
    cmd += ["--l", str(l_size), "--d", str(d), "--h", str(h), "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.rstrip()


# -- 4. inverse rows vs LU vs least squares at high condition numbers --------------------------
def decode_by_hand(code: EntangledPolynomialCode, results: dict, method: str) -> np.ndarray:
    """Stage-1 decode on the circle, by inverse rows or by an LU solve (for comparison)."""
    h = code.r
    workers = sorted(results)
    xs = evaluation_points(code.n_workers)[workers]
    exponents = np.arange(-(h - 1), h * h)  # Laurent exponents -(r-1) .. pqr-1
    wanted = np.arange(h) * h + (h - 1)  # coefficient of z^(i r) for block i
    matrix = vandermonde(xs, exponents)
    values = np.stack([results[i][0] + 1j * results[i][1] for i in workers])
    flat = values.reshape(len(workers), -1)
    if method == "inverse rows":
        coefficients = np.linalg.inv(matrix)[wanted] @ flat
    else:
        coefficients = scipy.linalg.lu_solve(scipy.linalg.lu_factor(matrix), flat)[wanted]
    blocks = coefficients.real.reshape((h,) + values.shape[1:])
    return np.concatenate(list(blocks), axis=0)


def section_methods() -> str:
    rows = []
    for h, w in [(5, 40), (6, 50), (5, 50), (6, 60)]:
        k = h * h + h - 1
        rng = np.random.default_rng(h * 100 + w)
        A, B = operands(h, rng, rows=4, cols=5, d=3)
        expected = A.T @ B
        code = stage1_code(h, w, None)
        a, b = code.encode_a(A), code.encode_b(B)
        products = [code.compute(a[i], b[i]) for i in range(w)]
        errs = {"inverse rows": 0.0, "lu": 0.0, "decode": 0.0, "ls1": 0.0, "ls3": 0.0}
        conds = {0: 0.0, 1: 0.0, 3: 0.0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)
            for start in range(w):
                run = [(start + i) % w for i in range(k)]
                res = {i: products[i] for i in run}
                for extra in conds:
                    more = [(start + i) % w for i in range(k + extra)]
                    conds[extra] = max(conds[extra], code.estimated_error(more) / _EPS)
                for method in ("inverse rows", "lu"):
                    err = rel_err(decode_by_hand(code, res, method), expected)
                    errs[method] = max(errs[method], err)
                decoded = code.decode(res)
                errs["decode"] = max(errs["decode"], rel_err(decoded, expected))
                # the by-hand LU is what code.decode does above cond 1e5 (a check of the script)
                assert rel_err(decode_by_hand(code, res, "lu"), decoded) < 1e-12
                for extra, key in ((1, "ls1"), (3, "ls3")):
                    more = {(start + i) % w: products[(start + i) % w] for i in range(k + extra)}
                    errs[key] = max(errs[key], rel_err(code.decode(more), expected))
        rows.append(
            [str(h), str(w), str(k), str(w - k), " / ".join(fmt(c) for c in conds.values())]
            + [fmt(conds[0] * _EPS)]
            + [fmt(errs[key]) for key in ("inverse rows", "lu", "decode", "ls1", "ls3")]
        )
    header = [
        "h",
        "W",
        "K",
        "W-K",
        "cond: K / K+1 / K+3",
        "est. error",
        "inverse rows + GEMM",
        "LU solve",
    ]
    header += ["`code.decode`", "least squares, K+1", "least squares, K+3"]
    return table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l", type=int, default=3000, help="side of D for the timing")
    parser.add_argument("--d", type=int, default=64, help="columns of B for the timing")
    parser.add_argument("--h", type=int, default=3, help="h for the timing")
    parser.add_argument("--repeats", type=int, default=51, help="timing repeats (median)")
    parser.add_argument("--cost-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cost_only:
        print(section_cost(args.l, args.d, args.h, args.repeats))
        return
    t0 = time.perf_counter()
    sections = [
        ("1. Worst-case condition number of decoding", section_conditioning),
        (
            "2. Worst relative decoding error, stage-1 code (p = r = h, q = 1)",
            section_decoding_error,
        ),
        (
            "3. Per-worker cost of the stage-1 product",
            lambda: run_cost_subprocess(args.l, args.d, args.h, args.repeats),
        ),
        (
            "4. Decoding methods, stage 1 on the circle, worst cyclic run of K answers",
            section_methods,
        ),
    ]
    for title, fn in sections:
        print(f"### {title}\n\n{fn()}\n", flush=True)
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
