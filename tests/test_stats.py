"""The statistics against scipy, statsmodels, published boundaries and hand formulas."""

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from bnsearch import stats
from bnsearch.spec import Comparison

ALPHA = stats.ALPHA


@pytest.fixture
def strict():
    """Fail on any warning: degenerate data must be handled quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def rng(seed=0):
    return np.random.default_rng(seed)


def frame(arms: dict[str, list[float]], seeds=None):
    """One row per run; NaN is a failed run."""
    rows = [(arm, (seeds or {}).get(arm, range(len(v)))[i], x, not np.isfinite(x))
            for arm, v in arms.items() for i, x in enumerate(v)]
    return pd.DataFrame(rows, columns=["arm", "seed", "value", "failed"])


def paired_arms(gap, sd, n, seed=0):
    base = rng(seed).normal(97, 0.5, n)  # seed-to-seed variation shared by both arms
    return base + gap + rng(seed + 1).normal(0, sd, n), base + rng(seed + 2).normal(0, sd, n)


def one(a, b, kind="difference", sesoi=0.5, **kwargs):
    return stats.analyze(frame({"a": list(a), "b": list(b)}), [Comparison("a", "b", kind, sesoi)], calibration_draws=0,
                         **kwargs).pairs[0]


# --- summaries -------------------------------------------------------------------------------


def test_summary_by_hand():
    s = stats.summarize([1, 2, 3, 4], arm="before", failed=1)
    assert (s.arm, s.n, s.n_failed, s.failure_rate) == ("before", 4, 1, pytest.approx(1 / 5))
    assert (s.mean, s.sd, s.median, s.min, s.max) == (2.5, pytest.approx(math.sqrt(5 / 3)), 2.5, 1, 4)
    assert (s.ci_low, s.ci_high) == pytest.approx(st.t.interval(0.95, 3, loc=2.5, scale=math.sqrt(5 / 3) / 2))
    assert stats.summarize(range(1, 9)).iqm == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert stats.summarize([1.0, np.nan, 3.0, np.inf]).n == 2
    empty = stats.summarize([], failed=3)
    assert (empty.n, empty.failure_rate) == (0, 1.0) and math.isnan(empty.mean)


def test_an_accuracy_interval_stays_within_0_and_100():
    s = stats.summarize([99.9, 99.95, 92.0])
    assert s.ci_high == 100.0 and s.ci_low < s.mean


def test_the_test_set_interval_adds_the_examples_variance_as_a_pigeonhole_bootstrap_would():
    g = rng(3)
    difficulty = g.normal(0, 1.5, 400)  # some test examples are hard for every seed
    correct = g.random((6, 400)) < 1 / (1 + np.exp(-(1.5 + difficulty + g.normal(0, 0.3, (6, 1)))))
    values = 100 * correct.mean(axis=1)
    s = stats.summarize(values, correct=correct)
    assert s.test_ci_low < s.ci_low and s.test_ci_high > s.ci_high
    # Owen's pigeonhole bootstrap: resample seeds and examples independently.
    boot = [100 * correct[np.ix_(g.integers(0, 6, 6), g.integers(0, 400, 400))].mean() for _ in range(4000)]
    half_width = (s.test_ci_high - s.test_ci_low) / 2
    se = half_width / st.t.isf(0.025, 5)
    assert se == pytest.approx(np.std(boot) * math.sqrt(6 / 5), rel=0.25)  # ddof: the bootstrap is biased by (n-1)/n


# --- evidence --------------------------------------------------------------------------------


def test_paired_evidence_is_scipys_paired_t_and_statsmodels_tost():
    a, b = paired_arms(0.3, 0.2, 8)
    ev = one(a, b).evidence
    assert ev.paired and ev.n == 8 and ev.zero_test == "paired t"
    assert ev.p_zero == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert ev.p_equivalent == pytest.approx(ttost_paired(a, b, -0.5, 0.5)[0])
    ci = st.ttest_rel(a, b).confidence_interval(0.95)
    assert one(a, b).seed_ci == pytest.approx((ci.low, ci.high))


def test_unpaired_evidence_is_welch_and_tost_with_unequal_variances():
    a, b = rng(1).normal(97, 0.3, 5), rng(2).normal(96.8, 0.6, 6)
    r = stats.analyze(frame({"a": list(a), "b": list(b)}, seeds={"b": range(10, 16)}), [Comparison("a", "b")],
                      calibration_draws=0).pairs[0]
    assert not r.evidence.paired
    assert r.evidence.p_zero == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    assert r.evidence.p_equivalent == pytest.approx(ttost_ind(a, b, -0.5, 0.5, usevar="unequal")[0])
    assert r.rank_test == "Mann-Whitney U" and r.rank_p == pytest.approx(st.mannwhitneyu(a, b).pvalue)


def test_apart_p_is_the_two_sided_level_at_which_the_ci_leaves_the_sesoi_band():
    a, b = paired_arms(1.5, 0.3, 10)
    ev = one(a, b).evidence
    low, _ = st.ttest_rel(a - 0.5, b).confidence_interval(1 - ev.p_apart)
    assert low == pytest.approx(0.0, abs=1e-9)  # at level p_apart the CI's edge sits exactly on +SESOI


def test_an_interaction_is_the_difference_of_per_seed_differences():
    c = Comparison(("bn8", "none8"), ("bn128", "none128"))
    assert c.terms == {"bn8": 1, "none8": -1, "bn128": -1, "none128": 1}
    assert Comparison(["x", "y"], ["z", "y"]).terms == {"x": 1, "z": -1}  # read back from JSON; y cancels
    g = rng(4)
    arms = {k: list(97 + g.normal(0, 0.3, 8)) for k in c.terms}
    r = stats.analyze(frame(arms), [c], calibration_draws=0).pairs[0]
    d = np.array(arms["bn8"]) - arms["none8"] - arms["bn128"] + arms["none128"]
    assert r.evidence.p_zero == pytest.approx(st.ttest_1samp(d, 0).pvalue)
    assert r.label == "(bn8 − none8) vs (bn128 − none128)"


def test_same_seed_superiority_counts_wins_per_seed_with_a_wilson_interval():
    a = [97.0, 96.0, 98.0, 95.0, np.nan]  # the last seed failed: a loss for a
    b = [96.0, 97.0, 97.0, 94.0, 96.0]
    r = one(a, b)
    assert r.p_superiority == pytest.approx(3 / 5)
    assert 0 < r.p_superiority_ci[0] < 0.6 < r.p_superiority_ci[1] < 1


# --- failures --------------------------------------------------------------------------------


def test_an_arm_that_diverged_on_8_of_10_seeds_is_never_equivalent():
    """The D1 example: paired on its 2 survivors the arms look equivalent."""
    a, b = paired_arms(0.0, 0.05, 10)
    a[:8] = np.nan
    r = one(a, b, kind="equivalence")
    assert r.verdict != "supported" and r.evidence.blocked
    assert "80% vs 0%" in r.explanation and "cannot be called equivalent" in r.explanation
    difference = one(a, b)
    assert difference.verdict == "supported" and difference.evidence.zero_test == "worst-rank Wilcoxon"
    assert difference.explanation.startswith("a trails b")


def test_survivors_do_not_make_a_failing_arm_look_better():
    a, b = paired_arms(0.0, 0.2, 10, seed=5)
    a[[1, 4, 6, 8]] = np.nan  # 4 of 10 diverged
    r = one(a, b, kind="equivalence")
    assert r.verdict == "inconclusive" and "40% vs 0%" in r.explanation
    assert r.p_superiority <= 6 / 10  # same-seed wins: a loses every seed it failed


# --- degenerate data -------------------------------------------------------------------------


def test_zero_variance_is_degenerate_not_equivalent(strict):
    stuck = [10.0] * 5
    for kind in ("difference", "equivalence"):
        r = one(stuck, stuck, kind=kind)
        assert r.verdict == "degenerate" and "zero variance" in r.explanation
    unpaired = stats.analyze(frame({"a": stuck, "b": [10.0] * 3}, seeds={"b": range(7, 10)}),
                             [Comparison("a", "b", "equivalence")], calibration_draws=0).pairs[0]
    assert unpaired.verdict == "degenerate" and "seeds per arm would" not in unpaired.explanation


def test_one_seed_per_arm_is_degenerate_and_a_missing_arm_too(strict):
    assert one([97.0], [96.0]).verdict == "degenerate"
    r = stats.analyze(frame({"a": [97.0, 97.2, 97.1]}), [Comparison("a", "ghost")], calibration_draws=0).pairs[0]
    assert r.verdict == "degenerate"


def test_analyze_refuses_two_rows_for_one_seed():
    final = frame({"a": [97.0, 97.2, 97.1], "b": [96.0, 96.4, 96.1]}, seeds={"a": [0, 1, 1]})
    with pytest.raises(ValueError, match="more than one row for a seed"):
        stats.analyze(final, [Comparison("a", "b")])


# --- verdicts --------------------------------------------------------------------------------


def test_clear_difference_near_identical_and_big_gap():
    a, b = paired_arms(2.0, 0.2, 10)
    r = one(a, b)
    assert r.verdict == "supported" and r.explanation.startswith("a beats b by 2.")
    assert one(b, a).explanation.startswith("a trails b by 2.")
    assert one(a, b, kind="equivalence").verdict == "refuted"
    a, b = paired_arms(0.0, 0.05, 10)
    assert one(a, b).verdict == "refuted" and "equivalent" in one(a, b).explanation
    eq = one(a, b, kind="equivalence")
    assert eq.verdict == "supported" and eq.decision_confidence == pytest.approx(0.90)  # TOST: the 90% CI


def test_refuted_goes_through_the_family_correction():
    """A TOST p between alpha/3 and alpha refutes a difference alone, not in a family of three."""
    base = np.array([96.0, 96.5, 97.0, 97.5, 98.0, 96.8])
    close = base + [0.2, -0.6, 0.5, -0.1, 0.6, -0.2]
    alone = one(close, base)
    assert ALPHA / 3 < alone.evidence.p_equivalent < ALPHA and alone.verdict == "refuted"
    g = rng(7)
    arms = {"base": list(base), "x": list(close), "y": list(base + g.normal(0, 2, 6)), "z": list(base + g.normal(0, 2, 6))}
    family = stats.analyze(frame(arms), [Comparison(k, "base") for k in "xyz"], calibration_draws=0)
    assert family.pairs[0].evidence.p_equivalent == pytest.approx(alone.evidence.p_equivalent)
    assert family.pairs[0].verdict == "inconclusive"
    assert family.pairs[0].steps[0].thresholds["equivalent"] == pytest.approx(ALPHA / 3)


def test_a_negligible_but_real_difference_is_refuted_not_supported():
    g = rng(1)
    base = g.normal(90, 0.5, 30)
    r = one(base + 0.2 + g.normal(0, 0.05, 30), base)
    assert r.evidence.p_zero < ALPHA and r.evidence.p_equivalent < ALPHA
    assert r.verdict == "refuted"


def test_inconclusive_says_what_a_new_sweep_would_need_never_fewer_than_ran():
    a, b = rng(1).normal(97, 1, 5), rng(2).normal(97, 1, 5)
    r = one(a, b)
    assert r.verdict == "inconclusive" and r.seeds_needed > 5
    assert f"a new sweep planned for about {r.seeds_needed} seeds per arm" in r.explanation
    assert "exploratory" in r.explanation


def test_the_plan_stops_early_and_seeds_beyond_it_are_exploratory():
    a, b = paired_arms(2.0, 0.2, 12)
    analysis = stats.analyze(frame({"a": list(a), "b": list(b)}), [Comparison("a", "b")],
                             plan=stats.Plan((4, 8, 12)), calibration_draws=0)
    p = analysis.pairs[0]
    assert p.verdict == "supported" and p.seeds < 12 and analysis.closed
    assert analysis.seeds == p.seeds and analysis.saved == 0  # all 12 ran: the rest is exploratory
    assert [e.exploratory for e in analysis.exploratory] == [True]
    assert analysis.arms[0].n == p.seeds  # per-arm figures rest on the plan's seeds
    live = stats.analyze(frame({"a": list(a[:p.seeds]), "b": list(b[:p.seeds])}), [Comparison("a", "b")],
                         plan=stats.Plan((4, 8, 12)), calibration_draws=0)
    assert live.closed and live.saved == 12 - p.seeds and not live.exploratory  # as the replicate phase sees it


def test_analysis_with_fewer_seeds_than_the_plan_goes_on():
    a, b = rng(1).normal(97, 1, 5), rng(2).normal(97, 1, 5)
    analysis = stats.analyze(frame({"a": list(a), "b": list(b)}), [Comparison("a", "b")], plan=stats.Plan((5, 10, 20)),
                             calibration_draws=0)
    assert not analysis.closed and "the plan goes on to 20 seeds" in analysis.pairs[0].explanation


# --- sequential boundaries, power, tuning curves -------------------------------------------


@pytest.mark.parametrize("spending, expected", [("obrien_fleming", (3.710, 2.511, 1.993)), ("pocock", (2.279, 2.295, 2.296))])
def test_boundaries_match_published_lan_demets_values(spending, expected):
    """Three equally spaced looks, one-sided alpha 0.025 (gsDesign sfLDOF / sfLDPocock)."""
    levels = stats.Plan((1, 2, 3), spending).levels(0.025)
    assert [st.norm.isf(x) for x in levels] == pytest.approx(expected, abs=2e-3)


def test_seeds_needed_against_statsmodels_with_family_and_sd_uncertainty():
    n = stats.seeds_needed(0.5, 0.5, paired=True, kind="difference")
    assert n == math.ceil(TTestPower().solve_power(1.0, alpha=ALPHA, power=0.8))
    assert stats.seeds_needed(0.5, 0.5, paired=True, kind="difference", family=3) > n
    assert stats.seeds_needed(0.5, 0.5, paired=True, kind="difference", sd_seeds=3) > n
    assert stats.seeds_needed(0.001, 0.5, paired=True, kind="difference", at_least=11) == 11
    assert stats.seeds_needed(float("nan"), 0.5, paired=True, kind="difference") == stats.SEEDS_CAP


def test_expected_best_is_the_expected_maximum_of_k_draws_by_enumeration():
    scores = [0.2, 0.9, 0.5, 0.7]
    mean, sd = stats.expected_best(scores)
    for k in (1, 2, 3):
        maxima = [max(t) for t in itertools.product(scores, repeat=k)]
        assert mean[k - 1] == pytest.approx(np.mean(maxima)) and sd[k - 1] == pytest.approx(np.std(maxima))
    assert np.all(np.diff(mean) > 0)
    low, _ = stats.expected_best(scores, maximize=False)
    assert low[0] == pytest.approx(np.mean(scores)) and low[-1] < low[0]


def test_expected_best_in_blocks_of_k_matches_the_whole_formula():
    scores = np.random.default_rng(0).normal(size=600)  # past two blocks of 256 rows
    mean, sd = stats.expected_best(scores)
    v, cdf = np.sort(scores), np.arange(601) / 600
    for k in (1, 256, 257, 300, 600):
        weights = cdf[1:] ** k - cdf[:-1] ** k
        assert mean[k - 1] == pytest.approx(weights @ v) and sd[k - 1] == pytest.approx(np.sqrt(weights @ v**2 - (weights @ v) ** 2))
    assert mean[0] == pytest.approx(scores.mean()) and np.all(np.diff(mean) >= -1e-12)  # more trials never expect a worse best
