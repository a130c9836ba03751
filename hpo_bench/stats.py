"""The statistics behind the report's verdicts: pure numpy/scipy, no torch, no project imports.

Seeds are the replicates: the run of method A with seed s and the run of method B with seed s share
the data split, the initialization and the batch order, so comparisons PAIR runs by seed.

* :func:`mean_ci` — a mean with a bootstrap confidence interval (``scipy.stats.bootstrap``, BCa,
  percentile when BCa is degenerate; fixed seed, so the same numbers give the same interval).
* :func:`compare` — x − y over the seeds both have: the mean paired difference with a Student-t
  interval, the two-sided Wilcoxon signed-rank p (zero differences dropped, Wilcoxon's convention;
  p = 1 when every difference is 0, NaN without pairs), and the probability of improvement
  P(x > y) = the fraction of pairs with x > y, ties counting 1/2, with a bootstrap interval.
* :func:`holm` — Holm's step-down adjustment of a family of p-values (NaN entries are not tested).
* :func:`significant_best` — the method with the highest mean that every other method's paired
  difference to it confirms (Holm-adjusted Wilcoxon p < alpha against each); None otherwise.
* :func:`rank_summary` — average ranks across settings (blocks), Friedman's test and the Nemenyi
  critical difference CD = q_alpha sqrt(k(k+1)/(6N)), q_alpha = studentized range(1-alpha; k, inf)/sqrt 2,
  with the groups of methods whose ranks differ by less than CD (Demšar 2006).
* :func:`per_replicate_cost` — the cost of choosing ρ and producing ONE trained model.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

LEVEL = 0.95
ALPHA = 0.05
N_RESAMPLES = 9999
SEED = 0
MIN_SEEDS_FOR_VERDICT = 5


# ============================================================================= intervals

@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval (low/high NaN when it cannot be formed) over n values."""
    estimate: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0

    @property
    def has_ci(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def excludes(self, value: float = 0.0) -> bool:
        return self.has_ci and (self.low > value or self.high < value)


NO_INTERVAL = Interval(math.nan)


def _finite(values) -> np.ndarray:
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float).ravel()
    return x[np.isfinite(x)]


def _sample(values) -> tuple[np.ndarray, Interval | None]:
    """The finite values, and the interval already decided by their number (none: no value; one: no width)."""
    x = _finite(values)
    if len(x) == 0:
        return x, NO_INTERVAL
    return x, (Interval(float(x[0]), n=1) if len(x) == 1 else None)


def mean_ci(values, level: float = LEVEL, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
            method: str = "BCa") -> Interval:
    """Mean of the finite values with a bootstrap interval (BCa; percentile where BCa is degenerate).

    One value: no interval; all values equal: the interval is that value."""
    x, early = _sample(values)
    if early is not None:
        return early
    m, n = float(x.mean()), len(x)
    if np.ptp(x) == 0:
        return Interval(m, m, m, n)
    for how in dict.fromkeys((method, "percentile")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method=how,
                                vectorized=True, rng=np.random.default_rng(seed))
        lo, hi = (float(v) for v in res.confidence_interval)
        if math.isfinite(lo) and math.isfinite(hi):
            return Interval(m, min(lo, m), max(hi, m), n)
    return Interval(m, n=n)


def t_ci(values, level: float = LEVEL) -> Interval:
    """Mean with the Student-t interval mean ± t_{(1+level)/2, n-1} s/sqrt(n) (none for one value)."""
    x, early = _sample(values)
    if early is not None:
        return early
    m, n = float(x.mean()), len(x)
    half = float(sps.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(m, m - half, m + half, n)


# ============================================================================= paired comparisons

def pair(x: Mapping, y: Mapping) -> tuple[np.ndarray, np.ndarray, list]:
    """The values of x and y at the keys (seeds) both have with finite values, in sorted key order."""
    keys = sorted(k for k in x if k in y and np.isfinite(x[k]) and np.isfinite(y[k]))
    return (np.array([x[k] for k in keys], dtype=float), np.array([y[k] for k in keys], dtype=float), keys)


def wilcoxon_p(diffs) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences (zeros dropped); NaN without differences,
    1 when every difference is 0. scipy's exact null distribution up to 50 pairs without ties."""
    d = _finite(diffs)
    if len(d) == 0:
        return math.nan
    d = d[np.abs(d) > 1e-12]
    if len(d) == 0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto").pvalue)
    return min(1.0, p) if math.isfinite(p) else math.nan


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n non-zero pairs: 2 / 2^n."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2 ** n)


def prob_improvement(x, y, level: float = LEVEL, *, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Interval:
    """P(X > Y) over paired values: the fraction of pairs with x > y, ties counting 1/2; bootstrap interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    score = np.where(np.isclose(x, y, rtol=0, atol=1e-12), 0.5, (x > y).astype(float))
    return mean_ci(score, level, n_resamples=n_resamples, seed=seed, method="percentile")


@dataclass(frozen=True)
class Comparison:
    """x − y over n paired seeds: mean difference (t interval), Wilcoxon p (raw and family-adjusted), P(x > y)."""
    n: int
    diff: Interval
    p: float
    prob: Interval
    p_adj: float = math.nan

    def adjusted(self, p_adj: float) -> Comparison:
        return Comparison(self.n, self.diff, self.p, self.prob, p_adj)


def compare(x: Mapping, y: Mapping, level: float = LEVEL, *, seed: int = SEED) -> Comparison:
    """Compare x with y (mappings seed → value), pairing by seed."""
    a, b, _ = pair(x, y)
    if len(a) == 0:
        return Comparison(0, NO_INTERVAL, math.nan, NO_INTERVAL)
    d = a - b
    return Comparison(len(d), t_ci(d, level), wilcoxon_p(d), prob_improvement(a, b, level, seed=seed))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and is not counted in m)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    running = 0.0
    for i, j in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def compare_family(groups: Mapping[str, Mapping], reference: str, level: float = LEVEL) -> dict[str, Comparison]:
    """Every group but ``reference`` compared with it (group − reference), Holm-adjusted across the family."""
    comps = {k: compare(v, groups[reference], level) for k, v in groups.items() if k != reference}
    adj = holm([c.p for c in comps.values()])
    return {k: c.adjusted(float(a)) for (k, c), a in zip(comps.items(), adj)}


@dataclass(frozen=True)
class Verdict:
    """The highest mean of a table (``best``), and whether every other method is significantly below it."""
    best: str | None
    significant: bool
    comparisons: dict = field(default_factory=dict)  # other → Comparison(other − best), Holm across the others
    max_pairs: int = 0

    @property
    def winner(self) -> str | None:
        return self.best if self.significant else None


def significant_best(groups: Mapping[str, Mapping], alpha: float = ALPHA) -> Verdict:
    """The best-mean group is significant iff at least one other group exists and each other group's paired
    difference to it has a Holm-adjusted Wilcoxon p < alpha and a negative mean (ties for best: no winner)."""
    means = {k: float(np.mean(_finite(v.values()))) for k, v in groups.items() if len(_finite(v.values()))}
    if not means:
        return Verdict(None, False)
    top = max(means.values())
    leaders = [k for k, m in means.items() if m == top]
    best = leaders[0]
    comps = compare_family({k: groups[k] for k in means}, best)
    max_pairs = max((c.n for c in comps.values()), default=0)
    ok = (len(leaders) == 1 and bool(comps)
          and all(c.n > 0 and c.p_adj < alpha and c.diff.estimate < 0 for c in comps.values()))
    return Verdict(best, ok, comps, max_pairs)


# ============================================================================= ranks across settings

def average_ranks(scores: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Mean rank of each column (method) over the rows (blocks); rank 1 is best, ties share the mean rank,
    and a NaN (no result in that block) ranks last."""
    vals = scores.to_numpy(dtype=float)
    vals = np.where(np.isnan(vals), -np.inf if higher_is_better else np.inf, vals)
    ranks = sps.rankdata(-vals if higher_is_better else vals, axis=1)
    return pd.Series(ranks.mean(axis=0), index=scores.columns).sort_values(kind="stable")


def nemenyi_cd(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of average ranks for k methods over n_blocks blocks."""
    if k < 2 or n_blocks < 1:
        return math.nan
    q = float(sps.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def cliques(ranks: pd.Series, cd: float) -> list[list[str]]:
    """Maximal runs of methods (sorted by rank) whose average ranks differ by less than cd (not separable)."""
    r = ranks.sort_values(kind="stable")
    names, vals = list(r.index), r.to_numpy(float)
    out = []
    for i in range(len(vals)):
        j = i
        while j + 1 < len(vals) and vals[j + 1] - vals[i] < cd:
            j += 1
        group = names[i:j + 1]
        if len(group) > 1 and not any(set(group) <= set(g) for g in out):
            out.append(group)
    return out


@dataclass(frozen=True)
class RankSummary:
    ranks: pd.Series  # method → average rank, best first
    n_blocks: int
    statistic: float  # Friedman chi-square (NaN with fewer than 3 methods or 2 blocks)
    p: float
    cd: float
    groups: list


def rank_summary(scores: pd.DataFrame, higher_is_better: bool = True, alpha: float = ALPHA) -> RankSummary:
    """Average ranks, Friedman test and Nemenyi CD of a blocks × methods score table."""
    ranks = average_ranks(scores, higher_is_better)
    k, n = scores.shape[1], scores.shape[0]
    stat = p = math.nan
    if k >= 3 and n >= 2:
        vals = scores.to_numpy(dtype=float)
        vals = np.where(np.isnan(vals), -np.inf if higher_is_better else np.inf, vals)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                res = sps.friedmanchisquare(*(vals[:, j] for j in range(k)))
                stat, p = float(res.statistic), float(res.pvalue)
            except (ValueError, ZeroDivisionError, FloatingPointError):
                pass
        if not math.isfinite(stat):  # every block tied: no evidence of any difference
            stat, p = 0.0, 1.0
    cd = nemenyi_cd(k, n, alpha)
    return RankSummary(ranks, n, stat, p, cd, cliques(ranks, cd) if math.isfinite(cd) else [])


# ============================================================================= cost

def per_replicate_cost(search_cost: float = 0.0, search_replicates: int = 1, final_cost: float = 0.0,
                       final_runs: int = 0) -> float:
    """What it costs to choose ρ and produce ONE trained model (one replicate).

    ``search_cost``: the summed cost of the search's trials (0 for a plain method), covering
    ``search_replicates`` replicates (its seeds): each replicate's share is their ratio, i.e. the
    trials of one seed — a grid of G points costs G runs, whatever the number of seeds.
    ``final_cost``: the summed cost of the ``final_runs`` trainings that produce the models (a plain
    method's runs; a search's re-training at ρ* on evaluation seeds); each replicate needs one, so
    their mean is added. A search whose model is one of its own trials has no final runs.

    >>> per_replicate_cost(final_cost=3 * 2880.0, final_runs=3)  # plain SAM, 3 seeds
    2880.0
    >>> per_replicate_cost(search_cost=6 * 5 * 2880.0, search_replicates=5)  # grid of 6 points x 5 seeds
    17280.0
    """
    if search_replicates < 1 or final_runs < 0:
        raise ValueError(f"per_replicate_cost: search_replicates={search_replicates}, final_runs={final_runs}; "
                         "allowed: search_replicates >= 1, final_runs >= 0")
    share = float(search_cost) / search_replicates
    return share + (float(final_cost) / final_runs if final_runs else 0.0)
