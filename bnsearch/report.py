"""Tables + plots → ``report.md`` and a self-contained ``report.html``, from the results table.

The report leads with the verdicts, in words, then shows what they rest on: per-arm
estimates over the replicate seeds, the declared comparisons (Holm-corrected), power, the A/A
calibration, BN diagnostics, and the search phase that chose every arm's configuration.
Both files are rendered from one list of blocks (:mod:`bnsearch.render`), so they always say the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bnsearch import plots, render, results, search, stats
from bnsearch.spec import BATCH_FREE_NORMS, FAILURES, SEARCH_SEED_BASE, SEARCH_SPLIT_SEED, Comparison

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
    parent: ParentSummary | None = None  # what the parent run shows in the MLflow UI


@dataclass
class ParentSummary:
    """The verdicts and every arm's aggregate over its seeds, for the sweep's parent run."""

    metrics: dict[str, float]
    tags: dict[str, str]
    description: str  # Markdown: the run page shows it without opening a file


def parent_summary(analysis: stats.Analysis) -> ParentSummary:
    metrics, tags = {}, {}
    for s in analysis.arms:
        figures = {"mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "test_set_ci_low": s.test_ci_low,
                   "test_set_ci_high": s.test_ci_high, "n": s.n, "failed": s.n_failed}
        metrics |= {f"arm/{s.arm}/{name}": value for name, value in figures.items() if math.isfinite(value)}
    for p in analysis.pairs:
        figures = {"difference": p.difference, "decision_ci_low": p.decision_ci[0], "decision_ci_high": p.decision_ci[1]}
        metrics |= {f"comparison/{p.label}/{name}": value for name, value in figures.items() if math.isfinite(value)}
        tags[f"verdict/{p.label}"] = f"{p.verdict}: {p.explanation}"
    rows = pd.DataFrame([{"arm": s.arm, "n": s.n, "failed": s.n_failed, "mean": f"{s.mean:.2f}",
                          "95% CI (seeds)": _interval(s.ci_low, s.ci_high),
                          "95% CI (seeds + test set)": _interval(s.test_ci_low, s.test_ci_high)} for s in analysis.arms])
    lines = [f"**Verdicts** ({analysis.metric}, accuracy points, {analysis.seeds} seeds per arm):", ""]
    lines += [f"- **{p.label}** ({p.kind}): **{p.verdict}**. {p.explanation}" for p in analysis.pairs]
    lines += [f"- exploratory, {p.label}: {p.explanation}" for p in analysis.exploratory]
    lines += ["", render.markdown_table(rows), "", "The full report: `report.html` in this run's artifacts."]
    return ParentSummary(metrics, tags, "\n".join(lines))


def plan_of(spec: dict[str, Any]) -> stats.Plan:
    """The sequential plan a spec's budget declares: its looks, or one look at all its seeds."""
    budget = spec["budget"]
    return stats.Plan(tuple(budget.get("looks") or (budget["seeds"],)), budget.get("spending", "obrien_fleming"))


def analysis_of(table: pd.DataFrame, spec: dict[str, Any], correct: dict | None = None,
                plan: stats.Plan | None = None, calibration_draws: int = stats.CALIBRATION_DRAWS) -> stats.Analysis:
    """The verdicts: the replicate phase's final values through the sweep's plan and family."""
    metric = spec.get("report_metric", "test_accuracy")
    final = results.final_values(table, metric, "replicate")
    return stats.analyze(final, [Comparison(**c) for c in spec["comparisons"]], plan=plan or plan_of(spec),
                         metric=metric, correct=correct or None, calibration_draws=calibration_draws)


def build(table: pd.DataFrame, spec: dict[str, Any], out: str | Path, *, correct: dict | None = None,
          plan: stats.Plan | None = None) -> Built:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` under ``out``. ``correct`` holds
    the replicate runs' per-example test results by (arm, seed); ``plan`` the recorded plan."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    arms = list(spec["arms"])
    metric = spec.get("report_metric", "test_accuracy")
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
        analysis = analysis_of(table, spec, correct, plan)
        blocks += _verdicts(analysis, replicate)
        blocks += _plan(analysis)
        blocks += _arms(analysis, table, arms, metric, list(spec.get("nuisance", {})))
        blocks += _evaluations(replicate, arms)
        blocks += [("img", plots.strip_plot(final, arms, analysis, metric, out / "plots" / "seeds.png"))]
        blocks += _pairs(analysis, out)
        blocks += [("h2", "Learning curves (replicate phase)"),
                   ("img", plots.learning_curves(replicate, arms, out / "plots" / "learning_curves.png")),
                   ("p", "Mean over seeds per epoch; the band is ± one standard deviation across seeds.")]
        lines += [f"{p.label} ({p.kind}): {p.verdict.upper()}. {p.explanation}" for p in analysis.pairs]
        lines += [f"{p.label} ({p.kind}), EXPLORATORY: {p.explanation}" for p in analysis.exploratory]
        lines += [f"  {s.arm}: {s.mean:.2f} points (95% CI {_interval(s.ci_low, s.ci_high)}"
                  + (f"; with the test set's error {_interval(s.test_ci_low, s.test_ci_high)}" if math.isfinite(s.test_ci_low) else "")
                  + f"), n={s.n}, failed {s.n_failed}" for s in analysis.arms]
        if analysis.saved:
            lines.append(f"  The sequential plan stopped at {analysis.seeds} seeds per arm: {analysis.saved} seeds per arm saved.")
    blocks += _diagnostics(table)
    blocks += _search(table, arms, spec, out)
    blocks += [("h2", "Reproduce"),
               ("p", f"Seeds: search phase {SEARCH_SEED_BASE} + trial index, every trial validated on one split (split "
                     f"seed {SEARCH_SPLIT_SEED}); replicate phase {_seed_text(replicate)}, the same for every arm, each seed drawing its own "
                     "validation split; epoch k's data order derives from (seed, k). Every run records its resolved "
                     "configuration (params), library versions and BN conventions (tags); the parent run holds "
                     "`spec.json`, `versions.json` and `results.parquet`.")]
    md = out / "report.md"
    md.write_text(render.to_markdown(blocks, out))
    page = out / "report.html"
    page.write_text(render.to_html(blocks, out, spec["name"]))
    lines += [f"Warning: {w}" for w in _bn_warnings(table)]
    summary = "\n".join([f"\nReport for {spec['name']} ({metric}, accuracy points):", *lines])
    return Built(md, page, summary, analysis, parent_summary(analysis) if analysis else None)


def _seed_text(replicate: pd.DataFrame) -> str:
    seeds = sorted(int(s) for s in replicate["seed"].dropna().unique()) if len(replicate) else []
    return f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)})" if seeds else "not run yet"


# --- sections -------------------------------------------------------------------------------


def _verdicts(analysis: stats.Analysis, replicate: pd.DataFrame) -> list:
    items = [f"**{p.label}** ({p.kind}, smallest effect of interest ±{p.sesoi:g} points): **{p.verdict}**. {p.explanation}"
             for p in analysis.pairs]
    m = max(len(analysis.pairs), 1)
    test_set = any(p.evidence.with_test_set for p in analysis.pairs)
    blocks = [("h2", "Verdicts"), ("ul", items),
              ("p", f"Metric: final `{analysis.metric}` at the full epoch budget, in accuracy points, over {analysis.seeds} seeds "
                    f"per arm. Family: {m} comparison(s), every claim, \"refuted\" included, tested at α/{m} = {analysis.alpha / m:.3g} "
                    "(Holm over all claims, whose step-down never applies here: a comparison's two claims cannot both have "
                    "true nulls, and a decided comparison's other claim stays untested, so it is Bonferroni), spent over the "
                    "looks of the sequential plan below. Failed runs (diverged, collapsed, crashed) count: as the worst "
                    "outcome in the rank test that decides a two-arm difference when there are any (interactions use the "
                    "seeds where all their arms finished), and an "
                    f"arm whose failure rate differs by more than {stats.FAILURE_TOLERANCE:.0%} can never be equivalent. "
                    + ("The intervals and tests include the fixed test set's sampling error (seeds × test examples); the "
                       "seed-only intervals stand beside them in the comparisons table. " if test_set else
                       "Only seed-to-seed variance enters the intervals (no per-example test results). ")
                    + _statistics_text(replicate))]
    if analysis.exploratory:
        blocks += [("h3", "Exploratory: every seed, outside the plan"),
                   ("ul", [f"**{p.label}**: {p.explanation}" for p in analysis.exploratory]),
                   ("p", f"{analysis.seeds_run} seeds per arm ran, {analysis.seeds} of them within the sequential plan. Tests "
                         "over seeds added after the plan had stopped (or beyond its last look) are optional stopping: they "
                         "describe, they do not decide.")]
    return blocks


def _plan(analysis: stats.Analysis) -> list:
    plan = analysis.plan
    rows = []
    for k, (n, below) in enumerate(zip(plan.looks, stats.thresholds(plan, analysis.alpha, max(len(analysis.pairs), 1)))):
        row = {"look": k + 1, "seeds per arm": n, "difference: p below": f"{below['zero']:.2g}",
               "equivalence: TOST p below": f"{below['equivalent']:.2g}"}
        for p in analysis.pairs:
            step = p.steps[k] if k < len(p.steps) else None
            row[p.label] = ("-" if step is None else
                            f"{step.decided and stats.CLAIMS[p.kind][step.decided] or ('futile' if step.futile else 'go on')} "
                            f"(p {_p(step.evidence.p_zero)}, TOST {_p(step.evidence.p_equivalent)})")
        rows.append(row)
    words = {"obrien_fleming": "O'Brien–Fleming", "pocock": "Pocock"}[plan.spending]
    text = (f"Looks at {', '.join(map(str, plan.looks))} seeds per arm; Lan–DeMets {words}-type α spending, boundaries "
            "from the joint normal law of the looks (scipy). A comparison closes at the first look where a claim is decided, "
            f"or, from {stats.FUTILITY_FROM:.0%} of the plan's seeds on, where the rest of the plan has under a "
            f"{stats.FUTILITY:.0%} chance to decide it (futility, non-binding); the sweep stops when every comparison is closed.") if len(plan.looks) > 1 else (
            f"One look, at {plan.looks[0]} seeds per arm (a fixed design). A budget with `looks` makes it group-sequential.")
    if analysis.saved:
        text += f" This sweep stopped at {analysis.seeds} seeds per arm and saved {analysis.saved} per arm."
    blocks = [("h2", "Sequential plan"), ("p", text), ("table", pd.DataFrame(rows))]
    if analysis.calibration:
        c = analysis.calibration
        blocks.append(("p", f"**A/A check of this rule:** {c.draws} sweeps simulated from this sweep's own seeds, each seed's "
                            "results shuffled across the arms (nothing differs, the seed-to-seed spread and pairing stay), run "
                            "through the same plan, family and tests on the seed-level values (without the test set's share "
                            f"of the error, the stricter case): {c.false_claims:.1%} made a false claim of a difference "
                            f"(95% CI {c.low:.1%} to {c.high:.1%}); a calibrated rule stays at or below α = {analysis.alpha}."))
    return blocks


def _statistics_text(replicate: pd.DataFrame) -> str:
    """Which BN statistics the accuracies (and so the verdicts) use, per arm with BN."""
    words = {"precise": "precise BN statistics (population statistics recomputed over training batches with the final "
                        "weights, PreciseBN)", "moving": "BN's moving averages (Keras' inference default)"}
    used = replicate.dropna(subset=["config.bn_statistics"]).groupby("config.bn_statistics")["arm"].unique() \
        if "config.bn_statistics" in replicate else {}
    sentences = [f"Arms {', '.join(f'`{a}`' for a in arms)} are evaluated with {words.get(kind, kind)}." for kind, arms in used.items()]
    batch_free = replicate[replicate["config.norm"].isin(BATCH_FREE_NORMS)]["arm"].unique() if "config.norm" in replicate else []
    if len(batch_free):
        sentences.append(f"Arms {', '.join(f'`{a}`' for a in batch_free)} normalize without batch statistics "
                         "(GroupNorm/LayerNorm): there are no moving statistics to recalibrate or diagnose.")
    return " ".join(sentences) or "No arm has BN."


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
        "95% CI (seeds)": _interval(s.ci_low, s.ci_high), "95% CI (seeds + test set)": _interval(s.test_ci_low, s.test_ci_high),
        "sd": f"{s.sd:.3f}", "median": f"{s.median:.2f}", "IQM": f"{s.iqm:.2f}", "min": f"{s.min:.2f}", "max": f"{s.max:.2f}",
    } for s in analysis.arms]
    configs = _replicated_configs(table, arms, nuisance)
    return [("h2", f"Per arm: final {metric} over seeds"), ("table", pd.DataFrame(rows)),
            ("p", "Means over the seeds that finished (failures are in the failure rate and in the verdicts). Student-t "
                  "intervals over seeds; the second adds the test set's sampling error (two-way seeds × test examples "
                  "variance) where per-example results were logged."),
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
        "comparison": p.label, "kind": p.kind, "pairing": "paired by seed" if p.evidence.paired else "unpaired",
        "seeds": p.seeds, "difference": f"{p.difference:+.2f}", "95% CI (seeds)": _interval(*p.seed_ci, sign=True),
        "95% CI (seeds + test set)": _interval(*p.test_ci, sign=True),
        "decided on": f"{p.decision_confidence:.2%} CI {_interval(*p.decision_ci, sign=True)}",
        "test": p.evidence.zero_test, "p": _p(p.evidence.p_zero), "TOST p": _p(p.evidence.p_equivalent),
        "rank test": f"{p.rank_test} {_p(p.rank_p)}", "permutation p": _p(p.permutation_p),
        "same-seed P(A>B)": f"{p.p_superiority:.2f} ({_interval(*p.p_superiority_ci)})",
        "Hedges' g": f"{p.hedges_g:+.2f}", "failure rates": " vs ".join(f"{r:.0%}" for r in p.evidence.failure_rates),
        "verdict": p.verdict,
    } for p in analysis.pairs]
    power = [{
        "comparison": p.label, "observed sd": f"{p.sd:.3f}", "seeds per arm": p.seeds,
        "min. detectable effect": f"{p.mde:.2f}", "SESOI": f"{p.sesoi:g}", "seeds per arm for a new sweep": p.seeds_needed,
    } for p in analysis.pairs]
    return [("h2", "Comparisons"), ("table", pd.DataFrame(rows).fillna("-")),
            ("img", plots.forest_plot(analysis.pairs, out / "plots" / "differences.png")),
            ("p", "\"Decided on\": the interval at the level the verdict spent (the family's share and the look's "
                  "boundary; TOST's is the 1 − 2α interval): a verdict is what this interval shows against 0 and ±SESOI. "
                  "Same-seed P(A>B): the share of seeds on which A beat B (a failure losing), with a Wilson 95% interval. The rank "
                  "and permutation tests, P(A>B) and Hedges' g describe the seeds on this one test set: they leave out the "
                  "test set's sampling error that the verdict includes."),
            ("h2", "Power"), ("table", pd.DataFrame(power)),
            ("p", f"At the family's level α/{len(analysis.pairs)}, 80% power; the sd is of the per-seed differences when paired; "
                  "with per-example results the minimum detectable effect includes the test set's error. "
                  "Seeds for a new sweep plan with the sd's upper 80% confidence bound (a small-sample sd is often an "
                  "underestimate) and are never fewer than already ran; adding them to this sweep would be optional stopping.")]


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
    blocks += _tuning_curves(last, arms, metric, spec.get("mode", "max"), out)
    blocks += [("h3", "Parallel coordinates"), ("img", plots.parallel_coordinates(last, arms, metric, out / "plots" / "search.png"))]
    return blocks


def _tuning_curves(last: pd.DataFrame, arms: list[str], metric: str, mode: str, out: Path) -> list:
    """Expected best search score against the number of trials per arm (Dodge et al. 2019)."""
    scale = 100 if metric.endswith("accuracy") else 1
    curves = {arm: stats.expected_best(scale * last[last["arm"] == arm][metric].to_numpy(dtype=float), maximize=mode == "max")
              for arm in arms}
    curves = {arm: c for arm, c in curves.items() if len(c[0])}
    if not curves:
        return []
    rows = [{"arm": arm, **{f"{k} trial{'s' * (k > 1)}": f"{mean[k - 1]:.2f} ± {sd[k - 1]:.2f}"
                            for k in sorted({1, (len(mean) + 1) // 2, len(mean)})}} for arm, (mean, sd) in curves.items()]
    return [("h3", "Tuning-budget curves"),
            ("img", plots.tuning_curves(curves, metric, out / "plots" / "tuning_budget.png")),
            ("table", pd.DataFrame(rows).fillna("-")),
            ("p", f"Expected best {metric} (the smoothed value that chose each arm's configuration) after k search trials, "
                  "± the sd of that best, from the trials that ran, as in Dodge et al. 2019. An arm that wins only at the "
                  "full budget is the harder one to tune: the verdicts hold at this sweep's budget, not necessarily at a "
                  "smaller one. The curves treat the trials as draws from the search space; TPE and early stopping make them "
                  "less alike than that.")]


def _interval(low: float, high: float, *, sign: bool = False) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"{low:+.2f} to {high:+.2f}" if sign else f"{low:.2f} to {high:.2f}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _fmt(value: Any) -> Any:
    if results.missing(value):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else value

