"""The report's figures, from the results table, as PNG files: per-seed strip plot, forest plot of
the differences, learning curves and the search phase's parallel coordinates."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnsearch import results, stats  # noqa: E402
from bnsearch.spec import FAILURES  # noqa: E402


def strip_plot(final: pd.DataFrame, arms: list[str], analysis: stats.Analysis, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(arms), 4))
    position = {arm: i for i, arm in enumerate(arms)}
    ok = final.dropna(subset=["value"])
    for _, seed_rows in ok.groupby("seed"):  # one grey line per seed joins its arms
        seed_rows = seed_rows.sort_values("arm", key=lambda s: s.map(position))
        ax.plot(seed_rows["arm"].map(position), seed_rows["value"], color="0.8", lw=0.8, zorder=1)
    for arm in arms:
        values = ok[ok["arm"] == arm]["value"]
        ax.scatter(np.full(len(values), position[arm]), values, s=18, zorder=2)
    for s in analysis.arms:
        x = position[s.arm] + 0.18
        ax.errorbar(x, s.mean, yerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]], fmt="o", color="k", capsize=3, zorder=3)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel(f"final {metric} (points)")
    ax.set_title("Per seed (lines join a seed's arms); mean with 95% CI", fontsize=9)
    return save(fig, path)


def forest_plot(pairs: list[stats.PairResult], path: Path) -> Path:
    """Each comparison's difference with the interval its verdict is decided on (black) and the
    seed-only 95% interval (grey), against the ± SESOI band."""
    fig, ax = plt.subplots(figsize=(6.5, 1 + 0.6 * len(pairs)))
    for i, p in enumerate(pairs):
        ax.fill_betweenx([i - 0.35, i + 0.35], -p.sesoi, p.sesoi, color="tab:green", alpha=0.15, lw=0)
        (low, high), (seed_low, seed_high) = p.decision_ci, p.seed_ci
        ax.plot([seed_low, seed_high], [i + 0.15] * 2, color="0.6", lw=2)
        ax.errorbar(p.difference, i, xerr=[[p.difference - low], [high - p.difference]], fmt="o", color="k", capsize=3)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(range(len(pairs)), [p.label for p in pairs])
    ax.invert_yaxis()
    ax.set_xlabel("difference in points: black, the interval the verdict is decided on;\n"
                  "grey, seed-only 95% CI; green, ± smallest effect of interest", fontsize=8)
    return save(fig, path)


def tuning_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], metric: str, path: Path) -> Path:
    """Expected best score against search trials per arm, ± its sd (Dodge et al. 2019)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ceiling = 100 if metric.endswith("accuracy") else np.inf  # the band is mean ± sd: keep it below 100%
    for arm, (mean, sd) in curves.items():
        k = np.arange(1, len(mean) + 1)
        ax.plot(k, mean, marker="o", ms=3, label=arm)
        ax.fill_between(k, mean - sd, np.minimum(mean + sd, ceiling), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("search trials per arm")
    ax.set_ylabel(f"expected best {metric}")
    ax.legend(fontsize=8)
    return save(fig, path)


def learning_curves(replicate: pd.DataFrame, arms: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "val_accuracy", "validation accuracy (points)"), (axes[1], "loss", "training loss")):
        for arm in arms:
            rows = replicate[(replicate["arm"] == arm)]
            if key not in rows or rows[key].isna().all():
                continue
            scale = 100 if key.endswith("accuracy") else 1
            by_epoch = rows.groupby("epoch")[key].agg(["mean", "std"]) * scale
            ax.plot(by_epoch.index, by_epoch["mean"], label=arm)
            ax.fill_between(by_epoch.index, by_epoch["mean"] - by_epoch["std"].fillna(0),
                            by_epoch["mean"] + by_epoch["std"].fillna(0), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0].legend()
    return save(fig, path)


def parallel_coordinates(last: pd.DataFrame, arms: list[str], metric: str, path: Path) -> Path:
    fig, axes = plt.subplots(len(arms), 1, figsize=(8, 2.4 * len(arms)), squeeze=False)
    for ax, arm in zip(axes[:, 0], arms):
        rows = last[(last["arm"] == arm) & ~last["status"].isin(FAILURES)].dropna(subset=[metric])
        configs = [results.searched_config(r) for _, r in rows.iterrows()]
        names = [k for k in sorted({k for c in configs for k in c}) if len({repr(c.get(k)) for c in configs}) > 1]
        columns = {name: axis_values([c.get(name) for c in configs]) for name in names}
        columns[metric] = axis_values(list(rows[metric]))
        for i, (scaled, low, high) in enumerate(columns.values()):
            ax.text(i, -0.12, low, ha="center", va="top", fontsize=7)
            ax.text(i, 1.04, high, ha="center", va="bottom", fontsize=7)
        matrix = np.array([scaled for scaled, _, _ in columns.values()]).T
        lines = [np.column_stack([np.arange(len(columns)), line]) for line in matrix]  # one artist for all: 10,000 trials draw in a second
        ax.add_collection(LineCollection(lines, colors=plt.cm.viridis(matrix[:, -1]) if len(matrix) else None, alpha=0.8))
        ax.set_xlim(-0.2, len(columns) - 0.8)
        ax.set_xticks(range(len(columns)), list(columns), fontsize=8)
        ax.tick_params(axis="x", pad=12)
        ax.set_ylim(-0.05, 1.05)
        ax.set_yticks([])
        ax.set_title(f"{arm}: one line per search trial that did not fail, colour = {metric} (mean of its last epochs) (yellow best)", fontsize=9, pad=14)
    return save(fig, path)


def axis_values(values: list) -> tuple[list[float], str, str]:
    """Values scaled to [0, 1] (numbers on a log scale when positive over a decade, else
    category ranks), with labels for the bottom and top of the axis."""
    if not values:
        return [], "", ""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and not results.missing(v) for v in values):
        x = np.asarray(values, dtype=float)
        low, high = f"{x.min():.3g}", f"{x.max():.3g}"
        if x.min() > 0 and x.max() / x.min() >= 10:
            x = np.log10(x)
    else:
        order = sorted({repr(v) for v in values})
        x = np.array([order.index(repr(v)) for v in values], dtype=float)
        low, high = order[0], order[-1]
    span = x.max() - x.min()
    return (list((x - x.min()) / span) if span > 0 else [0.5] * len(x)), low, high


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
