import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from bnsearch import stats
from bnsearch.spec import Comparison

ALPHA = stats.ALPHA
# The A/A rate over 2000 draws may exceed alpha by 3 binomial sds before we call it miscalibrated.
DRAWS = 2000
AA_LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / DRAWS)


@pytest.fixture
def strict():
    """Fail on any warning: degenerate data must be handled quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def rng(seed=0):
    return np.random.default_rng(seed)


# --- summaries -------------------------------------------------------------------------------


def test_summary_by_hand():
    s = stats.summarize([1, 2, 3, 4], arm="before", failed=1)
    assert (s.arm, s.n, s.n_failed) == ("before", 4, 1)
    assert s.failure_rate == pytest.approx(1 / 5)
    assert s.mean == pytest.approx(2.5)
    assert s.sd == pytest.approx(math.sqrt(5 / 3))
    assert (s.median, s.min, s.max) == (2.5, 1, 4)
    assert s.ci_low < s.mean < s.ci_high


def test_iqm_is_the_mean_of_the_middle_half_and_ignores_an_outlier():
    assert stats.summarize(range(1, 9)).iqm == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert stats.summarize([1, 2, 3, 4, 5, 6, 7, 1000]).iqm == pytest.approx(4.5)


def test_summary_ci_is_scipys_bca_bootstrap():
    values = rng().normal(97, 0.4, 12)
    s = stats.summarize(values, seed=7)
    ref = st.bootstrap((values,), np.mean, method="BCa", rng=7).confidence_interval
    assert (s.ci_low, s.ci_high) == pytest.approx((ref.low, ref.high))
    assert stats.summarize(values, seed=7, confidence=0.8).ci_high < s.ci_high


def test_summary_ignores_non_finite_values():
    s = stats.summarize([1.0, np.nan, 3.0, np.inf])
    assert (s.n, s.mean) == (2, 2.0)


@pytest.mark.parametrize(
    "values, failed, n, mean, sd_is_nan, ci",
    [
        ([5.0], 0, 1, 5.0, True, (5.0, 5.0)),
        ([2.0, 2.0, 2.0], 0, 3, 2.0, False, (2.0, 2.0)),
    ],
)
def test_degenerate_summaries_collapse_the_ci_quietly(strict, values, failed, n, mean, sd_is_nan, ci):
    s = stats.summarize(values, failed=failed)
    assert (s.n, s.mean) == (n, mean)
    assert math.isnan(s.sd) == sd_is_nan
    assert (s.ci_low, s.ci_high) == ci


def test_an_arm_with_only_failures(strict):
    s = stats.summarize([], failed=3)
    assert (s.n, s.failure_rate) == (0, 1.0)
    assert math.isnan(s.mean) and math.isnan(s.ci_low)


# --- pairwise effect sizes and intervals, by hand ---------------------------------------------


def test_paired_difference_and_t_interval_by_hand():
    a, b = [3, 5, 4, 6], [1, 4, 2, 4]  # differences 2, 1, 2, 2: mean 1.75, sd 0.5, se 0.25
    r = stats.compare(a, b, paired=True)
    assert (r.paired, r.n_a, r.n_b, r.test) == (True, 4, 4, "paired t")
    assert r.difference == pytest.approx(1.75)
    half = st.t.ppf(0.975, df=3) * 0.25
    assert (r.ci_low, r.ci_high) == pytest.approx((1.75 - half, 1.75 + half))
    assert r.p_value == pytest.approx(2 * st.t.sf(1.75 / 0.25, df=3))
    assert r.sd == pytest.approx(0.5)


def j(df):
    """Hedges' exact small-sample correction."""
    return math.gamma(df / 2) / (math.sqrt(df / 2) * math.gamma((df - 1) / 2))


def test_hedges_g_by_hand():
    a, b = [2, 4, 6], [1, 2, 3]  # means 4 and 2, sds 2 and 1
    unpaired = stats.compare(a, b, paired=False)
    assert unpaired.hedges_g == pytest.approx(j(4) * 2 / math.sqrt((2 * 4 + 2 * 1) / 4))
    assert unpaired.sd == pytest.approx(math.sqrt(2.5))  # pooled
    assert j(4) == pytest.approx(1 - 3 / (4 * 4 - 1), rel=0.01)  # the textbook approximation
    paired = stats.compare(a, b, paired=True)  # g_av: over the average of the two sds
    assert paired.hedges_g == pytest.approx(j(2) * 2 / 1.5)
    assert stats.compare(b, a, paired=False).hedges_g == pytest.approx(-unpaired.hedges_g)


def test_probability_of_superiority_by_hand():
    a, b = [1, 2, 3], [0, 2, 2.5]
    # a=1 beats 0; a=2 beats 0 and ties 2 (half); a=3 beats all three: 5.5 of 9 pairs
    r = stats.compare(a, b, paired=False)
    assert r.p_superiority == pytest.approx(5.5 / 9)
    assert r.p_superiority == pytest.approx(st.mannwhitneyu(a, b).statistic / 9)
    assert stats.compare(b, a, paired=False).p_superiority == pytest.approx(3.5 / 9)


@pytest.mark.parametrize("paired", [True, False])
def test_superiority_ci_is_a_percentile_bootstrap_of_u_over_nm(paired):
    a, b = rng(1).normal(1, 1, 8), rng(2).normal(0, 1, 8)
    r = stats.compare(a, b, paired=paired, seed=3)
    ref = st.bootstrap(
        (a, b), lambda x, y: np.mean(np.subtract.outer(x, y) > 0) + np.mean(np.subtract.outer(x, y) == 0) / 2,
        paired=paired, vectorized=False, batch=1000, method="percentile", rng=3,
    ).confidence_interval
    assert r.p_superiority_ci == pytest.approx((ref.low, ref.high))
    assert r.p_superiority_ci[0] <= r.p_superiority <= r.p_superiority_ci[1]


# --- pairwise tests against scipy and statsmodels -------------------------------------------


def test_paired_tests_match_scipy_and_statsmodels():
    a = rng(1).normal(97, 0.3, 9)
    b = a - rng(2).normal(0.2, 0.3, 9)
    r = stats.compare(a, b, paired=True, sesoi=0.4, seed=5)
    t = st.ttest_rel(a, b)
    assert r.p_value == pytest.approx(t.pvalue)
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(t.confidence_interval(0.95)))
    assert (r.rank_test, r.rank_p) == ("Wilcoxon signed-rank", pytest.approx(st.wilcoxon(a, b).pvalue))
    assert r.tost_p == pytest.approx(ttost_paired(a, b, -0.4, 0.4)[0])
    perm = st.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples", rng=5)
    assert r.permutation_p == pytest.approx(perm.pvalue)


def test_unpaired_tests_match_scipy_and_statsmodels():
    a, b = rng(1).normal(97, 0.3, 7), rng(2).normal(96.7, 0.6, 11)
    r = stats.compare(a, b, paired=False, sesoi=0.4, seed=5)
    t = st.ttest_ind(a, b, equal_var=False)
    assert (r.test, r.n_a, r.n_b) == ("Welch t", 7, 11)
    assert r.p_value == pytest.approx(t.pvalue)
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(t.confidence_interval(0.95)))
    assert (r.rank_test, r.rank_p) == ("Mann-Whitney U", pytest.approx(st.mannwhitneyu(a, b).pvalue))
    assert r.tost_p == pytest.approx(ttost_ind(a, b, -0.4, 0.4, usevar="unequal")[0])
    perm = st.permutation_test((a, b), lambda x, y: np.mean(x) - np.mean(y), rng=5)
    assert r.permutation_p == pytest.approx(perm.pvalue, abs=0.01)  # Monte Carlo: same seed, batched


def test_holm_matches_statsmodels_and_passes_nan_through():
    p = [0.01, 0.04, 0.03, 0.2]
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    adjusted = stats.holm([0.01, float("nan"), 0.04])
    assert math.isnan(adjusted[1])
    assert [adjusted[0], adjusted[2]] == pytest.approx([0.02, 0.04])


def test_compare_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        stats.compare([1, 2], [1, 2], paired=True, kind="superiority")
    with pytest.raises(ValueError, match="paired"):
        stats.compare([1, 2, 3], [1, 2], paired=True)


@pytest.mark.parametrize("a, b", [([1.0], [2.0]), ([], [1.0, 2.0]), ([1.0, 1.0], [1.0, 1.0])])
def test_too_little_data_is_inconclusive_not_an_error(strict, a, b):
    r = stats.compare(a, b, paired=len(a) == len(b))
    if len(a) < 2:
        assert r.verdict == "inconclusive"
        assert "at least 2 finished seeds per arm are needed" in r.explanation
    assert r.verdict in {"supported", "refuted", "inconclusive"}


# --- power -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sd, seeds", [(0.2, 4), (0.3, 7), (0.5, 17)])
def test_the_guides_planning_figures(sd, seeds):
    n = stats.seeds_needed(sd, 0.5, paired=False, kind="difference")
    assert n == seeds
    assert stats.minimum_detectable_effect(sd, n, paired=False) <= 0.5
    assert stats.minimum_detectable_effect(sd, n - 1, paired=False) > 0.5


@pytest.mark.parametrize("sd", [0.15, 0.4, 1.3])
def test_seeds_needed_solves_statsmodels_power_equations(sd):
    effect = 0.5 / sd
    paired = stats.seeds_needed(sd, 0.5, paired=True, kind="difference")
    assert paired == math.ceil(TTestPower().solve_power(effect, alpha=0.05, power=0.8))
    # TOST with a true difference of 0: one-sided alpha on each side, power 1 - 0.2 / 2
    equivalent = stats.seeds_needed(sd, 0.5, paired=False, kind="equivalence")
    tost = TTestIndPower().solve_power(effect, alpha=0.05, power=0.9, alternative="larger")
    assert equivalent == math.ceil(tost)


def test_pairing_needs_fewer_seeds_and_detects_smaller_effects():
    assert stats.seeds_needed(0.5, 0.5, paired=True, kind="difference") < 17
    assert stats.minimum_detectable_effect(0.3, 10, paired=True) < stats.minimum_detectable_effect(0.3, 10, paired=False)


def test_degenerate_planning(strict):
    assert stats.seeds_needed(0.0, 0.5, paired=False, kind="difference") == 2
    assert stats.seeds_needed(float("nan"), 0.5, paired=True, kind="difference") == stats.SEEDS_CAP
    assert stats.seeds_needed(5.0, 0.001, paired=False, kind="equivalence") == stats.SEEDS_CAP
    assert stats.seeds_needed(0.001, 0.5, paired=False, kind="difference") == 2  # huge effect
    assert stats.minimum_detectable_effect(0.0, 5, paired=False) == 0.0
    assert math.isnan(stats.minimum_detectable_effect(0.3, 1, paired=True))


# --- verdicts --------------------------------------------------------------------------------


def paired_arms(gap, sd, n, seed=0):
    base = rng(seed).normal(97, 0.5, n)  # seed-to-seed variation shared by both arms
    return base + gap + rng(seed + 1).normal(0, sd, n), base + rng(seed + 2).normal(0, sd, n)


def test_a_clear_difference_is_supported():
    a, b = paired_arms(2.0, 0.2, 10)
    r = stats.compare(a, b, a_name="before", b_name="none", paired=True)
    assert r.verdict == "supported"
    assert r.p_adjusted == r.p_value < ALPHA
    assert r.explanation.startswith("before beats none by 2.")
    assert "paired t" in r.explanation and r.explanation.endswith("supported.")
    assert r.hedges_g > 0.8 and r.p_superiority > 0.9


def test_a_clear_deficit_reads_as_trailing():
    b, a = paired_arms(2.0, 0.2, 10)
    assert stats.compare(a, b, a_name="x", b_name="y", paired=True).explanation.startswith("x trails y by 2.")


def test_near_identical_arms_refute_a_difference_and_support_equivalence():
    a, b = paired_arms(0.0, 0.05, 10)
    difference = stats.compare(a, b, paired=True, kind="difference")
    assert difference.verdict == "refuted"
    assert difference.tost_p < ALPHA and "equivalent" in difference.explanation
    equivalence = stats.compare(a, b, paired=True, kind="equivalence")
    assert equivalence.verdict == "supported"
    assert equivalence.p_adjusted == equivalence.tost_p


def test_a_big_gap_refutes_equivalence():
    a, b = paired_arms(2.0, 0.2, 10)
    r = stats.compare(a, b, paired=True, kind="equivalence", sesoi=0.5)
    assert r.ci_low > 0.5
    assert r.verdict == "refuted"


def test_tiny_noisy_samples_are_inconclusive_and_say_what_would_settle_them():
    a, b = rng(1).normal(97, 2, 3), rng(2).normal(97, 2, 3)
    for kind in ("difference", "equivalence"):
        r = stats.compare(a, b, paired=False, kind=kind)
        assert r.verdict == "inconclusive"
        expected = stats.seeds_needed(r.sd, 0.5, paired=False, kind=kind)
        assert expected > 3
        assert f"about {expected} seeds per arm would settle it" in r.explanation


def frame(rows):
    return pd.DataFrame(rows, columns=["arm", "seed", "value", "failed"])


def arm_rows(arm, values, seeds=None, failed=()):
    seeds = range(len(values)) if seeds is None else seeds
    return [(arm, s, np.nan if s in failed else v, s in failed) for s, v in zip(seeds, values)]


def test_holm_turns_a_borderline_difference_inconclusive_in_a_family():
    base = np.array([96.0, 96.5, 97.0, 97.5, 98.0, 96.8])
    borderline = base + [0.9, 0.3, 1.2, 0.4, 1.1, -0.1]
    alone = stats.compare(borderline, base, paired=True)
    assert ALPHA / 3 < alone.p_value < ALPHA and alone.verdict == "supported"
    noisy = [base + rng(i).normal(0, 1.5, 6) for i in range(2)]
    final = frame(arm_rows("base", base) + arm_rows("x", borderline)
                  + arm_rows("y", noisy[0]) + arm_rows("z", noisy[1]))
    family = [Comparison("x", "base"), Comparison("y", "base"), Comparison("z", "base")]
    analysis = stats.analyze(final, family)
    x = analysis.pairs[0]
    assert x.p_value == pytest.approx(alone.p_value)
    assert x.p_adjusted == pytest.approx(stats.holm([p.p_value for p in analysis.pairs])[0])
    assert x.p_adjusted >= ALPHA
    assert x.verdict == "inconclusive"
    assert "Holm p" in x.explanation and "seeds per arm would settle it" in x.explanation


# --- analyze ---------------------------------------------------------------------------------


def test_analyze_pairs_by_shared_seed_and_drops_a_seed_failed_in_either_arm():
    a = rng(1).normal(97, 0.3, 6)
    b = a - 0.4 + rng(2).normal(0, 0.1, 6)
    rows = arm_rows("a", a) + arm_rows("b", b, failed={2})[::-1]  # b listed in reverse seed order
    rows.append(("c", 15, 50.0, True))  # diverged: a finite value still counts as a failure
    rows += arm_rows("c", rng(3).normal(96, 0.5, 5), seeds=range(10, 15))
    analysis = stats.analyze(frame(rows), [Comparison("a", "b"), Comparison("a", "c", kind="equivalence")],
                             metric="val_accuracy")
    assert (analysis.metric, analysis.alpha) == ("val_accuracy", ALPHA)

    arms = {s.arm: s for s in analysis.arms}
    assert [s.arm for s in analysis.arms] == ["a", "b", "c"]
    assert (arms["b"].n, arms["b"].n_failed, arms["b"].failure_rate) == (5, 1, pytest.approx(1 / 6))
    assert (arms["c"].n, arms["c"].n_failed) == (5, 1)
    assert arms["c"].min > 50

    ab, ac = analysis.pairs
    keep = [0, 1, 3, 4, 5]
    assert (ab.paired, ab.n_a, ab.n_b) == (True, 5, 5)
    assert ab.p_value == pytest.approx(st.ttest_rel(a[keep], b[keep]).pvalue)
    assert (ac.paired, ac.n_a, ac.n_b, ac.kind) == (False, 6, 5, "equivalence")
    assert ac.p_value == pytest.approx(st.ttest_ind(a, arms_c_values(rows), equal_var=False).pvalue)
    assert [ab.p_adjusted, ac.p_adjusted] == pytest.approx(stats.holm([ab.p_value, ac.tost_p]))
    assert set(analysis.aa) == {"a", "b", "c"}
    assert all(0 <= rate <= 1 for rate in analysis.aa.values())


def arms_c_values(rows):
    return np.array([v for arm, _, v, failed in rows if arm == "c" and not failed])


def test_arms_sharing_a_single_finished_seed_are_compared_as_independent():
    a, b = rng(1).normal(97, 0.3, 5), rng(2).normal(96, 0.3, 5)
    final = frame(arm_rows("a", a) + arm_rows("b", b, seeds=[4, 5, 6, 7, 8]))
    r = stats.analyze(final, [Comparison("a", "b")]).pairs[0]
    assert (r.paired, r.n_a, r.n_b) == (False, 5, 5)
    assert r.p_value == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)


def test_analyze_skips_the_aa_check_for_small_arms_and_survives_a_missing_arm(strict):
    final = frame(arm_rows("a", [97.0, 97.2, 97.1]) + arm_rows("b", [96.0, 96.4, 96.1, 96.3]))
    analysis = stats.analyze(final, [Comparison("a", "b"), Comparison("a", "ghost")])
    assert set(analysis.aa) == {"b"}
    ghost = analysis.pairs[1]
    assert (ghost.n_b, ghost.verdict) == (0, "inconclusive")


# --- A/A calibration -------------------------------------------------------------------------


NORMAL = rng(10).normal(97, 0.3, 40)
SKEWED = 100 * rng(11).beta(60, 2, 40)  # accuracy-like: bunched near the ceiling, long low tail


@pytest.mark.parametrize("values", [NORMAL, SKEWED], ids=["normal", "skewed"])
@pytest.mark.parametrize("n", [5, 7, 10])
@pytest.mark.parametrize("paired", [False, True])
def test_the_difference_test_is_calibrated_on_aa_splits(values, n, paired):
    rate, low, high = stats.aa_false_positive_rate(values, n, draws=DRAWS, paired=paired, seed=n)
    assert low <= rate <= high
    assert rate <= AA_LIMIT


def test_aa_with_too_few_values_bootstraps_instead_of_splitting():
    rate, low, high = stats.aa_false_positive_rate(NORMAL[:12], 8, draws=DRAWS)  # 16 > 12 values
    assert 0 < rate <= AA_LIMIT and low <= rate <= high


def test_the_aa_check_catches_a_miscalibrated_test_and_a_real_difference():
    def welch(x, y):
        return st.ttest_ind(x, y, equal_var=False, axis=1).pvalue

    # A test that halves its p-values rejects twice as often as it claims.
    rate, low, _ = stats._rejection_rate(NORMAL, 8, lambda x, y: welch(x, y) / 2,
                                          draws=DRAWS, alpha=ALPHA, seed=0)
    assert low > AA_LIMIT and rate == pytest.approx(2 * ALPHA, abs=0.025)
    # Two genuinely different distributions (1.5 sd apart) through the same split and test.
    shift = 1.5 * NORMAL.std()
    rate, low, _ = stats._rejection_rate(NORMAL, 8, lambda x, y: welch(x + shift, y),
                                          draws=DRAWS, alpha=ALPHA, seed=0)
    assert low > 0.5


def test_analyze_refuses_two_rows_for_one_seed():
    final = frame(arm_rows("a", [97.0, 97.2, 97.1], seeds=[0, 1, 1]) + arm_rows("b", [96.0, 96.4, 96.1]))
    with pytest.raises(ValueError, match="more than one row for a seed"):
        stats.analyze(final, [Comparison("a", "b")])


def test_aa_splits_are_disjoint_when_there_are_enough_values():
    seen = {}

    def probe(x, y):
        seen["x"], seen["y"] = x, y
        return np.ones(len(x))

    values = np.arange(20.0)  # distinct, so a repeated value means a reused run
    stats._rejection_rate(values, 10, probe, draws=50, alpha=ALPHA, seed=0)
    both = np.concatenate([seen["x"], seen["y"]], axis=1)
    assert both.shape == (50, 20)
    assert all(len(set(row)) == 20 for row in both)  # each draw uses every run exactly once
    stats._rejection_rate(values, 11, probe, draws=50, alpha=ALPHA, seed=0)  # 22 > 20: bootstrap
    assert any(len(set(row)) < 22 for row in np.concatenate([seen["x"], seen["y"]], axis=1))


def test_a_supported_difference_smaller_than_the_sesoi_says_so():
    rng = np.random.default_rng(1)
    base = rng.normal(90, 0.5, 30)
    small = stats.compare(base + 0.3 + rng.normal(0, 0.05, 30), base, a_name="A", b_name="B", paired=True, sesoi=0.5)
    assert small.verdict == "supported" and "less than the ±0.5-point smallest effect of interest" in small.explanation
    large = stats.compare(base + 2 + rng.normal(0, 0.05, 30), base, a_name="A", b_name="B", paired=True, sesoi=0.5)
    assert large.verdict == "supported" and "smallest effect of interest" not in large.explanation


def test_an_inconclusive_equivalence_names_tost_and_a_hopeless_one_says_so():
    rng = np.random.default_rng(2)
    noisy = stats.compare(rng.normal(50, 30, 3), rng.normal(50, 30, 3), a_name="A", b_name="B", paired=True,
                          kind="equivalence", sesoi=0.5)
    assert noisy.verdict == "inconclusive" and "TOST, p" in noisy.explanation and "paired t" not in noisy.explanation
    assert noisy.seeds_needed == stats.SEEDS_CAP and f"more than {stats.SEEDS_CAP} seeds per arm" in noisy.explanation
