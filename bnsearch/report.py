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

import pandas as pd

from bnsearch import plots, results, search, stats
from bnsearch.spec import FAILURES, SEARCH_SEED_BASE, SEARCH_SPLIT_SEED, Comparison

BN_COLUMNS = ("bn_mode_gap", "bn_mean_shift", "bn_var_log_ratio", "bn_dead_channels", "bn_stale_stats")
# Final test accuracy with each kind of BN statistics, beside the one the verdicts use.
EVALUATIONS = {"test_accuracy_precise": "precise statistics", "test_accuracy_moving": "moving statistics",
               "test_accuracy_batch": "batch statistics"}
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
        blocks += _verdicts(analysis, final, replicate)
        blocks += _arms(analysis, table, arms, metric, list(spec.get("nuisance", {})))
        blocks += _evaluations(replicate, arms)
        blocks += [("img", plots.strip_plot(final, arms, analysis, metric, out / "plots" / "seeds.png"))]
        blocks += _pairs(analysis, out)
        blocks += [("h2", "Learning curves (replicate phase)"),
                   ("img", plots.learning_curves(replicate, arms, out / "plots" / "learning_curves.png")),
                   ("p", "Mean over seeds per epoch; the band is ± one standard deviation across seeds.")]
        lines += [f"{p.a} vs {p.b} ({p.kind}): {p.verdict.upper()}. {p.explanation}" for p in analysis.pairs]
        lines += [f"  {s.arm}: {s.mean:.2f} points (95% CI {s.ci_low:.2f} to {s.ci_high:.2f}), n={s.n}, failed {s.n_failed}"
                  for s in analysis.arms]
    blocks += _diagnostics(table)
    blocks += _search(table, arms, spec, out)
    blocks += [("h2", "Reproduce"),
               ("p", f"Seeds: search phase {SEARCH_SEED_BASE} + trial index, every trial validated on one split (split "
                     f"seed {SEARCH_SPLIT_SEED}); replicate phase {_seed_text(replicate)}, the same for every arm, each seed drawing its own "
                     "validation split; epoch k's data order derives from (seed, k). Every run records its resolved "
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


def _verdicts(analysis: stats.Analysis, final: pd.DataFrame, replicate: pd.DataFrame) -> list:
    items = [f"**{p.a} vs {p.b}** ({p.kind}, smallest effect of interest ±{p.sesoi:g} points): "
             f"**{p.verdict}**. {p.explanation}" for p in analysis.pairs]
    return [("h2", "Verdicts"), ("ul", items),
            ("p", f"Metric: final `{analysis.metric}` at the full epoch budget, in accuracy points, over "
                  f"{final['seed'].nunique()} seeds per arm; α = {analysis.alpha}, Holm-corrected across the "
                  f"{len(analysis.pairs)} declared comparison(s). Failed runs (diverged, collapsed, crashed) count in each "
                  f"arm's failure rate. {_statistics_text(replicate)}")]


def _statistics_text(replicate: pd.DataFrame) -> str:
    """Which BN statistics the accuracies (and so the verdicts) use, per arm with BN."""
    if "config.bn_statistics" not in replicate:
        return "No arm has BN."
    used = replicate.dropna(subset=["config.bn_statistics"]).groupby("config.bn_statistics")["arm"].unique()
    words = {"precise": "precise BN statistics (population statistics recomputed over training batches with the final "
                        "weights, PreciseBN)", "moving": "BN's moving averages (Keras' inference default)"}
    return " ".join(f"Arms {', '.join(f'`{a}`' for a in arms)} are evaluated with {words.get(kind, kind)}." for kind, arms in used.items())


def _evaluations(replicate: pd.DataFrame, arms: list[str]) -> list:
    """Per arm, mean final test accuracy with each kind of BN statistics: where they part, the
    moving averages lag (or BN's bookkeeping is broken) and the choice of statistics matters."""
    present = [c for c in EVALUATIONS if c in replicate]
    if not present:
        return []
    last = results.last_epochs(replicate, "replicate")
    last = last[~last["status"].isin(FAILURES)]  # as in the verdicts: failures are counted, not averaged
    rows = [{"arm": arm, "verdicts use": f"{100 * last[last['arm'] == arm]['test_accuracy'].mean():.2f}",
             **{EVALUATIONS[c]: f"{100 * last[last['arm'] == arm][c].mean():.2f}" for c in present}}
            for arm in arms if arm in set(last["arm"])]
    return [("h3", "Test accuracy by BN statistics (mean over seeds)"), ("table", pd.DataFrame(rows).replace("nan", "-")),
            ("p", "Batch statistics: every BN normalizes by the test batch's own statistics (batches of the training batch "
                  "size), what the network computed in training. Arms without BN have only the one accuracy.")]


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
            ("img", plots.forest_plot(analysis.pairs, out / "plots" / "differences.png")),
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
              ("p", "`bn_mode_gap`: validation accuracy with batch statistics minus with the moving statistics (large "
                    "when the moving averages lag the weights; verdicts evaluated with precise statistics do not depend on "
                    "them); `bn_mean_shift` / `bn_var_log_ratio`: how far the moving mean / variance sit from the population "
                    "statistics recomputed with the final weights (live channels, worst layer; per layer in each run's "
                    "`bn_layers.json`); `bn_dead_channels`: channels BN maps to a constant (dead units feeding it); "
                    "`bn_stale_stats`: the moving statistics were never updated.")]
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
    replicate = last[last["phase"] == "replicate"]
    if "test_accuracy_batch" in replicate:
        gaps = (replicate["test_accuracy_batch"] - replicate["test_accuracy"]).groupby(replicate["arm"]).mean().dropna()
        for arm, gap in gaps[gaps.abs() > MODE_GAP_WARNING].items():
            warnings.append(f"in arm {arm}, test accuracy with batch statistics differs by {100 * gap:+.1f} points from the "
                            "accuracy the verdicts use: BN at inference does not compute what the network learned.")
        return warnings
    gaps = replicate.groupby("arm")["bn_mode_gap"].mean().dropna()
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
    # rank trials on the value that chose the replicated configurations
    last = last.assign(**{metric: last["trial_key"].map(results.smoothed(table, metric))})
    counts = last.groupby(["arm", "status"]).size().unstack(fill_value=0)
    counts["epochs"] = last.groupby("arm")["epoch"].sum()
    if "train_time_s" in last:
        counts["training s"] = last.groupby("arm")["train_time_s"].sum().round(1)
    counts = counts.reset_index()
    blocks = [("h2", "Search phase"),
              ("p", f"{len(last)} trials, {int(table[table['phase'] == 'search'].shape[0])} epochs; every arm tuned by its own "
                    f"Optuna study ({spec['budget']['sampler']}) with the same number of trials that ran (a crashed trial is "
                    f"replaced), all validated on one shared split; each arm's configuration was chosen on {metric} averaged "
                    f"over a trial's last {results.SELECTION_EPOCHS} epochs (the value the importances and parallel coordinates show too). Early stopping makes the epochs and training "
                    "seconds each arm spent differ: they are in the table."),
              ("table", counts)]
    importances = []
    for arm in arms:
        rows = last[(last["arm"] == arm) & ~last["status"].isin(FAILURES)].dropna(subset=[metric])
        configs = [results.searched_config(r) for _, r in rows.iterrows()]
        for name, value in search.param_importances(configs, list(rows[metric])).items():
            importances.append({"arm": arm, "hyperparameter": name, "importance (fANOVA)": f"{value:.2f}"})
    if importances:
        blocks += [("h3", "Hyperparameter importance"), ("table", pd.DataFrame(importances))]
    blocks += [("h3", "Parallel coordinates"), ("img", plots.parallel_coordinates(last, arms, metric, out / "plots" / "search.png"))]
    return blocks


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

