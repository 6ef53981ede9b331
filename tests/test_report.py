"""The report from a results table (synthetic, shaped like MLflow's records): verdicts, tables,
plots, and both files saying the same thing."""

import numpy as np

from bnsearch import report, results

SPEC = {"name": "demo", "question": "BN vs none", "model": "mlp", "dataset": "digits", "arms": ["none", "before"],
        "metric": "val_accuracy", "budget": {"sampler": "tpe", "seeds": 8, "looks": [4, 8]}, "nuisance": {"learning_rate": {}},
        "comparisons": [{"a": "before", "b": "none", "kind": "difference", "sesoi": 0.5}]}


def trial(phase, arm, index, final, lr, status="finished", stale=0.0, gap=0.01):
    epochs = 3
    curve = {e: final * e / epochs for e in range(1, epochs + 1)}
    history = {"val_accuracy": curve, "loss": {e: 1.0 / e for e in curve}, "epoch": {e: float(e) for e in curve},
               "test_accuracy": {epochs: final}}
    if arm == "before":
        history.update(bn_mode_gap={epochs: gap}, bn_mean_shift={epochs: 0.1}, bn_var_log_ratio={epochs: 0.1},
                       bn_stale_stats={epochs: stale})
    seed = index if phase == "replicate" else 10_000 + index
    return {"run_id": f"{phase}{arm}{index}", "history": history,
            "params": {"arm": arm, "phase": phase, "trial_index": index, "seed": seed, "learning_rate": lr, "bn_placement": arm},
            "tags": {"sweep_id": "s", "phase": phase, "arm": arm, "status": status, "trial_key": f"s/{phase}/{arm}{index}"}}


def table(with_replicate=True, stale_seed=None):
    rng = np.random.default_rng(0)
    records = [trial("search", arm, i, 0.9 + 0.01 * i, 10.0 ** -i) for arm in SPEC["arms"] for i in range(4)]
    if with_replicate:
        for seed in range(8):
            shared = rng.normal(0, 0.003)  # a seed's data order helps or hurts both arms alike
            records.append(trial("replicate", "none", seed, 0.95 + shared + rng.normal(0, 0.001), 1e-3))
            records.append(trial("replicate", "before", seed, 0.97 + shared + rng.normal(0, 0.001), 1e-2,
                                 stale=float(seed == stale_seed)))
    return results.from_records(records)


def test_a_clear_difference_is_reported_as_supported_with_every_section(tmp_path):
    built = report.build(table(stale_seed=3), SPEC, tmp_path)
    md, page = built.markdown.read_text(), built.html.read_text()
    [pair] = built.analysis.pairs
    assert pair.evidence.paired and pair.verdict == "supported" and 1.5 < pair.difference < 2.5
    assert pair.seeds == 4 and built.analysis.saved == 0 and [e.seeds for e in built.analysis.exploratory] == [8]
    assert "**before vs none** (difference, smallest effect of interest ±0.5 points): **supported**" in md
    for heading in ("## Verdicts", "### Exploratory: every seed, outside the plan", "## Sequential plan", "**A/A check of this rule:**",
                    "## Per arm", "## Comparisons", "## Power", "## Learning curves", "## BN diagnostics", "## Search phase",
                    "### Hyperparameter importance", "### Tuning-budget curves", "## Reproduce"):
        assert heading in md
    assert "**Warning:** 1 trial(s) never updated their BN moving statistics: replicate/before/seed 3" in md
    assert "seeds 0..7 (8)" in md
    plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert plots == ["differences.png", "learning_curves.png", "search.png", "seeds.png", "tuning_budget.png"]
    assert all(f"plots/{p}" in md for p in plots)
    assert page.count("data:image/png;base64,") == 5  # self-contained inside MLflow's artifact viewer
    assert "8 seeds per arm ran, 4 of them within the sequential plan" in md and "Only seed-to-seed variance enters the intervals" in md
    assert "<b>supported</b>" in page and "<table" in page
    parent = built.parent  # what the MLflow UI shows on the parent run
    assert parent.metrics["arm/before/mean"] == next(s.mean for s in built.analysis.arms if s.arm == "before") and parent.metrics["arm/none/n"] == 4
    assert parent.tags["verdict/before vs none"].startswith("supported: before beats none by 2.")
    assert "**before vs none** (difference): **supported**" in parent.description and "| before | 4 | 0 |" in parent.description
    assert "before vs none (difference): SUPPORTED" in built.summary and "before: 97.0" in built.summary and "EXPLORATORY" in built.summary


def test_without_replicate_results_the_report_says_what_to_run(tmp_path):
    built = report.build(table(with_replicate=False), SPEC, tmp_path)
    assert built.analysis is None
    assert "No replicate results yet" in built.markdown.read_text() and "## Search phase" in built.markdown.read_text()


def test_a_large_bn_mode_gap_is_a_warning_in_the_report_and_the_summary(tmp_path):
    records = [trial("search", arm, 0, 0.9, 1e-3) for arm in SPEC["arms"]]
    records += [trial("replicate", arm, seed, 0.5 + 0.01 * seed, 1e-3, gap=0.4 if arm == "before" else 0.0)
                for seed in range(3) for arm in SPEC["arms"]]
    built = report.build(results.from_records(records), SPEC, tmp_path)
    assert "**Warning:** in arm before, validation accuracy is 40.0 points higher with batch statistics" in built.markdown.read_text()
    assert "Warning: in arm before" in built.summary and "arm none" not in built.summary


def test_per_example_results_put_the_test_set_into_the_verdict_beside_the_seed_only_interval(tmp_path):
    rng = np.random.default_rng(1)
    data = table()
    last = results.last_epochs(data, "replicate")
    correct = {(r.arm, int(r.seed)): rng.random(300) < r.test_accuracy for r in last.itertuples()}
    built = report.build(data, {**SPEC, "budget": {"sampler": "tpe", "seeds": 8}}, tmp_path, correct=correct)
    [pair] = built.analysis.pairs
    assert pair.evidence.with_test_set and pair.evidence.se > pair.evidence.seed_se
    assert pair.test_ci[0] < pair.seed_ci[0] and pair.test_ci[1] > pair.seed_ci[1]
    md = built.markdown.read_text()
    assert "95% CI (seeds + test set)" in md and "include the fixed test set's sampling error" in md
    assert "with the test set's error" in built.summary
