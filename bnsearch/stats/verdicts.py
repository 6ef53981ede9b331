"""Verdicts: every declared comparison judged through the sequential plan, the family's error held.

A comparison can make two claims whose null hypotheses cannot both be true: a difference is
*supported* (H0: the arms are equal) or *refuted* (H0: they differ by at least the SESOI); an
equivalence is *supported* (H0: they differ by at least the SESOI) or *refuted* (H0: they
differ by less). Holm's step-down over every claim of the family with that logical restriction
(Shaffer 1986) divides alpha by the number of comparisons that may still hold a true null, and a
decided comparison's other claim stays untested, so it never steps down: it is Bonferroni, each
claim at alpha / m for m comparisons, and the family-wise error stays at alpha whichever nulls
are true. Each claim spends its level over the plan's looks (:mod:`bnsearch.stats.sequential`);
a comparison closes at the first look where a claim is decided (when both of a difference's
claims are, the smaller-than-SESOI one wins: refuted), or where even the rest of the plan is
unlikely to decide it (futility). Data where no test applies (zero variance, too few seeds) is
*degenerate*: no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from bnsearch.stats.describe import describe
from bnsearch.stats.evidence import Evidence, contrast_evidence
from bnsearch.stats.power import SEEDS_CAP, minimum_detectable_effect, seeds_needed
from bnsearch.stats.sequential import Plan, conditional_power
from bnsearch.stats.summaries import ALPHA, NAN, ArmSummary, summarize, t_interval

# Per kind, the claims in the order they are checked, and the verdict each one's rejection gives.
CLAIMS = {"difference": {"zero": "supported", "equivalent": "refuted"},
          "equivalence": {"equivalent": "supported", "apart": "refuted"}}
FUTILITY = 0.1  # stop a comparison when the chance that the plan decides it falls below this,
FUTILITY_FROM = 0.5  # from half the plan's seeds on: earlier, the trend is too noisy (-2 points of power)
CALIBRATION_DRAWS = 400


@dataclass(frozen=True)
class Data:
    """Replicate results as seeds x arms (points; NaN: failed), which runs ran, and per arm the
    per-example test results (seeds x examples, NaN rows where none) if every finished run has them."""

    seeds: np.ndarray
    arms: list[str]
    values: np.ndarray
    ran: np.ndarray
    correct: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, final: pd.DataFrame, correct: dict[tuple[str, int], np.ndarray] | None = None) -> Data:
        if final.duplicated(["arm", "seed"]).any():
            arm = final[final.duplicated(["arm", "seed"])]["arm"].iloc[0]
            raise ValueError(f"arm {arm!r} has more than one row for a seed")
        bad = final["failed"].astype(bool) | ~np.isfinite(final["value"].astype(float))
        wide = final.assign(value=final["value"].astype(float).where(~bad), ran=True)
        arms = [str(a) for a in pd.unique(final["arm"])]
        values = wide.pivot(index="seed", columns="arm", values="value").reindex(columns=arms)
        ran = wide.pivot(index="seed", columns="arm", values="ran").reindex(columns=arms).fillna(False).astype(bool)
        seeds = values.index.to_numpy()
        examples = {}
        for j, arm in enumerate(arms):
            rows = [correct.get((arm, int(s))) if correct else None for s in seeds]
            finished = np.isfinite(values[arm].to_numpy())
            if correct and all(r is not None for r, f in zip(rows, finished) if f) and finished.any():
                width = len(next(r for r in rows if r is not None))
                examples[arm] = np.stack([np.asarray(r, dtype=float) if r is not None and f else np.full(width, NAN)
                                          for r, f in zip(rows, finished)])
        return cls(seeds, arms, values.to_numpy(dtype=float), ran.to_numpy(), examples)

    def head(self, n: int) -> Data:
        """The first ``n`` seeds: what the plan's look at ``n`` seeds saw."""
        return Data(self.seeds[:n], self.arms, self.values[:n], self.ran[:n], {a: c[:n] for a, c in self.correct.items()})

    def seeds_per_arm(self, comparison) -> int:
        """The most runs any arm of the comparison has among these seeds."""
        columns = [self.arms.index(a) for a in comparison.terms if a in self.arms]
        return int(self.ran[:, columns].sum(axis=0).max()) if columns and len(self.seeds) else 0

    def evidence(self, comparison, *, test_set=True) -> Evidence:
        terms = comparison.terms
        missing = [a for a in terms if a not in self.arms]
        columns = [self.arms.index(a) for a in terms if a in self.arms]
        if missing or not len(self.seeds):
            values, ran = np.full((0, len(terms)), NAN), np.zeros((0, len(terms)), dtype=bool)
        else:
            values, ran = self.values[:, columns], self.ran[:, columns]
        correct = [self.correct.get(a) for a in terms] if test_set and not missing and self.correct else None
        return contrast_evidence(values, np.array(list(terms.values())), comparison.sesoi, ran, correct)


@dataclass(frozen=True)
class Step:
    """One comparison at one look of the plan."""

    seeds: int
    evidence: Evidence
    thresholds: dict[str, float]  # claim -> the p below which it is decided at this look
    decided: str = ""  # the claim decided here, or ""
    futile: bool = False


@dataclass(frozen=True)
class PairResult:
    label: str
    a: str
    b: str
    kind: str  # "difference" | "equivalence"
    sesoi: float
    arms: tuple[str, ...]
    steps: tuple[Step, ...]  # the looks this comparison took part in
    verdict: str  # "supported" | "refuted" | "inconclusive" | "degenerate"
    claim: str  # the claim decided ("zero", "equivalent", "apart"), or ""
    decision_confidence: float  # the interval the verdict is decided on, at the level it spent
    decision_ci: tuple[float, float]
    seed_ci: tuple[float, float]  # 95%, seed variance only
    test_ci: tuple[float, float]  # 95%, seeds and the test set's examples (NaN without them)
    rank_test: str
    rank_p: float
    permutation_p: float
    p_superiority: float  # same-seed P(A>B) + P(tie)/2, a failure losing
    p_superiority_ci: tuple[float, float]  # Wilson 95% over seeds (paired only)
    hedges_g: float
    sd: float  # seed sd of the contrast (paired) or pooled sd
    mde: float  # minimum detectable effect at these seeds and the family's level
    seeds_needed: int  # per arm, for 80% power at the SESOI, planned for a new sweep
    failure_p: float  # Fisher's exact test of the failure rates (2-arm comparisons)
    explanation: str
    exploratory: bool = False

    @property
    def evidence(self) -> Evidence:
        return self.steps[-1].evidence

    @property
    def difference(self) -> float:
        return self.evidence.estimate

    @property
    def seeds(self) -> int:
        return self.steps[-1].seeds

    @property
    def closed(self) -> bool:
        """Decided, or stopped for futility: more seeds would not change this verdict. (Degenerate
        data is not closed: more seeds may give a test what it needs.)"""
        return bool(self.claim) or self.steps[-1].futile


@dataclass(frozen=True)
class Calibration:
    """The decision rule run on A/A data made from this sweep's own seeds."""

    draws: int
    false_claims: float  # share of simulated sweeps with at least one false claim of a difference
    low: float
    high: float


@dataclass(frozen=True)
class Analysis:
    metric: str
    alpha: float
    plan: Plan
    arms: list[ArmSummary]  # over the plan's seeds
    pairs: list[PairResult]
    seeds: int  # seeds per arm the verdicts rest on
    seeds_run: int
    exploratory: list[PairResult] = field(default_factory=list)  # every seed, outside the plan
    calibration: Calibration | None = None

    @property
    def closed(self) -> bool:
        """Every comparison is decided or futile: the plan needs no more seeds."""
        return all(p.closed for p in self.pairs)

    @property
    def saved(self) -> int:
        """Seeds per arm the plan did not need (and that did not run)."""
        return max(self.plan.looks[-1] - self.seeds_run, 0) if self.closed else 0


def analyze(final: pd.DataFrame, comparisons, *, plan: Plan | None = None, metric="test_accuracy", alpha=ALPHA,
            correct: dict[tuple[str, int], np.ndarray] | None = None, calibration_draws=CALIBRATION_DRAWS,
            seed=0) -> Analysis:
    """Judge every comparison through ``plan`` (default: one look at every seed that ran).

    ``final`` has one row per replicate run: ``arm``, ``seed``, ``value`` (points, NaN when
    failed) and ``failed``; ``correct`` maps (arm, seed) to that run's per-example test results,
    which put the test set's sampling error into the verdicts."""
    data = Data.of(final, correct)
    run = len(data.seeds)
    plan = plan or Plan((max(run, 1),))
    pairs = [judge(c, data, plan, alpha, len(comparisons)) for c in comparisons]
    used = max((p.seeds for p in pairs), default=min(run, plan.looks[-1]))  # the seeds the verdicts rest on
    closed = all(p.closed for p in pairs)
    exploratory = []
    if run > used and (closed or run > plan.looks[-1]):  # seeds beyond where the plan ended: never confirmatory
        exploratory = [judge(c, data, Plan((run,)), alpha, len(comparisons), exploratory=True) for c in comparisons]
    confirmed = data.head(used)
    arms = [summarize(confirmed.values[confirmed.ran[:, j], j], arm=arm, failed=int((confirmed.ran[:, j] & ~np.isfinite(confirmed.values[:, j])).sum()),
                      correct=_finished_rows(confirmed, j)) for j, arm in enumerate(data.arms)]
    calibration = calibrate(confirmed, comparisons, plan, alpha, draws=calibration_draws, seed=seed) if calibration_draws else None
    return Analysis(metric, alpha, plan, arms, pairs, used, run, exploratory, calibration)


def _finished_rows(data: Data, j: int):
    c = data.correct.get(data.arms[j])
    return None if c is None else c[np.isfinite(data.values[:, j]) & data.ran[:, j]]


def judge(comparison, data: Data, plan: Plan, alpha: float, family: int, *, exploratory=False) -> PairResult:
    """One comparison's verdict through the plan's looks, with everything that describes it."""
    steps = decide(comparison, data, plan, alpha, family)
    return _result(comparison, data.head(plan.looks[len(steps) - 1]), steps, plan, alpha, family, exploratory)


def thresholds(plan: Plan, alpha: float, family: int) -> list[dict[str, float]]:
    """Per look, the p below which each claim is decided: alpha / family per claim, spent over the
    looks; zero and apart are two-sided (half each way), TOST's equivalence one-sided."""
    level = alpha / family
    two_sided, one_sided = plan.levels(level / 2), plan.levels(level)
    return [{"zero": 2 * two, "apart": 2 * two, "equivalent": one} for two, one in zip(two_sided, one_sided)]


def decide(comparison, data: Data, plan: Plan, alpha: float, family: int) -> list[Step]:
    """The looks one comparison takes part in, each claim at level alpha / family; the last step
    is where it was decided, stopped for futility, or ran out of seeds or plan."""
    per_look = thresholds(plan, alpha, family)
    claims = CLAIMS[comparison.kind]
    steps = []
    for k, n in enumerate(plan.looks):
        if n > len(data.seeds) and steps:
            break
        seen = data.head(n)
        ev = seen.evidence(comparison)
        p = {"zero": ev.p_zero, "equivalent": ev.p_equivalent, "apart": ev.p_apart}
        rejected = [c for c in claims if p[c] < per_look[k][c]]
        decided = "equivalent" if "equivalent" in rejected else (rejected[0] if rejected else "")
        last = k == len(plan.looks) - 1
        t = n / plan.looks[-1]
        futile = not decided and not last and t >= FUTILITY_FROM and _futile(ev, comparison, t, per_look[-1])
        steps.append(Step(seen.seeds_per_arm(comparison), ev, per_look[k], decided, futile))
        if decided or futile or n >= len(data.seeds):
            break
    return steps


def _futile(ev: Evidence, comparison, t: float, final: dict[str, float]) -> bool:
    """Whether every claim of the comparison has less than FUTILITY conditional power at the plan's
    last look, the effect staying as it is now (non-binding: it can only lower the error)."""
    if ev.degenerate or not (ev.se > 0):
        return False
    s, est = comparison.sesoi, ev.estimate
    power = {"zero": conditional_power(abs(est) / ev.se, t, final["zero"] / 2),
             "apart": conditional_power((abs(est) - s) / ev.se, t, final["apart"] / 2),
             "equivalent": min(conditional_power((est + s) / ev.se, t, final["equivalent"]),
                               conditional_power((s - est) / ev.se, t, final["equivalent"])) if not ev.blocked else 0.0}
    return all(power[c] < FUTILITY for c in CLAIMS[comparison.kind])


def _result(comparison, data: Data, steps: list[Step], plan: Plan, alpha: float, family: int, exploratory: bool) -> PairResult:
    ev, last = steps[-1].evidence, steps[-1]
    kind, s = comparison.kind, comparison.sesoi
    claim = last.decided
    verdict = CLAIMS[kind][claim] if claim else "degenerate" if ev.degenerate and not math.isfinite(ev.p_zero) else "inconclusive"
    decided_on = claim or ("zero" if kind == "difference" else "equivalent")
    p_level = last.thresholds[decided_on]
    confidence = 1 - p_level if decided_on != "equivalent" else 1 - 2 * p_level
    a, b = comparison.sides
    if all(arm in data.arms for arm in comparison.terms) and len(data.seeds):
        columns = [data.arms.index(arm) for arm in comparison.terms]
        described = describe(data.values[:, columns], data.ran[:, columns], np.array(list(comparison.terms.values())), ev)
    else:
        described = describe(np.zeros((0, 2)), np.zeros((0, 2), dtype=bool), np.array([1, -1]), ev)
    paired, n = ev.paired, ev.n
    sd = described.pop("sd")
    level = alpha / family
    mde = minimum_detectable_effect(sd, n, paired=paired, alpha=level)
    if ev.with_test_set and ev.seed_se > 0:  # the test set's error widens what the seeds can detect
        mde *= ev.se / ev.seed_se
    test_set_se = math.sqrt(max(ev.se**2 - ev.seed_se**2, 0.0)) if ev.with_test_set else 0.0
    needed = seeds_needed(sd, s, paired=paired, kind=kind, alpha=alpha, family=family, sd_seeds=n, at_least=n + 1,
                          test_set_se=test_set_se)
    result = PairResult(
        comparison.label, a, b, kind, s, tuple(comparison.terms), tuple(steps), verdict, claim, confidence,
        t_interval(ev.estimate, ev.se, ev.df, confidence), t_interval(ev.estimate, ev.seed_se, ev.seed_df, 0.95),
        t_interval(ev.estimate, ev.se, ev.df, 0.95) if ev.with_test_set else (NAN, NAN),
        sd=sd, mde=mde, seeds_needed=needed,
        explanation="", exploratory=exploratory, **described)
    return _explain(result, plan)


def _fmt_p(p) -> str:
    return "< 0.0001" if p < 1e-4 else f"= {p:.2g}"


def _explain(r: PairResult, plan: Plan) -> PairResult:
    ev, step = r.evidence, r.steps[-1]
    where = "" if len(plan.looks) == 1 else f" at look {len(r.steps)} of {len(plan.looks)}"
    ci = f"{r.decision_confidence:.1%} CI {r.decision_ci[0]:.2f} to {r.decision_ci[1]:.2f}".replace(".0%", "%")
    ci = ci if math.isfinite(r.decision_ci[0]) else "no CI"
    seeds = f"{step.seeds} seeds per arm{where}"
    within = f"within ±{r.sesoi:g} points"
    same = f"{r.a} and {r.b} are equivalent {within} (difference {ev.estimate:.2f}, {ci}; TOST p {_fmt_p(ev.p_equivalent)} < {step.thresholds['equivalent']:.2g}; {seeds})"
    if r.verdict == "supported" and r.claim == "zero" and ev.zero_test.startswith("worst-rank"):
        verb = "beats" if r.p_superiority > 0.5 else "trails"
        why = (f"{r.a} {verb} {r.b}, a failed run counting as the worst outcome (same-seed P(A>B) "
               f"{r.p_superiority:.2f}; {ev.zero_test} p {_fmt_p(ev.p_zero)} < {step.thresholds['zero']:.2g}; {seeds}); "
               f"on the seeds both finished the difference is {ev.estimate:.2f} points")
    elif r.verdict == "supported" and r.claim == "zero":
        verb = "beats" if ev.estimate > 0 else "trails"
        why = f"{r.a} {verb} {r.b} by {abs(ev.estimate):.2f} points ({ci}; {ev.zero_test} p {_fmt_p(ev.p_zero)} < {step.thresholds['zero']:.2g}; {seeds})"
        if abs(ev.estimate) < r.sesoi:  # real, but is it big enough to matter? say so
            why += f", though by less than the ±{r.sesoi:g}-point smallest effect of interest"
    elif r.claim == "equivalent":
        why = same
    elif r.claim == "apart":
        why = f"{r.a} and {r.b} differ by more than ±{r.sesoi:g} points ({ci}; {seeds})"
    elif r.verdict == "degenerate":
        why = f"{r.a} vs {r.b}: {ev.degenerate}, so no test applies ({seeds})"
    else:
        claim = "zero" if r.kind == "difference" else "equivalent"
        p = ev.p_zero if r.kind == "difference" else ev.p_equivalent
        test = f"{ev.zero_test if claim == 'zero' else 'TOST'} p {_fmt_p(p)}, needed < {step.thresholds[claim]:.2g}"
        if not math.isfinite(p):
            test = "no TOST: the failure rates differ" if claim == "equivalent" and ev.blocked else "no test"
        why = (f"{r.a} minus {r.b} is {ev.estimate:.2f} points ({ci}; {test}; {seeds}), showing neither "
               f"a difference nor equivalence {within}")
        if step.futile:
            why += "; stopped for futility: the rest of the plan had under a 10% chance to settle it"
    explanation = f"{why}: {r.verdict}"
    if any(rate > 0 for rate in ev.failure_rates):
        rates = " vs ".join(f"{rate:.0%}" for rate in ev.failure_rates)
        explanation += f". Failed runs count: failure rates {rates}" + (f" (Fisher's exact p {_fmt_p(r.failure_p)})" if math.isfinite(r.failure_p) else "")
        if ev.blocked:
            explanation += ", so they cannot be called equivalent"
    if r.verdict == "inconclusive" and not r.exploratory:
        explanation += "; " + _what_would_settle(r, ev, step, plan)
    if r.exploratory:
        explanation += " (exploratory: seeds outside the plan, not a confirmatory verdict)"
    return replace(r, explanation=explanation + ".")


def _what_would_settle(r: PairResult, ev: Evidence, step: Step, plan: Plan) -> str:
    if step.seeds < plan.looks[-1] and not step.futile:
        return f"the plan goes on to {plan.looks[-1]} seeds per arm"
    if ev.blocked and r.kind == "equivalence":
        return "while the failure rates differ, no number of seeds makes the arms equivalent: find what makes the runs fail"
    if not math.isfinite(r.sd):
        return "there is no seed-to-seed sd to plan a new sweep from"
    if r.seeds_needed >= SEEDS_CAP and ev.with_test_set:
        return ("the test set's own sampling error alone is too large for this SESOI: more seeds cannot settle it, a "
                "larger test set can")
    if r.seeds_needed >= SEEDS_CAP:
        return f"more than {SEEDS_CAP} seeds per arm would be needed: the seeds spread too widely for this SESOI"
    return (f"a new sweep planned for about {r.seeds_needed} seeds per arm could settle it (seeds added to this "
            "one are exploratory)")


def calibrate(data: Data, comparisons, plan: Plan, alpha: float, *, draws=CALIBRATION_DRAWS, seed=0) -> Calibration | None:
    """A/A check of the rule itself: sweeps simulated from this sweep's seeds, every seed's results
    shuffled across the arms (so nothing differs, while the seed-to-seed spread and pairing stay),
    run through the same plan, family and tests. Returns the share with a false claim of a
    difference (a supported difference or a refuted equivalence)."""
    if len(data.seeds) < 3 or not comparisons:
        return None
    rng = np.random.default_rng(seed)
    n = plan.looks[-1]
    false = 0
    for _ in range(draws):
        rows = rng.integers(0, len(data.seeds), n)
        order = rng.random((n, len(data.arms))).argsort(axis=1)
        values, ran = data.values[rows[:, None], order], data.ran[rows[:, None], order]
        fake = Data(np.arange(n), data.arms, values, ran)
        false += any(_false_claim(c, decide(c, fake, plan, alpha, len(comparisons))) for c in comparisons)
    low, high = proportion_confint(false, draws, method="wilson")
    return Calibration(draws, false / draws, float(low), float(high))


def _false_claim(comparison, steps: list[Step]) -> bool:
    decided = steps[-1].decided
    return (comparison.kind, decided) in {("difference", "zero"), ("equivalence", "apart")}
