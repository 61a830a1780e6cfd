"""Plots of the experiments (matplotlib, from the optional ``[bench]`` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dask_coded_als.bench.common import METHODS
from dask_coded_als.errors import InputError

__all__ = ["plot_bench_convergence", "plot_bench_iteration", "plot_table1"]


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (imported on first use)."""
    try:
        import matplotlib
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'dask-coded-als[bench]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_table1(path: Path, result: dict) -> None:
    plt = pyplot()
    cells = result["cells"]
    ks = sorted({c["k"] for c in cells})
    cores = result["machine"]["cores"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=False)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(ks), 1)))
    for color, k in zip(colors, ks, strict=True):
        row = sorted((c for c in cells if c["k"] == k), key=lambda c: c["h"])
        h = [c["h"] for c in row]
        axes[0].plot(h, [c["time"] for c in row], "o-", color=color, label=f"k = {k}")
        axes[0].plot(h, [c["shared_estimate"] for c in row], ":", color=color)
        axes[1].plot(h, [c["compute"] for c in row], "o-", color=color, label=f"k = {k}")
        axes[2].plot(h, [c["model"] for c in row], "o--", color=color, label=f"k = {k}")
        paper = [(c["h"], c["paper"]) for c in row if c["paper"] is not None]
        if paper:
            axes[2].plot(*zip(*paper, strict=True), "x:", color=color, alpha=0.6)
    calibration = result["calibration"]
    hs = sorted(int(h) for h in calibration)
    axes[1].plot(
        hs, [calibration[str(h)]["median"] for h in hs], "ks-", label="task alone (1 core)"
    )
    widest = sorted((c for c in cells if c["k"] == ks[-1]), key=lambda c: c["h"])
    axes[1].plot(
        [c["h"] for c in widest],
        [c["model_stage1"] for c in widest],
        "--",
        color="grey",
        label=f"model, stage 1 (k = {ks[-1]})",
    )
    axes[0].set_title(f"master: iteration (dotted: total work / {cores} cores)")
    axes[1].set_title("stage-1 task: in the cluster (lines) and alone")
    axes[2].set_title("iteration: Appendix-A model (x: paper's Table I)")
    for ax in axes:
        ax.set_xlabel("h")
        ax.set_ylabel("seconds")
        ax.set_yscale("log")
        ax.set_xticks(sorted({c["h"] for c in cells}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Table I: m = {result['config']['m']}, n = {result['config']['n']}, "
        f"d = {result['config']['d']}, W = k + {result['config']['n_stragglers']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bench_iteration(path: Path, result: dict) -> None:
    plt = pyplot()
    models = list(result["config"]["straggler_models"])
    runs = {(r["straggler_model"], r["method"]): r for r in result["runs"]}
    width = 0.8 / len(METHODS)
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, method in enumerate(METHODS):
        values, low, high = [], [], []
        for m in models:
            run = runs.get((m, method))
            value = run["time_per_iteration"] if run else np.nan
            spread = [r["time_per_iteration"] for r in (run or {}).get("repeats", [])] or [value]
            values.append(value)
            low.append(value - min(spread))
            high.append(max(spread) - value)
        ax.bar(
            x + (i - (len(METHODS) - 1) / 2) * width,
            values,
            width,
            yerr=[low, high],
            capsize=3,
            label=method,
        )
    ax.set_xticks(x, models)
    ax.set_ylabel("median seconds per iteration (bars: min-max of repeats)")
    cfg = result["config"]
    ax.set_title(
        f"W = {cfg['n_workers']}, h = {cfg['h']}, s = {cfg['n_stragglers']}, "
        f"delay {cfg['straggler_delay']:g} s, m = {cfg['m']}, n = {cfg['n']}, d = {cfg['d']}"
    )
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bench_convergence(path: Path, result: dict) -> None:
    plt = pyplot()
    models = list(result["config"]["straggler_models"])
    target = result["config"]["target_gap"]
    floor = 1e-16
    n_cols = 2
    n_rows = -(-len(models) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(11, 4 * n_rows), squeeze=False)
    for ax, model in zip(axes.flat, models, strict=False):
        for run in (r for r in result["runs"] if r["straggler_model"] == model):
            t = np.cumsum(run["round_times"])
            gap = np.maximum(np.asarray(run["gaps"], dtype=float), floor)
            ax.plot(t, gap, "o-", ms=3, label=run["method"])
        svd = [r for r in result["svd_compressed"]["runs"] if r["straggler_model"] == model]
        if model == "none":
            svd = result["svd_compressed"]["search"][:-1] + svd
        if svd:
            ax.plot(
                [r["seconds"] for r in svd],
                [max(r["gap"], floor) for r in svd],
                "k*",
                ms=9,
                label="svd_compressed"
                + (" (q = 0, 1, ...)" if len(svd) > 1 else f" (q = {svd[0]['n_power_iter']})"),
            )
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("relative objective gap")
        ax.set_title(f"stragglers: {model}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
