"""The numbers of docs/numerics.md section 8: float32 shards, operands and products.

    python pipelines/dtype_table.py [--size 600 --factors 8 --iterations 200]

For h = 2..6 at W = K + 2 with float64's default points (``choose_points``: real at h = 2, 3)
and the circle (float32's default everywhere), the fast
protocol is run here in numpy exactly as the workers and the master run it: shards built by
``ALSCode.data_shard`` in the given dtype, operands cast to it, products by ``worker_product``,
decoding and the d x d algebra in float64. The answering workers are the worst contiguous run
of K (largest condition number). Reported per h and dtype:

1. the relative error of the decoded E = D B in the first iteration against numpy's float64
   product;
2. the relative gap of the final objective ||R - U V^T||^2 to the optimum of the truncated SVD
   (scipy), after the given number of iterations (unregularized ALS converges to it);
3. a worker's product time in float32 against float64 at l = 3000, d = 64 (one BLAS thread,
   interleaved medians), and the shard's bytes.

R is a seeded low-rank-plus-noise matrix of shape (2 size, size). Runs in about a minute.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from scipy.sparse.linalg import svds

from dask_coded_als import als
from dask_coded_als.coding import theory
from dask_coded_als.coding.codes import ALSCode, worker_product
from dask_coded_als.coding.points import choose_points

SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
DTYPES = ("float64", "float32")


def code_for(h: int, points: str | None = None) -> tuple[ALSCode, list[int]]:
    """The code at W = K + 2 (default: float64's default points) and its worst contiguous run
    of K answering workers."""
    K = theory.recovery_threshold(h)
    W = K + 2
    code = ALSCode(h, W, points or choose_points(W, K, h))
    runs = [sorted((start + i) % W for i in range(K)) for start in range(W)]
    worst = max(runs, key=lambda run: code.product_code.estimated_error(run, eps=1.0))
    return code, worst


def coded_als(
    R: np.ndarray, d: int, code: ALSCode, workers: list[int], dtype: str, iterations: int
) -> tuple[float, float]:
    """(decoding error of the first E, final objective) of the fast protocol in ``dtype``."""
    D = R.T @ R
    size = D.shape[0]
    padded = code.padded_size(size)
    shards = {w: code.data_shard(D, w, dtype) for w in workers}
    kind = code.product_code.product_kind
    B = als.initial_factor(size, d, seed=0)
    first_error = None
    for _ in range(iterations):
        operand = code.encode_operand(np.pad(B, ((0, padded - size), (0, 0))), workers)
        answers = {
            w: worker_product(kind, shards[w], o.astype(dtype))
            for w, o in zip(workers, operand, strict=True)
        }
        E = code.decode_stage1(answers)[:size]
        if first_error is None:
            truth = D @ B
            first_error = float(np.linalg.norm(E - truth) / np.linalg.norm(truth))
        B = E @ als.update_matrix(B.T @ B, B.T @ E)
    U, V = als.factors_from_b(R, B, transposed=False)
    return first_error, float(np.linalg.norm(R - U @ V.T) ** 2)


def section_accuracy(size: int, d: int, iterations: int) -> str:
    rng = np.random.default_rng(0)
    R = rng.standard_normal((2 * size, d)) @ rng.standard_normal((d, size))
    R += 0.1 * np.linalg.norm(R) / np.sqrt(R.size) * rng.standard_normal(R.shape)
    u, s, vt = svds(R, k=d)
    optimum = float(np.linalg.norm(R - (u * s) @ vt) ** 2)
    lines = [
        f"R: {2 * size} x {size}, rank {d} plus 10% noise; d = {d}, {iterations} iterations; "
        "W = K + 2, worst contiguous run of K answering workers.",
        "",
        "| h | K | W | points | cond | E error float64 | E error float32 | objective gap float64 "
        "| objective gap float32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for h in range(2, 7):
        family = code_for(h)[0]
        for points in ("real", "circle") if not family.complex else ("circle",):
            code, workers = code_for(h, points)
            cond = code.product_code.estimated_error(workers, eps=1.0)
            results = {dtype: coded_als(R, d, code, workers, dtype, iterations) for dtype in DTYPES}
            gaps = {dtype: abs(results[dtype][1] - optimum) / optimum for dtype in DTYPES}
            lines.append(
                f"| {h} | {len(workers)} | {code.n_workers} | {points} "
                f"| {cond:.1e} | {results['float64'][0]:.1e} | {results['float32'][0]:.1e} "
                f"| {gaps['float64']:.1e} | {gaps['float32']:.1e} |"
            )
    return "\n".join(lines)


def section_speed(size: int, d: int, repeats: int) -> str:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((size, size))
    D = X.T @ X
    B = rng.standard_normal((size, d))
    lines = [
        f"l = {size}, d = {d}, one thread, median of {repeats} (interleaved):",
        "",
        "| h | points | float64 (ms) | float32 (ms) | speed-up | shard MiB float64 | float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for h, points in ((2, "real"), (2, "circle"), (3, "real"), (3, "circle"), (4, "circle")):
        code, _ = code_for(h, points)
        padded = code.padded_size(size)
        operand = code.encode_operand(np.pad(B, ((0, padded - size), (0, 0))), [0])[0]
        kind = code.product_code.product_kind
        shards = {dtype: code.data_shard(D, 0, dtype) for dtype in DTYPES}
        operands = {dtype: operand.astype(dtype) for dtype in DTYPES}
        for dtype in DTYPES:  # warm-up
            worker_product(kind, shards[dtype], operands[dtype])
        times: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
        for _ in range(repeats):
            for dtype in DTYPES:
                start = time.perf_counter()
                worker_product(kind, shards[dtype], operands[dtype])
                times[dtype].append(time.perf_counter() - start)
        t64, t32 = (statistics.median(times[dtype]) for dtype in DTYPES)
        lines.append(
            f"| {h} | {points} | {t64 * 1e3:.1f} | {t32 * 1e3:.1f} "
            f"| {t64 / t32:.2f} | {shards['float64'].nbytes / 2**20:.0f} "
            f"| {shards['float32'].nbytes / 2**20:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--factors", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--speed", nargs=2, type=int, metavar=("L", "D"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.speed:
        print(section_speed(*args.speed, args.repeats))
        return
    start = time.perf_counter()
    print("### Accuracy\n")
    print(section_accuracy(args.size, args.factors, args.iterations))
    print("\n### Speed and memory of a worker's product\n")
    env = {**os.environ, **{name: "1" for name in SINGLE_THREAD}}
    out = subprocess.run(
        [sys.executable, __file__, "--speed", "3000", "64"],
        env=env,
        capture_output=True,
        text=True,
    )
    print(out.stdout.strip() if out.returncode == 0 else out.stderr.strip())
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
