"""Tests of dask_coded_als.coding.theory against hand-computed values and independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from dask_coded_als.coding.theory import (
    ClusterRates,
    StageTime,
    best_h,
    choose_h,
    choose_partition,
    expected_exchange_time,
    expected_iteration_time,
    expected_order_statistic,
    expected_stage_times,
    feasible_partitions,
    paper_h_star,
    partition_threshold,
    recovery_threshold,
    redundancy,
    threshold_from_redundancy,
)


def brute_force_best_h(k: int) -> int:
    """Largest h with h^2 + h - 1 <= k, by counting up (independent of any closed form)."""
    h = 1
    while (h + 1) ** 2 + (h + 1) - 1 <= k:
        h += 1
    return h


# ---------------------------------------------------------------------------------------------
# recovery_threshold, best_h, paper_h_star


def test_recovery_threshold_values() -> None:
    assert [recovery_threshold(h) for h in range(1, 7)] == [1, 5, 11, 19, 29, 41]
    assert recovery_threshold(np.int64(3)) == 11


@pytest.mark.parametrize("h", [0, -1, 1.5, "2", True, None])
def test_recovery_threshold_rejects_bad_h(h: object) -> None:
    with pytest.raises(ValueError):
        recovery_threshold(h)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n_workers", "n_stragglers", "expected"),
    [
        (28, 0, 4),  # K(4) = 19 <= 28 < K(5) = 29
        (30, 2, 4),
        (29, 0, 5),  # K(5) = 29 exactly
        (10, 0, 2),  # K(3) = 11 > 10
        (13, 3, 2),
        (1, 0, 1),
        (5, 4, 1),
        (4, 0, 1),
        (5, 0, 2),
        (50, 9, 6),  # K(6) = 41 exactly
        (55, 0, 7),  # K(7) = 55 exactly
    ],
)
def test_best_h_hand_values(n_workers: int, n_stragglers: int, expected: int) -> None:
    assert best_h(n_workers, n_stragglers) == expected


@pytest.mark.parametrize(
    ("n_workers", "n_stragglers"),
    [(0, 0), (3, 3), (3, 4), (-1, 0), (5, -1), (10.5, 0), (10, 1.0), ("10", 0), (True, 0)],
)
def test_best_h_rejects_bad_input(n_workers: object, n_stragglers: object) -> None:
    with pytest.raises(ValueError):
        best_h(n_workers, n_stragglers)  # type: ignore[arg-type]


def test_best_h_error_message_explains_infeasibility() -> None:
    with pytest.raises(ValueError, match="at least one worker must respond"):
        best_h(4, 4)


def test_best_h_accepts_numpy_integers() -> None:
    assert best_h(np.int64(30), np.int32(2)) == 4


@pytest.mark.parametrize("n_stragglers", [0, 1, 7])
def test_best_h_is_maximal_for_small_k(n_stragglers: int) -> None:
    for k in range(1, 201):
        n_workers = k + n_stragglers
        h = best_h(n_workers, n_stragglers)
        assert h >= 1
        assert recovery_threshold(h) + n_stragglers <= n_workers
        assert recovery_threshold(h + 1) + n_stragglers > n_workers
        assert h == brute_force_best_h(k)


@given(k=st.integers(1, 10**40), n_stragglers=st.integers(0, 10**6))
def test_best_h_is_maximal_for_huge_inputs(k: int, n_stragglers: int) -> None:
    # Far beyond float precision: only exact integer arithmetic gets these right.
    n_workers = k + n_stragglers
    h = best_h(n_workers, n_stragglers)
    assert (
        recovery_threshold(h) + n_stragglers <= n_workers < recovery_threshold(h + 1) + n_stragglers
    )


def test_correct_closed_form_agrees_on_1_to_100() -> None:
    for k in range(1, 101):
        assert math.floor(math.sqrt(k + 5 / 4) - 1 / 2) == best_h(k, 0) == brute_force_best_h(k)


def test_paper_h_star_is_the_papers_formula() -> None:
    for n_workers in range(1, 120):
        for n_stragglers in {0, min(1, n_workers - 1), n_workers - 1}:
            expected = math.floor(math.sqrt(n_workers + 3 / 4 - n_stragglers))
            assert paper_h_star(n_workers, n_stragglers) == expected


def test_paper_h_star_erratum() -> None:
    wrong = [k for k in range(1, 101) if paper_h_star(k, 0) != best_h(k, 0)]
    assert len(wrong) == 37
    assert 10 in wrong
    assert paper_h_star(10, 0) == 3 and recovery_threshold(3) == 11 > 10
    # Where they differ, the paper's h is one too large and cannot tolerate the stragglers.
    for k in wrong:
        assert paper_h_star(k, 0) == best_h(k, 0) + 1
        assert recovery_threshold(paper_h_star(k, 0)) > k
    with pytest.raises(ValueError):
        paper_h_star(3, 3)


def test_table_one_cells_are_exactly_the_feasible_ones() -> None:
    # The paper's Table I (k = W - s non-stragglers, h = 2..6): cells that carry a time.
    table_one = {
        10: {2},
        20: {2, 3, 4},
        30: {2, 3, 4, 5},
        40: {2, 3, 4, 5},
        50: {2, 3, 4, 5, 6},
    }
    for k, cells in table_one.items():
        feasible = {h for h in range(2, 7) if recovery_threshold(h) <= k}
        assert feasible == cells
        assert max(cells) == best_h(k, 0)
    # The paper's own h* would put an entry at (k=10, h=3), which its table rightly lacks.
    assert paper_h_star(10, 0) not in table_one[10]


# ---------------------------------------------------------------------------------------------
# redundancy and Theorem 1


def test_redundancy_values() -> None:
    assert redundancy(50, 5) == 2.0
    assert redundancy(36, 6) == 1.0
    assert redundancy(7, 1) == 7.0
    with pytest.raises(ValueError):
        redundancy(10, 0)
    with pytest.raises(ValueError):
        redundancy(0, 1)


def test_threshold_from_redundancy_matches_lemma_2_on_a_grid() -> None:
    for n_workers in range(1, 121):
        for h in range(1, 12):
            mu = redundancy(n_workers, h)
            k = threshold_from_redundancy(n_workers, mu)
            assert k == pytest.approx(recovery_threshold(h), rel=1e-12)


@given(n_workers=st.integers(1, 10**6), h=st.integers(1, 1000))
def test_threshold_from_redundancy_matches_lemma_2(n_workers: int, h: int) -> None:
    k = threshold_from_redundancy(n_workers, redundancy(n_workers, h))
    assert k == pytest.approx(recovery_threshold(h), rel=1e-12)


def test_threshold_from_redundancy_hand_value_and_errors() -> None:
    assert threshold_from_redundancy(50, 2.0) == 29.0
    assert threshold_from_redundancy(8, 2.0) == 5.0  # h = 2
    for mu in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            threshold_from_redundancy(10, mu)


# ---------------------------------------------------------------------------------------------
# Royston's approximation


def exact_normal_order_statistic(r: int, n: int) -> float:
    """E of the r-th smallest of n iid standard normals, by integrating x times its density."""
    log_coef = math.lgamma(n + 1) - math.lgamma(r) - math.lgamma(n - r + 1)

    def integrand(x: float) -> float:
        log_density = (
            log_coef
            + (r - 1) * stats.norm.logcdf(x)
            + (n - r) * stats.norm.logsf(x)
            + stats.norm.logpdf(x)
        )
        return x * math.exp(log_density)

    value, _ = integrate.quad(integrand, -math.inf, math.inf, epsabs=1e-11, epsrel=1e-11)
    return value


def test_exact_oracle_matches_closed_forms() -> None:
    # Known values: E max of 2 = 1/sqrt(pi), E max of 3 = 3/(2 sqrt(pi)), medians are 0.
    assert exact_normal_order_statistic(2, 2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)
    assert exact_normal_order_statistic(3, 3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-9)
    assert exact_normal_order_statistic(3, 5) == pytest.approx(0.0, abs=1e-9)


# Measured |Royston - exact| over all 1 <= r <= n <= 100: at most 0.0253 (n = 2), 0.0168 for
# n = 5, and at most 0.0090 once n >= 10 (the extremes r = 1, n of n = 100).
ROYSTON_CASES = [
    (1, 2),
    (2, 2),
    (1, 3),
    (3, 3),
    (4, 4),
    (1, 5),
    (2, 5),
    (1, 10),
    (5, 10),
    (10, 10),
    (19, 28),
    (28, 28),
    (29, 41),
    (41, 41),
    (1, 50),
    (29, 50),
    (50, 50),
    (100, 100),
]


@pytest.mark.parametrize(("r", "n"), ROYSTON_CASES)
def test_royston_against_numerical_integration(r: int, n: int) -> None:
    tolerance = 0.026 if n < 10 else 0.01
    exact = exact_normal_order_statistic(r, n)
    assert abs(expected_order_statistic(r, n) - exact) <= tolerance
    # Location and scale enter affinely.
    shifted = expected_order_statistic(r, n, mean=5.0, std=3.0)
    assert abs(shifted - (5.0 + 3.0 * exact)) <= 3.0 * tolerance


def test_royston_max_error_is_small_and_attained_at_n_2() -> None:
    errors = {
        (r, n): abs(expected_order_statistic(r, n) - exact_normal_order_statistic(r, n))
        for r, n in ROYSTON_CASES
    }
    worst = max(errors, key=errors.__getitem__)
    assert worst[1] == 2
    assert 0.02 < errors[worst] < 0.026


def test_royston_single_sample_is_the_mean() -> None:
    assert expected_order_statistic(1, 1) == 0.0
    assert expected_order_statistic(1, 1, mean=3.25, std=7.0) == 3.25
    assert expected_order_statistic(1, 1, mean=-2.0, std=1.0, alpha=0.5) == -2.0


def test_royston_with_zero_std_is_the_mean() -> None:
    assert expected_order_statistic(3, 7, mean=1.5, std=0.0) == 1.5


@given(n=st.integers(1, 500), data=st.data())
def test_royston_is_symmetric_and_increasing(n: int, data: st.DataObject) -> None:
    r = data.draw(st.integers(1, n))
    value = expected_order_statistic(r, n)
    assert value == pytest.approx(-expected_order_statistic(n - r + 1, n), abs=1e-12)
    if r < n:
        assert expected_order_statistic(r + 1, n) > value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"r": 0, "n": 3},
        {"r": 4, "n": 3},
        {"r": 1, "n": 0},
        {"r": 1.5, "n": 3},
        {"r": 1, "n": 3, "std": -1.0},
        {"r": 1, "n": 3, "alpha": 1.0},
        {"r": 1, "n": 3, "alpha": -0.1},
        {"r": 1, "n": 3, "mean": math.nan},
    ],
)
def test_royston_rejects_bad_input(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        expected_order_statistic(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The Appendix-A time model


def test_stage_plan_hand_values() -> None:
    stages = expected_stage_times(3, 20, 4, size=90, n_factors=5, op_mean=2.0, op_std=0.5)
    assert list(stages) == [1, 2, 3, 4]
    assert all(isinstance(stage, StageTime) for stage in stages.values())
    assert [stages[i].n_ops for i in range(1, 5)] == [4500.0, 750.0, 750.0, 750.0]
    assert [stages[i].threshold for i in range(1, 5)] == [11, 5, 5, 3]
    assert stages[1].worker_mean == 9000.0
    assert stages[1].worker_std == pytest.approx(0.5 * math.sqrt(4500))
    # The 11th fastest of 16 non-stragglers, by Royston with alpha = 0.375.
    z = stats.norm.ppf((11 - 0.375) / (16 - 0.75 + 1))
    assert stages[1].expected == pytest.approx(9000.0 + z * 0.5 * math.sqrt(4500), rel=1e-12)
    total = expected_iteration_time(3, 20, 4, size=90, n_factors=5, op_mean=2.0, op_std=0.5)
    assert total == pytest.approx(sum(stage.expected for stage in stages.values()), rel=1e-12)


def test_zero_variance_time_is_the_operation_count() -> None:
    # l^2 d / h^2 + 3 l d^2 / h = 100^2 4 / 4 + 3 * 100 * 16 / 2 = 10000 + 2400
    assert expected_iteration_time(2, 10, 0, 100, 4, 1.0, 0.0) == 12400.0


@pytest.mark.parametrize(
    ("size", "n_factors", "h"), [(100, 4, 2), (1500, 200, 6), (37, 3, 5), (8, 1, 1)]
)
def test_stage_one_std_is_l_sqrt_d_over_h(size: int, n_factors: int, h: int) -> None:
    op_std = 0.3
    stage_one = expected_stage_times(h, 50, 0, size, n_factors, 1.0, op_std)[1]
    assert stage_one.worker_std == pytest.approx(size * math.sqrt(n_factors) / h * op_std)
    papers_eq_46 = math.sqrt(n_factors * size) / h * op_std
    if size > 1:
        # Erratum: eq. 46's sqrt(d n)/h is smaller by a factor sqrt(l).
        assert stage_one.worker_std == pytest.approx(papers_eq_46 * math.sqrt(size))
        assert not math.isclose(stage_one.worker_std, papers_eq_46, rel_tol=0.1)


def test_stage_one_std_scaling_with_size_and_h() -> None:
    def std(size: int, h: int) -> float:
        return expected_stage_times(h, 50, 0, size, 4, 1.0, 1.0)[1].worker_std

    assert std(200, 2) == pytest.approx(2 * std(100, 2))  # eq. 46 would give sqrt(2)
    assert std(100, 4) == pytest.approx(std(100, 2) / 2)


def test_stage_one_std_by_summing_unit_operations() -> None:
    # Independent of the model's algebra: each worker's time is an explicit sum of N unit ops.
    h, size, n_factors, op_mean, op_std = 2, 8, 2, 1.0, 2.0
    n_workers, n_stragglers, trials = 12, 2, 4000
    stages = expected_stage_times(h, n_workers, n_stragglers, size, n_factors, op_mean, op_std)
    stage_one = stages[1]
    n_ops = size * size * n_factors // (h * h)
    live = n_workers - n_stragglers
    rng = np.random.default_rng(20240601)
    worker_times = rng.normal(op_mean, op_std, size=(trials, live, n_ops)).sum(axis=2)
    assert worker_times.std() == pytest.approx(stage_one.worker_std, rel=0.03)
    papers_std = math.sqrt(n_factors * size) / h * op_std
    assert abs(worker_times.std() - papers_std) > 0.5 * papers_std
    kth_fastest = np.sort(worker_times, axis=1)[:, stage_one.threshold - 1]
    assert kth_fastest.mean() == pytest.approx(stage_one.expected, rel=0.02)


def monte_carlo_stage_times(
    h: int,
    n_workers: int,
    n_stragglers: int,
    size: int,
    n_factors: int,
    op_mean: float,
    op_std: float,
    trials: int = 20_000,
    seed: int = 12345,
) -> dict[int, float]:
    """Average time until the K_stage-th fastest of W - s normal workers answers, per stage."""
    rng = np.random.default_rng(seed)
    live = n_workers - n_stragglers
    plan = {
        1: (size**2 * n_factors / h**2, h * h + h - 1),
        2: (size * n_factors**2 / h, 2 * h - 1),
        3: (size * n_factors**2 / h, 2 * h - 1),
        4: (size * n_factors**2 / h, h),
    }
    result = {}
    for stage, (n_ops, k) in plan.items():
        times = rng.normal(n_ops * op_mean, math.sqrt(n_ops) * op_std, size=(trials, live))
        result[stage] = float(np.partition(times, k - 1, axis=1)[:, k - 1].mean())
    return result


MODEL_CASES = [
    # h, W, s, l, d, op_mean, op_std
    (1, 5, 4, 10, 2, 1.0, 1.0),
    (2, 12, 2, 8, 2, 1.0, 2.0),
    (4, 30, 2, 40, 3, 1.0, 3.0),
    (5, 50, 9, 36, 4, 1.0, 5.0),
    (6, 50, 9, 36, 4, 1.0, 5.0),  # K = W - s = 41: the slowest non-straggler
    (3, 100, 0, 30, 2, 1.0, 0.5),
]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_time_model_against_monte_carlo(case: tuple[int, int, int, int, int, float, float]) -> None:
    model = expected_stage_times(*case)
    simulated = monte_carlo_stage_times(*case)
    for stage, expected in model.items():
        assert simulated[stage] == pytest.approx(expected.expected, rel=0.02)
        # In units of a worker's std: Royston's error (< 0.026) plus Monte-Carlo noise.
        gap = (simulated[stage] - expected.expected) / expected.worker_std
        assert abs(gap) < 0.03
    total = expected_iteration_time(*case)
    assert sum(simulated.values()) == pytest.approx(total, rel=0.02)


def test_time_model_rejects_infeasible_h() -> None:
    # K(3) = 11 > 10 = W - s.
    with pytest.raises(ValueError, match="best_h"):
        expected_stage_times(3, 12, 2, 100, 4, 1.0, 0.1)
    with pytest.raises(ValueError):
        expected_iteration_time(6, 40, 0, 100, 4, 1.0, 0.1)  # K(6) = 41
    expected_iteration_time(2, 12, 2, 100, 4, 1.0, 0.1)  # K(2) = 5 is fine


@pytest.mark.parametrize(
    "args",
    [
        (0, 10, 0, 100, 4, 1.0, 0.1),
        (2, 10, 0, 0, 4, 1.0, 0.1),
        (2, 10, 0, 100, 0, 1.0, 0.1),
        (2, 10, 0, 100, 4, 0.0, 0.1),
        (2, 10, 0, 100, 4, 1.0, -0.1),
        (2, 10, 0, 100, 4, math.inf, 0.1),
        (2, 10, 10, 100, 4, 1.0, 0.1),
    ],
)
def test_time_model_rejects_bad_input(args: tuple) -> None:
    with pytest.raises(ValueError):
        expected_iteration_time(*args)


# ---------------------------------------------------------------------------------------------
# choose_h


def brute_force_choose_h(*args: float) -> tuple[int, list[float]]:
    n_workers, n_stragglers = int(args[0]), int(args[1])
    h_max = brute_force_best_h(n_workers - n_stragglers)
    times = [expected_iteration_time(h, *args) for h in range(1, h_max + 1)]
    return int(np.argmin(times)) + 1, times


configs = st.tuples(
    st.integers(1, 120),  # W - s
    st.integers(0, 20),  # s
    st.integers(1, 3000),  # l
    st.integers(1, 300),  # d
    st.floats(1e-3, 1e3),  # op_mean
)


@settings(max_examples=60)
@given(config=configs, cv=st.floats(0.0, 20.0))
def test_choose_h_is_feasible_and_minimizes_the_model(
    config: tuple[int, int, int, int, float], cv: float
) -> None:
    k, n_stragglers, size, n_factors, op_mean = config
    args = (k + n_stragglers, n_stragglers, size, n_factors, op_mean, cv * op_mean)
    h = choose_h(*args)
    assert 1 <= h <= best_h(k + n_stragglers, n_stragglers)
    assert recovery_threshold(h) + n_stragglers <= k + n_stragglers
    _, times = brute_force_choose_h(*args)
    assert times[h - 1] == min(times)


@settings(max_examples=60)
@given(config=configs)
def test_choose_h_is_best_h_when_variance_is_negligible(
    config: tuple[int, int, int, int, float],
) -> None:
    k, n_stragglers, size, n_factors, op_mean = config
    n_workers = k + n_stragglers
    h = choose_h(n_workers, n_stragglers, size, n_factors, op_mean, 1e-9 * op_mean)
    assert h == best_h(n_workers, n_stragglers)


@settings(max_examples=60)
@given(config=configs)
def test_choose_h_is_best_h_under_remark_4_condition(
    config: tuple[int, int, int, int, float],
) -> None:
    # Appendix A, eq. 55: time decreases in h when op_mean l sqrt(d) / (h^3 op_std) >= 8.5975,
    # derived for W - s <= 100; here it holds for every h up to best_h.
    k, n_stragglers, size, n_factors, op_mean = config
    assume(k <= 100)
    n_workers = k + n_stragglers
    h_max = best_h(n_workers, n_stragglers)
    op_std = op_mean * size * math.sqrt(n_factors) / (8.6 * h_max**3)
    assert choose_h(n_workers, n_stragglers, size, n_factors, op_mean, op_std) == h_max


def test_choose_h_hand_configuration() -> None:
    assert choose_h(50, 0, 1500, 200, 1.0, 0.1) == 6
    assert choose_h(1, 0, 10, 2, 1.0, 1.0) == 1


def test_choose_h_below_best_h_when_order_statistic_penalty_dominates() -> None:
    # W - s = 41 = K(6): h = 6 must wait for the slowest of 41 widely spread workers, while
    # h = 5 waits for the 29th; the smaller per-worker task of h = 6 does not make up for it.
    args = (50, 9, 36, 4, 1.0, 5.0)
    assert best_h(50, 9) == 6
    chosen = choose_h(*args)
    expected, times = brute_force_choose_h(*args)
    assert chosen == expected == 5
    assert times[4] < times[5]
    # The simulation agrees that h = 5 is faster than h = 6.
    simulated = {h: sum(monte_carlo_stage_times(h, *args).values()) for h in (5, 6)}
    assert simulated[5] < simulated[6]


# ---- the code family: partitions and the exchange-time model -----------------------------------


def test_partition_threshold_of_the_square_split_is_lemma_2() -> None:
    for h in range(1, 12):
        assert partition_threshold(h, h) == recovery_threshold(h)
    assert partition_threshold(11, 1) == 11  # the MDS row split: K = p


@pytest.mark.parametrize(("n_workers", "n_stragglers"), [(13, 2), (8, 0), (20, 5), (1, 0)])
def test_feasible_partitions_are_exactly_those_that_tolerate_s(n_workers, n_stragglers) -> None:
    k = n_workers - n_stragglers
    brute = {(p, r) for p in range(1, 50) for r in range(1, 50) if p * r + r - 1 <= k}
    assert set(feasible_partitions(n_workers, n_stragglers)) == brute


def test_exchange_time_parts_scale_as_the_model_says() -> None:
    rates = ClusterRates(op_mean=1e-9, op_std=0.0, bandwidth=1e8, latency=0.02)
    base = expected_exchange_time((2, 2), 13, 2, 1200, 64, rates, circle=False)
    wide = expected_exchange_time((4, 2), 13, 2, 1200, 64, rates, circle=False)
    tall = expected_exchange_time((2, 4), 20, 2, 1200, 64, rates, circle=False)
    assert wide.compute == pytest.approx(base.compute / 2)  # work l^2 d / (p r)
    assert wide.upload == pytest.approx(base.upload)  # operand l d / r
    assert tall.upload == pytest.approx(base.upload * 20 / 13 / 2)
    assert base.latency == 0.02 and base.total > base.compute
    circle = expected_exchange_time((2, 2), 13, 2, 1200, 64, rates)
    assert circle.compute == pytest.approx(1.5 * base.compute)  # paired operands
    mds = expected_exchange_time((4, 1), 13, 2, 1200, 64, rates)
    assert mds.compute == pytest.approx(
        expected_exchange_time((4, 1), 13, 2, 1200, 64, rates, circle=False).compute
    )
    shared = ClusterRates(op_mean=1e-9, op_std=0.0, bandwidth=1e8, latency=0.02, concurrency=2)
    assert expected_exchange_time((2, 2), 13, 2, 1200, 64, shared, circle=False).compute == (
        pytest.approx(13 * base.compute / 2)
    )


def test_choose_partition_is_the_model_minimum_and_follows_the_bottleneck() -> None:
    compute_bound = ClusterRates(op_mean=1e-9, op_std=1e-11, bandwidth=1e11, latency=0.01)
    link_bound = ClusterRates(op_mean=1e-12, op_std=0.0, bandwidth=1e6, latency=0.01)
    for rates in (compute_bound, link_bound):
        chosen = choose_partition(13, 2, 1500, 200, rates)
        best = min(
            expected_exchange_time(pr, 13, 2, 1500, 200, rates).total
            for pr in feasible_partitions(13, 2)
        )
        assert expected_exchange_time(chosen, 13, 2, 1500, 200, rates).total == best
    assert choose_partition(13, 2, 1500, 200, compute_bound)[1] == 1
    assert choose_partition(13, 2, 1500, 200, link_bound)[1] > 1
