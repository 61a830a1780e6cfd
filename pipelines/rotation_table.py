"""The numbers of docs/numerics.md section 7, last part: the circle code in real arithmetic.

    python pipelines/rotation_table.py [--size 3000 --factors 64 --repeats 31]

Embedding each point of the unit circle as a 2 x 2 rotation matrix turns the circle code into
a real one (a complex number x acts on pairs of real blocks as [[Re x, -Im x], [Im x, Re x]]).

1. Decoding: the embedded Vandermonde system is the real representation of the complex one, so
   its singular values are those of the complex system, each twice: the same condition number.
   Checked here for the worst contiguous run of K of W = K + 2 workers, h = 2..6.
2. A worker's product at h = 3 (l = size, d = factors), one thread, interleaved medians: the
   real code's product, the circle's (three real GEMMs, Gauss's trick: what the engine does),
   and the embedded one (one real GEMM of the 2 x 2 block matrix: what a real-arithmetic
   rotation embedding of the same code computes).

Seeded; the timing part runs with one BLAS thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from dask_coded_als.coding import theory
from dask_coded_als.coding.codes import ALSCode, worker_product
from dask_coded_als.coding.points import evaluation_points, vandermonde


def embedded(matrix: np.ndarray) -> np.ndarray:
    """The real representation [[Re, -Im], [Im, Re]] of a complex matrix."""
    re, im = matrix.real, matrix.imag
    return np.block([[re, -im], [im, re]])


def conditioning(h: int) -> tuple[int, int, float, float]:
    """(K, W, worst complex condition number, that of its real embedding) over contiguous runs."""
    K = theory.recovery_threshold(h)
    W = K + 2
    points = evaluation_points(W, "circle")
    worst = (0.0, 0.0)
    for start in range(W):
        rows = [(start + i) % W for i in range(K)]
        V = vandermonde(points[rows], range(K))
        worst = max(worst, (np.linalg.cond(V), np.linalg.cond(embedded(V))))
    return K, W, *worst


def products(size: int, factors: int, repeats: int) -> dict[str, float]:
    """Median seconds of one worker's product per form, at h = 3, W = 13."""
    rng = np.random.default_rng(0)
    D = rng.standard_normal((size, size))
    D = D + D.T
    B = rng.standard_normal((size, factors))
    real, circle = ALSCode(3, 13, "real"), ALSCode(3, 13, "circle")
    a_real, b_real = real.encode_data(D, [0])[0], real.encode_operand(B, [0])[0]
    a_circle, b_circle = circle.encode_data(D, [0])[0], circle.encode_operand(B, [0])[0]
    # the same complex operands as one real GEMM of their 2 x 2 block forms
    a_complex = a_circle[0] + 1j * a_circle[1]
    b_complex = b_circle[0] + 1j * b_circle[1]
    a_embedded = embedded(a_complex)
    b_embedded = np.vstack([b_complex.real, b_complex.imag])
    forms = {
        "real points": lambda: worker_product("real", a_real, b_real),
        "circle, 3 real GEMMs (Gauss)": lambda: worker_product("packed", a_circle, b_circle),
        "circle, embedded: 1 real GEMM": lambda: a_embedded.T @ b_embedded,
    }
    # the embedded product is the complex one: [Re; Im] of a^T b, up to the sign of Im
    check = a_embedded.T @ b_embedded
    half = a_complex.shape[1]
    exact = a_complex.T @ np.conj(b_complex)
    assert np.allclose(check[:half] + 1j * check[half:], np.conj(exact), rtol=1e-9, atol=1e-6)
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    with threadpool_limits(1):
        for _ in range(repeats):
            for name, form in forms.items():
                start = time.perf_counter()
                form()
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args(argv)
    print("| h | K | W | worst condition number, circle | its real embedding |")
    print("|---|---|---|---|---|")
    for h in range(2, 7):
        K, W, complex_cond, real_cond = conditioning(h)
        print(f"| {h} | {K} | {W} | {complex_cond:.3g} | {real_cond:.3g} |")
    times = products(args.size, args.factors, args.repeats)
    base = times["real points"]
    print(
        f"\nl = {args.size}, d = {args.factors}, h = 3, W = 13, one thread, median of "
        f"{args.repeats}:\n"
    )
    print("| worker's product | ms | vs real points |")
    print("|---|---|---|")
    for name, value in times.items():
        print(f"| {name} | {1e3 * value:.2f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
