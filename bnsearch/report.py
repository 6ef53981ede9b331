"""Tables + plots → ``report.md`` and a self-contained ``report.html``, from the results table.

The report leads with the verdicts, in words, then shows what they rest on: per-arm
estimates over the replicate seeds, the declared comparisons (Holm-corrected), power, the A/A
calibration, BN diagnostics, and the search phase that chose every arm's configuration.
Both files are rendered from one list of blocks, so they always say the same thing.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bnsearch import results, search, stats  # noqa: E402
from bnsearch.spec import FAILURES, Comparison  # noqa: E402

BN_COLUMNS = ("bn_mode_gap", "bn_mean_shift", "bn_var_log_ratio", "bn_stale_stats")
MODE_GAP_WARNING = 0.05  # inference-mode BN losing more than 5 points of accuracy is worth a warning


@dataclass
class Built:
    markdown: Path
    html: Path
    summary: str
    analysis: stats.Analysis | None


def build(table: pd.DataFrame, spec: dict[str, Any], out: str | Path) -> Built:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` under ``out``."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    arms = list(spec["arms"])
    metric = spec.get("report_metric", "test_accuracy")
    comparisons = [Comparison(**c) for c in spec["comparisons"]]
    replicate = table[table["phase"] == "replicate"] if "phase" in table else table.iloc[0:0]
    blocks: list[tuple[str, Any]] = [("h1", f"bnsearch report: {spec['name']}")]
    if spec.get("question"):
        blocks.append(("p", f"**Question:** {spec['question']}"))
    blocks.append(("p", f"Model `{spec['model']}` on `{spec['dataset']}`; arms {', '.join(f'`{a}`' for a in arms)}; "
                        f"{len(table['trial_key'].unique()) if len(table) else 0} trials in MLflow."))
    analysis = None
    lines = []
    if replicate.empty:
        blocks.append(("p", "No replicate results yet: run the sweep with `--phase replicate`, then `bnsearch report`."))
        lines.append("No replicate results yet: nothing to test.")
    else:
        final = results.final_values(table, metric, "replicate")
        analysis = stats.analyze(final, comparisons, metric=metric)
        blocks += _verdicts(analysis, final)
        blocks += _arms(analysis, table, arms, metric, list(spec.get("nuisance", {})))
        blocks += [("img", _strip_plot(final, arms, analysis, metric, out / "plots" / "seeds.png"))]
        blocks += _pairs(analysis, out)
        blocks += [("h2", "Learning curves (replicate phase)"),
                   ("img", _learning_curves(replicate, arms, out / "plots" / "learning_curves.png")),
                   ("p", "Mean over seeds per epoch; the band is ± one standard deviation across seeds.")]
        lines += [f"{p.a} vs {p.b} ({p.kind}): {p.verdict.upper()}. {p.explanation}" for p in analysis.pairs]
        lines += [f"  {s.arm}: {s.mean:.2f} points (95% CI {s.ci_low:.2f} to {s.ci_high:.2f}), n={s.n}, failed {s.n_failed}"
                  for s in analysis.arms]
    blocks += _diagnostics(table)
    blocks += _search(table, arms, spec, out)
    blocks += [("h2", "Reproduce"),
               ("p", f"Seeds: search phase 10000 + trial index; replicate phase "
                     f"{_seed_text(replicate)}, the same for every arm. Every run records its resolved "
                     "configuration (params), library versions and BN conventions (tags); the parent run holds "
                     "`spec.json`, `versions.json` and `results.parquet`.")]
    md = out / "report.md"
    md.write_text(_markdown(blocks, out))
    page = out / "report.html"
    page.write_text(_html(blocks, out, spec["name"]))
    lines += [f"Warning: {w}" for w in _bn_warnings(table)]
    summary = "\n".join([f"\nReport for {spec['name']} ({metric}, accuracy points):", *lines])
    return Built(md, page, summary, analysis)


def _seed_text(replicate: pd.DataFrame) -> str:
    seeds = sorted(int(s) for s in replicate["seed"].dropna().unique()) if len(replicate) else []
    return f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)})" if seeds else "not run yet"


# --- sections -------------------------------------------------------------------------------


def _verdicts(analysis: stats.Analysis, final: pd.DataFrame) -> list:
    items = [f"**{p.a} vs {p.b}** ({p.kind}, smallest effect of interest ±{p.sesoi:g} points): "
             f"**{p.verdict}**. {p.explanation}" for p in analysis.pairs]
    return [("h2", "Verdicts"), ("ul", items),
            ("p", f"Metric: final `{analysis.metric}` at the full epoch budget, in accuracy points, over "
                  f"{final['seed'].nunique()} seeds per arm; α = {analysis.alpha}, Holm-corrected across the "
                  f"{len(analysis.pairs)} declared comparison(s).")]


def _arms(analysis: stats.Analysis, table: pd.DataFrame, arms: list[str], metric: str, nuisance: list[str]) -> list:
    rows = [{
        "arm": s.arm, "n": s.n, "failed": f"{s.n_failed} ({s.failure_rate:.0%})", "mean": f"{s.mean:.2f}",
        "95% CI (BCa)": f"{s.ci_low:.2f} to {s.ci_high:.2f}", "sd": f"{s.sd:.3f}", "median": f"{s.median:.2f}",
        "IQM": f"{s.iqm:.2f}", "min": f"{s.min:.2f}", "max": f"{s.max:.2f}",
        "A/A false positives": f"{analysis.aa[s.arm]:.3f}" if s.arm in analysis.aa else "-",
    } for s in analysis.arms]
    configs = _replicated_configs(table, arms, nuisance)
    return [("h2", f"Per arm: final {metric} over seeds"), ("table", pd.DataFrame(rows)),
            ("p", "A/A false positives: how often the difference test calls two random halves of the same arm's "
                  f"seeds significant (should be ≤ α = {analysis.alpha})."),
            ("h3", "The configuration each arm replicated (its best search trial)"), ("table", configs)]


def _replicated_configs(table: pd.DataFrame, arms: list[str], nuisance: list[str]) -> pd.DataFrame:
    """Each arm's replicated configuration: the tuned nuisances and whatever differs between arms."""
    last = results.last_epochs(table, "replicate")
    columns = [c for c in last.columns if c.startswith("config.") and not c.startswith("config.one_minus_")]
    rows = []
    for arm in arms:
        row = last[last["arm"] == arm].head(1)
        if len(row):
            rows.append({"arm": arm, **{c.removeprefix("config."): _fmt(row.iloc[0][c]) for c in columns}})
    frame = pd.DataFrame(rows)
    varying = [c for c in frame.columns if c == "arm" or c in nuisance or frame[c].nunique(dropna=False) > 1]
    return frame[varying] if len(frame) else frame


def _pairs(analysis: stats.Analysis, out: Path) -> list:
    rows = [{
        "comparison": f"{p.a} − {p.b}", "kind": p.kind, "pairing": "paired by seed" if p.paired else "unpaired",
        "difference": f"{p.difference:+.2f}", "95% CI": f"{p.ci_low:+.2f} to {p.ci_high:+.2f}",
        "test": p.test, "p": _p(p.p_value), "Holm p": _p(p.p_adjusted), p.rank_test: _p(p.rank_p),
        "permutation p": _p(p.permutation_p), "TOST p": _p(p.tost_p),
        "P(A>B)": f"{p.p_superiority:.2f} ({p.p_superiority_ci[0]:.2f}–{p.p_superiority_ci[1]:.2f})",
        "Hedges' g": f"{p.hedges_g:+.2f}", "verdict": p.verdict,
    } for p in analysis.pairs]
    power = [{
        "comparison": f"{p.a} vs {p.b}", "observed sd": f"{p.sd:.3f}", "n per arm": min(p.n_a, p.n_b),
        "min. detectable effect": f"{p.mde:.2f}", "SESOI": f"{p.sesoi:g}", "seeds per arm for SESOI": p.seeds_needed,
    } for p in analysis.pairs]
    return [("h2", "Comparisons"), ("table", pd.DataFrame(rows).fillna("-")),
            ("img", _forest_plot(analysis.pairs, out / "plots" / "differences.png")),
            ("p", "Holm p is the primary test's p (difference: the t-test; equivalence: TOST) corrected across the "
                  "family. P(A>B): the chance that a seed of A beats a seed of B, with a bootstrap 95% CI."),
            ("h2", "Power"), ("table", pd.DataFrame(power)),
            ("p", "Two-sided α, 80% power; the sd is that of the per-seed differences when paired.")]


def _diagnostics(table: pd.DataFrame) -> list:
    present = [c for c in BN_COLUMNS if c in table]
    if not present or table[present].isna().all().all():
        return []
    last = table.sort_values("epoch").groupby("trial_key").tail(1)
    with_bn = last.dropna(subset=present, how="all")
    means = with_bn.groupby(["phase", "arm"])[present].mean().reset_index()
    blocks = [("h2", "BN diagnostics (after the last epoch)"),
              ("table", means.map(lambda v: _fmt(v) if isinstance(v, float) else v)),
              ("p", "`bn_mode_gap`: validation accuracy with batch statistics minus with the moving statistics; "
                    "`bn_mean_shift` / `bn_var_log_ratio`: how far the moving mean / variance sit from the population "
                    "statistics recomputed over the training data (worst layer); `bn_stale_stats`: the moving statistics "
                    "were never updated (BN run in inference mode during training).")]
    blocks += [("p", f"**Warning:** {w}") for w in _bn_warnings(table)]
    return blocks


def _bn_warnings(table: pd.DataFrame) -> list[str]:
    """What the BN diagnostics say a reader must know before trusting a verdict."""
    if "bn_stale_stats" not in table:
        return []
    last = table.sort_values("epoch").groupby("trial_key").tail(1)
    warnings = []
    stale = last[last["bn_stale_stats"] == 1]
    if len(stale):
        warnings.append(f"{len(stale)} trial(s) never updated their BN moving statistics: "
                        + ", ".join(f"{r.phase}/{r.arm}/seed {r.seed}" for r in stale.itertuples()))
    gaps = last[last["phase"] == "replicate"].groupby("arm")["bn_mode_gap"].mean().dropna()
    for arm, gap in gaps[gaps > MODE_GAP_WARNING].items():
        warnings.append(f"in arm {arm}, validation accuracy is {100 * gap:.1f} points higher with batch statistics than "
                        "with the moving statistics used at inference: they lag the weights (too few steps for the BN "
                        "momentum), so this arm's results measure BN bookkeeping as much as the question.")
    return warnings


def _search(table: pd.DataFrame, arms: list[str], spec: dict[str, Any], out: Path) -> list:
    last = results.last_epochs(table, "search")
    if last.empty:
        return []
    metric = spec.get("metric", "val_accuracy")
    counts = last.groupby(["arm", "status"]).size().unstack(fill_value=0).reset_index()
    blocks = [("h2", "Search phase"),
              ("p", f"{len(last)} trials, {int(table[table['phase'] == 'search'].shape[0])} epochs; every arm tuned by its own "
                    f"Optuna study ({spec['budget']['sampler']}) with the same budget, {metric} at each trial's last epoch."),
              ("table", counts)]
    importances = []
    for arm in arms:
        rows = last[(last["arm"] == arm) & ~last["status"].isin(FAILURES)].dropna(subset=[metric])
        configs = [_search_config(r) for _, r in rows.iterrows()]
        for name, value in search.param_importances(configs, list(rows[metric])).items():
            importances.append({"arm": arm, "hyperparameter": name, "importance (fANOVA)": f"{value:.2f}"})
    if importances:
        blocks += [("h3", "Hyperparameter importance"), ("table", pd.DataFrame(importances))]
    blocks += [("h3", "Parallel coordinates"), ("img", _parallel_coordinates(last, arms, metric, out / "plots" / "search.png"))]
    return blocks


def _search_config(row: pd.Series) -> dict[str, Any]:
    config = results.config_of(row)
    for name in [k for k in config if k.startswith("one_minus_")]:  # searched on this scale
        config.pop(name.removeprefix("one_minus_"), None)
    return config


# --- plots ----------------------------------------------------------------------------------


def _strip_plot(final: pd.DataFrame, arms: list[str], analysis: stats.Analysis, metric: str, path: Path) -> Path:
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
    return _save(fig, path)


def _forest_plot(pairs: list[stats.PairResult], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 1 + 0.6 * len(pairs)))
    for i, p in enumerate(pairs):
        ax.fill_betweenx([i - 0.35, i + 0.35], -p.sesoi, p.sesoi, color="tab:green", alpha=0.15, lw=0)
        ax.errorbar(p.difference, i, xerr=[[p.difference - p.ci_low], [p.ci_high - p.difference]], fmt="o", color="k", capsize=3)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(range(len(pairs)), [f"{p.a} − {p.b}" for p in pairs])
    ax.invert_yaxis()
    ax.set_xlabel("difference in points, 95% CI (green: ± smallest effect of interest)")
    return _save(fig, path)


def _learning_curves(replicate: pd.DataFrame, arms: list[str], path: Path) -> Path:
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
    return _save(fig, path)


def _parallel_coordinates(last: pd.DataFrame, arms: list[str], metric: str, path: Path) -> Path:
    fig, axes = plt.subplots(len(arms), 1, figsize=(8, 2.4 * len(arms)), squeeze=False)
    for ax, arm in zip(axes[:, 0], arms):
        rows = last[(last["arm"] == arm) & ~last["status"].isin(FAILURES)].dropna(subset=[metric])
        configs = [_search_config(r) for _, r in rows.iterrows()]
        names = sorted({k for c in configs for k in c if len({repr(x.get(k)) for x in configs}) > 1})
        columns = {name: _axis([c.get(name) for c in configs]) for name in names}
        columns[metric] = _axis(list(rows[metric]))
        for i, (scaled, low, high) in enumerate(columns.values()):
            ax.text(i, -0.12, low, ha="center", va="top", fontsize=7)
            ax.text(i, 1.04, high, ha="center", va="bottom", fontsize=7)
        matrix = np.array([scaled for scaled, _, _ in columns.values()]).T
        for line in matrix:
            ax.plot(range(len(columns)), line, color=plt.cm.viridis(line[-1]), alpha=0.8)
        ax.set_xticks(range(len(columns)), list(columns), fontsize=8)
        ax.tick_params(axis="x", pad=12)
        ax.set_ylim(-0.05, 1.05)
        ax.set_yticks([])
        ax.set_title(f"{arm}: one line per search trial that did not diverge, colour = {metric} (yellow best)", fontsize=9, pad=14)
    return _save(fig, path)


def _axis(values: list) -> tuple[list[float], str, str]:
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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- rendering ------------------------------------------------------------------------------


def _markdown(blocks: list, out: Path) -> str:
    parts = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + content)
        elif kind == "p":
            parts.append(content)
        elif kind == "ul":
            parts.append("\n".join(f"- {item}" for item in content))
        elif kind == "table":
            parts.append(_markdown_table(content))
        elif kind == "img":
            parts.append(f"![{content.stem}]({content.relative_to(out).as_posix()})")
    return "\n\n".join(parts) + "\n"


def _markdown_table(frame: pd.DataFrame) -> str:
    cells = lambda row: "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"  # noqa: E731
    return "\n".join([cells(frame.columns), cells(["---"] * len(frame.columns)), *(cells(r) for r in frame.itertuples(index=False))])


def _html(blocks: list, out: Path, title: str) -> str:
    def inline(text: str) -> str:  # the two bits of Markdown the prose uses: **bold** and `code`
        text = html.escape(text)
        for mark, tag in (("**", "b"), ("`", "code")):
            pieces = text.split(mark)
            text = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(pieces))
        return text

    parts = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{inline(content)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in content) + "</ul>")
        elif kind == "table":
            parts.append(content.to_html(index=False, border=0, escape=True))
        elif kind == "img":  # embedded, so the page works inside MLflow's artifact viewer
            data = base64.b64encode(content.read_bytes()).decode()
            parts.append(f'<img alt="{content.stem}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:.9em;margin:1em 0}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}"
             "img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)} report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return value

