"""The numbers of docs/numerics.md section 7: the code family (p, r) and the default points.

    python pipelines/family_table.py

1. The worst decoding error over every member (p, r) with threshold K = p r + r - 1 <= 41, for
   W = K + spare workers (spare 0..9), with the points the engine takes by default
   (``choose_points``): the worst pattern on the circle is a contiguous run of answering
   workers, and every run is tried (for real points, which the default takes only where they are
   well conditioned, every run and the exhaustive worst case of their condition number bound it).
2. A worker's product per member at W = 13, s = 2 (paper sizes l = 1500, d = 200, and l = 3000,
   d = 64), each point family, single-threaded BLAS, interleaved medians of repeats.

Seeded; the timing part runs in a subprocess with one BLAS thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

from dask_coded_als.coding import theory
from dask_coded_als.coding.codes import ALSCode, NumericalWarning
from dask_coded_als.coding.points import choose_points

SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def members(max_threshold: int) -> list[tuple[int, int]]:
    return [
        (p, r)
        for r in range(1, max_threshold + 1)
        for p in range(1, max_threshold + 1)
        if theory.partition_threshold(p, r) <= max_threshold
    ]


def worst_decode(p: int, r: int, spare: int, rng: np.random.Generator) -> tuple[float, str]:
    """The worst relative error over every contiguous run of K answering workers."""
    K = theory.partition_threshold(p, r)
    W = K + spare
    points = choose_points(W, K, r)
    code = ALSCode((p, r), W, points).product_code
    n = code.contraction_blocks * 2
    A = rng.standard_normal((n, code.output_blocks * 2))
    B = rng.standard_normal((n, 2))
    a, b = code.encode_a(A), code.encode_b(B)
    worst = 0.0
    for start in range(W):
        run = [(start + i) % W for i in range(K)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)
            decoded = code.decode({w: code.compute(a[w], b[w]) for w in run})
        worst = max(worst, rel_err(decoded, A.T @ B))
    return worst, points


def section_family() -> str:
    rng = np.random.default_rng(0)
    rows = []
    spares = (0, 1, 3, 6, 9)
    all_members = members(41)
    for spare in spares:
        results = [(pr, *worst_decode(*pr, spare, rng)) for pr in all_members]
        worst_pr, worst_err, worst_points = max(results, key=lambda x: x[1])
        real = sum(1 for _, _, points in results if points == "real")
        rows.append(
            f"| {spare} | {len(results)} | {real} | {worst_err:.1e} | {worst_pr} "
            f"({worst_points}, K = {theory.partition_threshold(*worst_pr)}) |"
        )
    return "\n".join(
        [
            "| spare workers W - K | members (K <= 41) | of them on real points | worst error "
            "| worst member |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )


def interleaved_medians(fns: dict, repeats: int) -> dict:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def section_products(l_size: int, d: int, repeats: int) -> str:
    rng = np.random.default_rng(1)
    R = rng.standard_normal((l_size, l_size))
    D = R.T @ R
    B = rng.standard_normal((l_size, d))
    fns, info = {}, {}
    for pr in ((3, 3), (5, 2), (11, 1)):
        for points in ("circle", "real"):
            code = ALSCode(pr, 13, points)
            size = code.padded_size(l_size)
            Dp = np.pad(D, ((0, size - l_size), (0, size - l_size)))
            Bp = np.pad(B, ((0, size - l_size), (0, 0)))
            shard = code.encode_data(Dp, [0])[0]
            operand = code.encode_operand(Bp, [0])[0]
            name = f"{pr} {points}"
            fns[name] = lambda c=code, s=shard, o=operand: c.product(s, o)
            info[name] = (shard.size, operand.size, code.product(shard, operand).size)
    medians = interleaved_medians(fns, repeats)
    lines = [
        f"l = {l_size}, d = {d}, W = 13 (K = 11), one thread, median of {repeats}:",
        "",
        "| member | points | product (ms) | vs (3, 3) real | shard values | operand values "
        "| answer values |",
        "|---|---|---|---|---|---|---|",
    ]
    base = medians["(3, 3) real"]
    for name, seconds in medians.items():
        pr, points = name.rsplit(" ", 1)
        shard, operand, answer = info[name]
        lines.append(
            f"| {pr} | {points} | {seconds * 1e3:.2f} | {seconds / base:.2f} | {shard} | "
            f"{operand} | {answer} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", nargs=2, type=int, metavar=("L", "D"))
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args(argv)
    if args.products:
        print(section_products(*args.products, args.repeats))
        return
    start = time.perf_counter()
    print("### The family: worst decoding error of every member, default points\n")
    print(section_family())
    env = {**os.environ, **{name: "1" for name in SINGLE_THREAD}}
    for l_size, d in ((1500, 200), (3000, 64)):
        print()
        out = subprocess.run(
            [sys.executable, __file__, "--products", str(l_size), str(d)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout.strip())
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
