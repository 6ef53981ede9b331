"""Statistics over replicate results: summaries, evidence per comparison, the sequential plan,
power, verdicts and tuning-budget curves. Values are accuracy points (97.3, not 0.973).

The protocol (each part measured by simulation in ``tests/test_stats*.py``):

1. Summarize each arm over its seeds: mean, sd, median, IQM, min/max, the failure rate
   (diverged, collapsed, crashed), a Student-t 95% CI of the mean (it covers at 3 seeds, where
   BCa bootstrap intervals do not), and with per-example test results a second CI that adds
   the fixed test set's sampling error.
2. Each declared comparison (two arms, or an interaction: a difference of differences) gathers
   its evidence at each look of the group-sequential plan: paired by seed when the seeds are
   shared, failures counted as the worst outcome, the test set's error in the standard error
   when per-example results exist (:mod:`~bnsearch.stats.evidence`).
3. Verdicts: each claim at alpha / m for a family of m comparisons (Holm with the claims'
   logical restriction), spent over the looks by Lan-DeMets boundaries; stop for a decision
   or for futility; seeds beyond where the plan ended are exploratory
   (:mod:`~bnsearch.stats.verdicts`, :mod:`~bnsearch.stats.sequential`).
4. Calibrate the rule: A/A sweeps made from the sweep's own seeds, run through the same rule.
5. Tuning-budget curves from the search phase (:mod:`~bnsearch.stats.budget`).
"""

from bnsearch.stats.budget import expected_best
from bnsearch.stats.evidence import FAILURE_TOLERANCE, Evidence, contrast_evidence
from bnsearch.stats.power import KINDS, POWER, SEEDS_CAP, minimum_detectable_effect, seeds_needed
from bnsearch.stats.sequential import SPENDING, Plan
from bnsearch.stats.summaries import ALPHA, ArmSummary, summarize
from bnsearch.stats.verdicts import (
    CALIBRATION_DRAWS, CLAIMS, FUTILITY, FUTILITY_FROM, Analysis, Calibration, Data, PairResult, Step, analyze, calibrate,
    decide, judge, thresholds,
)

__all__ = [
    "ALPHA", "CALIBRATION_DRAWS", "CLAIMS", "FUTILITY", "FUTILITY_FROM", "FAILURE_TOLERANCE", "KINDS", "POWER", "SEEDS_CAP", "SPENDING", "Analysis", "ArmSummary",
    "Calibration", "Data", "Evidence", "PairResult", "Plan", "Step", "analyze", "calibrate", "contrast_evidence",
    "decide", "expected_best", "judge", "minimum_detectable_effect", "seeds_needed", "summarize", "thresholds",
]
