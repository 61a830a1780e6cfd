"""Reproduce docs/numerics.md section 6: worker results checked by the code's own redundancy.

Usage::

    python pipelines/checking_table.py

Measures, for the stage-1 code (p = r = h, q = 1, K = h^2 + h - 1) on W = K + 2e + s workers with
K + 2e results in hand (s stragglers: cyclic runs of answering workers, the worst conditioning on
the circle, plus random subsets), both point families:

- false alarms of ``dask_coded_als.coding.checking.locate_wrong_answers`` on honest results and
  the worst honest residual in units of ``epsilon sigma_max |c_fit|``;
- how often 1..e wrong results (random positions and the hardest: highest leverage) are located
  exactly, for dense errors of relative size 1e-6, 1e-3, 1 and for one wrong entry;
- what happens with e + 1 wrong results (raised, or dropped and decoded correctly; never a
  silently wrong decode, which the script asserts);
- the smallest error flagged in every trial (the detection floor), per h, and what the check
  says about errors near it (passed, raised, located, or an honest worker named);
- the cost against the decode at K = 11, e = 2, results of 2 x 500 x 200 (single-threaded BLAS,
  in a subprocess).

Everything is seeded; about 40 s on 2 cores.
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

from dask_coded_als.coding.checking import (
    SAFETY_FACTOR,
    UncorrectableError,
    check_consistency,
    locate_wrong_answers,
)
from dask_coded_als.coding.codes import ALSCode, NumericalWarning

SCHEMES = {"circle": None, "real": "real"}
#: Real points decode at all (estimated error below 1e-6) up to h = 4 only; see section 2.
H_RANGE = {"circle": range(2, 7), "real": range(2, 5)}
SPARES = (0, 1, 3)
ERRORS = [("dense", 1e-6), ("dense", 1e-3), ("dense", 1.0), ("entry", 1e-3), ("entry", 1.0)]
FLOOR_SIZES = [10.0**k for k in np.arange(-15, -3.5, 0.5)]
NEAR_FLOOR_DATA = 3  # data sets per row of the near-floor table
_EPS = float(np.finfo(np.float64).eps)
SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def fmt(x: float) -> str:
    return f"{x:.1e}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x - y) / np.linalg.norm(y))


def stage1(h: int, n_workers: int, points, seed: int, per: int = 40, d: int = 6):
    """Stage-1 code, every worker's result and the truth D @ B (numpy), for a ratings-like D."""
    rng = np.random.default_rng(seed)
    als = ALSCode(h, n_workers, points)
    size = als.block_multiple * per
    x = rng.random((30, size)) * (rng.random((30, size)) < 0.3)
    D = x.T @ x + np.diag(rng.random(size))
    B = rng.standard_normal((size, d))
    data, factor = als.encode_data(D), als.encode_factor(B)
    return als.product_code, [als.stage1(data[w], factor[w]) for w in range(n_workers)], D @ B


def leverage_order(code, workers: list[int]) -> list[int]:
    """Workers by decreasing leverage in the fit: errors there are the least visible."""
    matrix = code.points[workers, None] ** code.product_exponents[None, :]
    basis = np.linalg.svd(matrix, full_matrices=False)[0]
    return [workers[i] for i in np.argsort(-np.sum(np.abs(basis) ** 2, axis=1), kind="stable")]


def corrupt(result: np.ndarray, kind: str, size: float, rng) -> np.ndarray:
    """Dense error of relative Frobenius size ``size``, or one entry moved by ``size`` x RMS."""
    out = result.copy()
    if kind == "dense":
        noise = rng.standard_normal(out.shape)
        return out + size * np.linalg.norm(out) / np.linalg.norm(noise) * noise
    out[tuple(int(rng.integers(n)) for n in out.shape)] += size * np.sqrt(np.mean(out**2))
    return out


def answer_sets(n_workers: int, n: int, rng, n_runs: int, n_random: int) -> list[list[int]]:
    """All workers when n = W; else n_runs cyclic runs (evenly spaced starts) and random sets."""
    if n == n_workers:
        return [list(range(n_workers))]
    starts = np.unique(np.linspace(0, n_workers, n_runs, endpoint=False).astype(int))
    out = [sorted((int(s) + i) % n_workers for i in range(n)) for s in starts]
    out += [sorted(rng.choice(n_workers, n, replace=False).tolist()) for _ in range(n_random)]
    return out


def locate(code, subset, e, seed):
    try:
        return locate_wrong_answers(code, subset, e, seed=seed)
    except UncorrectableError:
        return None


# -- 6.1 / 6.2: false alarms and detection, per (points, h, e), over s in SPARES ----------------
def section_rates() -> tuple[str, str]:
    honest_rows, detect_rows = [], []
    for name, points in SCHEMES.items():
        for h in H_RANGE[name]:
            k = h * h + h - 1
            for e in (1, 2):
                alarms = honest = 0
                worst_ratio = worst_cond = 0.0
                located = {err: [0, 0] for err in ERRORS}
                beyond = {"raised": 0, "dropped, decode correct": 0, "trials": 0}
                missed = {"raised": 0, "passed": 0, "other set": 0}
                for s in SPARES:
                    n_workers, n = k + 2 * e + s, k + 2 * e
                    seed = 1000 * h + 100 * e + 10 * s + (name == "real")
                    rng = np.random.default_rng(seed)
                    code, results, expected = stage1(h, n_workers, points, seed)
                    # honest results: every cyclic run and 4 random sets, 3 probe seeds each
                    for workers in answer_sets(n_workers, n, rng, n_workers, 4):
                        worst_cond = max(worst_cond, code.estimated_error(workers) / _EPS)
                        for probe_seed in range(3 if s else 30):
                            subset = {w: results[w] for w in workers}
                            found = locate(code, subset, e, probe_seed)
                            honest += 1
                            alarms += found != frozenset()
                            check = check_consistency(code, subset, seed=probe_seed)
                            worst_ratio = max(worst_ratio, check.residual / check.tolerance)
                    # wrong results: 4 runs + 2 random sets (or 6 probe seeds when s = 0)
                    wrong_sets = answer_sets(n_workers, n, rng, 4, 2) * (1 if s else 6)
                    for t, workers in enumerate(wrong_sets):
                        order = leverage_order(code, workers)
                        for m in range(1, e + 1):
                            for how in ("random", "hardest"):
                                wrong = (
                                    order[:m]
                                    if how == "hardest"
                                    else sorted(rng.choice(workers, m, replace=False).tolist())
                                )
                                for kind, size in ERRORS:
                                    subset = {w: results[w] for w in workers}
                                    for w in wrong:
                                        subset[w] = corrupt(results[w], kind, size, rng)
                                    found = locate(code, subset, e, t)
                                    located[kind, size][0] += found == frozenset(wrong)
                                    located[kind, size][1] += 1
                                    if found is None:
                                        missed["raised"] += 1
                                    elif not found:
                                        missed["passed"] += 1
                                    elif found != frozenset(wrong):
                                        missed["other set"] += 1
                        # e + 1 wrong results, random positions, dense errors of every size
                        for kind, size in ERRORS[:3]:
                            wrong = rng.choice(workers, e + 1, replace=False).tolist()
                            subset = {w: results[w] for w in workers}
                            for w in wrong:
                                subset[w] = corrupt(results[w], kind, size, rng)
                            found = locate(code, subset, e, t)
                            beyond["trials"] += 1
                            if found is None:
                                beyond["raised"] += 1
                                continue
                            good = {w: y for w, y in subset.items() if w not in found}
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore", NumericalWarning)
                                err = rel_err(code.decode(good), expected)
                                limit = 100 * code.estimated_error(sorted(good)) + 1e-14
                            assert err <= limit, ("silently wrong decode", name, h, e, s, wrong)
                            beyond["dropped, decode correct"] += 1
                honest_rows.append(
                    [name, str(h), str(k), str(e), fmt(worst_cond), f"{alarms}/{honest}"]
                    + [f"{SAFETY_FACTOR * worst_ratio:.1f}"]
                )
                detect_rows.append(
                    [name, str(h), str(e)]
                    + [f"{ok}/{total}" for ok, total in located.values()]
                    + [" / ".join(str(count) for count in missed.values())]
                    + [f"{beyond['raised']}/{beyond['trials']}"]
                    + [str(beyond["dropped, decode correct"]), "0"]
                )
    honest_header = ["points", "h", "K", "e", "worst cond", "false alarms", "worst honest ratio"]
    detect_header = ["points", "h", "e"]
    detect_header += [f"{kind} {size:g}" for kind, size in ERRORS]
    detect_header += ["not located: raised / passed / other set"]
    detect_header += ["e+1 wrong: raised", "e+1: dropped, decode correct", "silently wrong"]
    return table(honest_header, honest_rows), table(detect_header, detect_rows)


# -- 6.3: detection floor ----------------------------------------------------------------------
def section_floor() -> str:
    rows = []
    for name, points in SCHEMES.items():
        for h in H_RANGE[name]:
            k = h * h + h - 1
            e, s = 1, 3
            n_workers, n = k + 2 * e + s, k + 2 * e
            seed = 77 * h + (name == "real")
            rng = np.random.default_rng(seed)
            code, results, expected = stage1(h, n_workers, points, seed)
            sets = answer_sets(n_workers, n, rng, 6, 2)
            cond = max(code.estimated_error(w) / _EPS for w in sets)
            flagged_all = located_all = never = None
            honest_err = passed_err = 0.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NumericalWarning)
                for workers in sets:
                    subset = {w: results[w] for w in workers}
                    honest_err = max(honest_err, rel_err(code.decode(subset), expected))
                for size in FLOOR_SIZES:
                    flagged = exact = trials = 0
                    for t, workers in enumerate(sets):
                        order = leverage_order(code, workers)
                        for wrong in (order[0], int(rng.choice(workers))):
                            subset = {w: results[w] for w in workers}
                            subset[wrong] = corrupt(results[wrong], "dense", size, rng)
                            found = locate(code, subset, e, t)
                            trials += 1
                            flagged += found != frozenset()
                            exact += found == {wrong}
                            if found is not None:  # what a passed check lets through
                                kept = {w: y for w, y in subset.items() if w not in found}
                                passed_err = max(passed_err, rel_err(code.decode(kept), expected))
                    if flagged == 0:
                        never = size
                    if flagged == trials and flagged_all is None:
                        flagged_all = size
                    if exact == trials and located_all is None:
                        located_all = size
            rows.append(
                [name, str(h), str(k), str(n_workers), fmt(cond)]
                + [fmt(SAFETY_FACTOR * _EPS * cond)]
                + [fmt(never) if never else "-", fmt(flagged_all), fmt(located_all)]
                + [fmt(honest_err), fmt(passed_err)]
            )
    header = ["points", "h", "K", "W", "worst cond", "SAFETY eps cond"]
    header += ["largest never flagged", "smallest always flagged", "smallest always located"]
    header += ["decode error, honest", "decode error after a passed check"]
    return table(header, rows)


def section_near_floor() -> str:
    """Outcomes of 1..e wrong results of equal size, over the whole range of FLOOR_SIZES."""
    rows = []
    for name, points in SCHEMES.items():
        for h in H_RANGE[name]:
            k = h * h + h - 1
            for e in (1, 2):
                s = 3
                n_workers, n = k + 2 * e + s, k + 2 * e
                counts = dict.fromkeys(["exact", "part", "passed", "raised", "other"], 0)
                for rep in range(NEAR_FLOOR_DATA):
                    seed = 7 * h + e + (name == "real") + 1000 * rep
                    rng = np.random.default_rng(seed)
                    code, results, _ = stage1(h, n_workers, points, seed)
                    sets = answer_sets(n_workers, n, rng, 4, 2)
                    count_outcomes(code, results, sets, e, rng, counts)
                rows.append([name, str(h), str(e), str(sum(counts.values()))])
                rows[-1] += [str(count) for count in counts.values()]
    header = ["points", "h", "e", "trials", "exactly located", "some of them located"]
    header += ["passed", "raised", "an honest worker named"]
    return table(header, rows)


def count_outcomes(code, results, sets, e, rng, counts) -> None:
    """Add the outcomes of 1..e wrong results (hardest and random positions) at every size."""
    for t, workers in enumerate(sets):
        order = leverage_order(code, workers)
        for size in FLOOR_SIZES:
            for m in range(1, e + 1):
                for wrong in (order[:m], rng.choice(workers, m, replace=False)):
                    wrong = frozenset(int(w) for w in wrong)
                    subset = {w: results[w] for w in workers}
                    for w in wrong:
                        subset[w] = corrupt(results[w], "dense", size, rng)
                    found = locate(code, subset, e, t)
                    if found is None:
                        counts["raised"] += 1
                    elif found == wrong:
                        counts["exact"] += 1
                    elif not found:
                        counts["passed"] += 1
                    elif found < wrong:
                        counts["part"] += 1
                    else:
                        counts["other"] += 1


def section_contraction() -> str:
    """Worst honest ratio as the workers' products get longer (circle, K + 1..4 results)."""
    rows = []
    for h, per in [(2, 40), (2, 250), (2, 1000), (3, 500)]:
        k = h * h + h - 1
        n_workers = k + 5
        code, results, _ = stage1(h, n_workers, None, 3, per=per, d=16)
        rng = np.random.default_rng(per)
        worst = 0.0
        for extra in (1, 2, 4):
            for workers in answer_sets(n_workers, k + extra, rng, n_workers, 2):
                for probe_seed in range(2):
                    subset = {w: results[w] for w in workers}
                    check = check_consistency(code, subset, seed=probe_seed)
                    worst = max(worst, check.residual / check.tolerance)
        rows.append([str(h), str(k), str(per), f"{SAFETY_FACTOR * worst:.1f}"])
    return table(["h", "K", "contraction length l/(2h)", "worst honest ratio"], rows)


# -- 6.4: cost (single-threaded subprocess) ----------------------------------------------------
def interleaved_medians(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()
    times: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(values) for key, values in times.items()}


def section_cost(repeats: int) -> str:
    h, e = 3, 2
    k = h * h + h - 1
    n_workers = k + 2 * e
    code, results, expected = stage1(h, n_workers, None, 5, per=250, d=200)
    results = dict(enumerate(results))
    assert results[0].shape == (2, 500, 200)
    rng = np.random.default_rng(5)
    one = dict(results)
    one[4] = corrupt(results[4], "dense", 1e-6, rng)
    two = dict(one)
    two[9] = corrupt(results[9], "entry", 1.0, rng)
    first_k = {w: results[w] for w in range(k)}
    assert locate_wrong_answers(code, results, e) == frozenset()
    assert locate_wrong_answers(code, two, e) == {4, 9}
    fns = {
        f"decode from {k} results": lambda: code.decode(first_k),
        f"decode from {n_workers} results (least squares)": lambda: code.decode(results),
        "check, nothing wrong": lambda: locate_wrong_answers(code, results, e),
        "check, 1 wrong located": lambda: locate_wrong_answers(code, one, e),
        "check, 2 wrong located": lambda: locate_wrong_answers(code, two, e),
    }
    med = interleaved_medians(fns, repeats)
    rows = [[key, f"{1e3 * value:.2f}"] for key, value in med.items()]
    mb = n_workers * results[0].nbytes / 2**20
    head = (
        f"h = {h} (K = {k}), e = {e}, {n_workers} results of shape {results[0].shape} "
        f"({mb:.0f} MiB in all), single-threaded BLAS, median of {repeats} interleaved repeats."
    )
    return head + "\n\n" + table(["operation", "ms"], rows)


def run_cost_subprocess(repeats: int) -> str:
    env = dict(os.environ, **{name: "1" for name in SINGLE_THREAD})
    cmd = [sys.executable, os.path.abspath(__file__), "--cost-only", "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return done.stdout.rstrip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="timing repeats (median)")
    parser.add_argument("--cost-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cost_only:
        print(section_cost(args.repeats))
        return
    t0 = time.perf_counter()
    honest, detect = section_rates()
    print(f"### 6.1 Honest results\n\n{honest}\n", flush=True)
    print(f"### 6.2 Wrong results\n\n{detect}\n", flush=True)
    print(f"### 6.1b Longer products\n\n{section_contraction()}\n", flush=True)
    print(f"### 6.3 Detection floor (e = 1, s = 3)\n\n{section_floor()}\n", flush=True)
    print(f"### 6.3b Near the floor (s = 3)\n\n{section_near_floor()}\n", flush=True)
    print(f"### 6.4 Cost\n\n{run_cost_subprocess(args.repeats)}\n", flush=True)
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
