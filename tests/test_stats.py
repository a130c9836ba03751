"""The statistics behind the report's verdicts (hpo_bench.stats) on data with a known answer."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from hpo_bench.stats import (
    Interval,
    average_ranks,
    cliques,
    compare,
    compare_family,
    holm,
    mean_ci,
    min_wilcoxon_p,
    nemenyi_cd,
    pair,
    per_replicate_cost,
    prob_improvement,
    rank_summary,
    significant_best,
    t_ci,
    wilcoxon_p,
)


def _table(rng, n_seeds: int, effects: dict, noise: float = 0.01, shared: float = 0.02) -> dict:
    """{method: {seed: accuracy}}: a per-seed component shared by every method (what pairing removes),
    a planted effect per method, and independent noise."""
    base = rng.normal(0.85, shared, n_seeds)
    return {m: {s: float(base[s] + eff + rng.normal(0, noise)) for s in range(n_seeds)} for m, eff in effects.items()}


# ----------------------------------------------------------------------------- paired differences

def test_a_planted_paired_difference_is_detected_over_20_seeds():
    rng = np.random.default_rng(0)
    table = _table(rng, 20, {"SAM": 0.0, "A": 0.0, "B": 0.0, "winner": 0.02, "C": -0.002})
    comps = compare_family(table, "SAM")
    assert comps["winner"].n == 20 and comps["winner"].p_adj < 0.05
    assert comps["winner"].diff.excludes(0.0) and comps["winner"].diff.low > 0
    assert comps["winner"].prob.estimate > 0.75
    assert comps["A"].p_adj > 0.05 and comps["B"].p_adj > 0.05
    v = significant_best(table)
    assert v.best == "winner" and v.significant and v.winner == "winner"
    assert set(v.comparisons) == {"SAM", "A", "B", "C"} and all(c.p_adj < 0.05 for c in v.comparisons.values())


def test_null_differences_are_rejected_at_about_the_stated_rate():
    """200 simulated tables of 4 methods with no difference (10 seeds each): the Holm-corrected family
    rejects something in at most ~5 % of them, and a single uncorrected comparison in about 5 %."""
    rng = np.random.default_rng(1)
    family, single, best = 0, 0, 0
    reps = 200
    for _ in range(reps):
        table = _table(rng, 10, {"SAM": 0.0, "A": 0.0, "B": 0.0, "C": 0.0})
        comps = compare_family(table, "SAM")
        family += any(c.p_adj < 0.05 for c in comps.values())
        single += comps["A"].p < 0.05
        best += significant_best(table).significant
    assert family / reps <= 0.08
    assert single / reps <= 0.08
    assert best / reps <= 0.05


def test_pairs_are_matched_by_seed_and_n_is_stated():
    x = {0: 0.9, 1: 0.8, 2: 0.7, 5: 0.6}
    y = {1: 0.7, 2: 0.7, 5: 0.5, 7: 0.1}
    a, b, seeds = pair(x, y)
    assert seeds == [1, 2, 5] and list(a) == [0.8, 0.7, 0.6] and list(b) == [0.7, 0.7, 0.5]
    c = compare(x, y)
    assert c.n == 3 and c.diff.estimate == pytest.approx((0.1 + 0.0 + 0.1) / 3)
    assert compare({0: 1.0}, {1: 1.0}).n == 0 and math.isnan(compare({0: 1.0}, {1: 1.0}).p)


def test_wilcoxon_degenerate_cases():
    assert math.isnan(wilcoxon_p([]))
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0  # no difference at all: no evidence
    assert wilcoxon_p([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(0.0625) == min_wilcoxon_p(5)
    assert wilcoxon_p([0.0, 0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(0.0625)  # the zero is dropped
    assert min_wilcoxon_p(6) == pytest.approx(0.03125) and min_wilcoxon_p(0) == 1.0
    # two seeds can never be significant, and the report's rule then never bolds
    v = significant_best({"a": {0: 0.9, 1: 0.91}, "b": {0: 0.5, 1: 0.5}})
    assert v.best == "a" and not v.significant and v.comparisons["b"].p_adj == pytest.approx(0.5)


def test_holm_against_a_hand_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.02, math.nan, 0.04])  # NaN is not tested and not counted in m
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    assert len(holm([])) == 0


def test_probability_of_improvement_on_a_hand_example():
    # pairs: 1 > 0, 2 = 2 (½), 3 < 4, 4 > 1 → (1 + ½ + 0 + 1) / 4
    p = prob_improvement([1, 2, 3, 4], [0, 2, 4, 1])
    assert p.estimate == pytest.approx(0.625) and p.n == 4
    assert 0.0 <= p.low <= 0.625 <= p.high <= 1.0
    assert prob_improvement([1, 2], [0, 1]) == Interval(1.0, 1.0, 1.0, 2)


# ----------------------------------------------------------------------------- intervals

def test_bootstrap_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    reps, hits = 200, 0
    for i in range(reps):
        ci = mean_ci(rng.normal(3.0, 2.0, 20), n_resamples=2000, seed=i)
        hits += ci.low <= 3.0 <= ci.high
    assert 0.88 <= hits / reps <= 0.99


def test_mean_interval_is_reproducible_and_handles_few_values():
    x = [0.81, 0.84, 0.83, 0.88, 0.79]
    a, b = mean_ci(x), mean_ci(x)
    assert a == b and a.estimate == pytest.approx(np.mean(x)) and a.low < a.estimate < a.high
    ref = sps.bootstrap((np.array(x),), np.mean, n_resamples=9999, method="BCa", rng=np.random.default_rng(0))
    assert (a.low, a.high) == pytest.approx(tuple(ref.confidence_interval))
    assert math.isnan(mean_ci([]).estimate)
    one = mean_ci([0.7])
    assert one.estimate == 0.7 and not one.has_ci
    assert mean_ci([0.5, 0.5, 0.5]) == Interval(0.5, 0.5, 0.5, 3)
    assert mean_ci([0.5, math.nan, 0.7]).n == 2


def test_t_interval_hand_example():
    ci = t_ci([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.303
    assert ci.estimate == 2.0 and ci.high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert ci.excludes(-3.0) and not ci.excludes(0.0)


# ----------------------------------------------------------------------------- ranks

def test_average_ranks_friedman_and_cd_on_a_hand_example():
    scores = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.9], "b": [0.8, 0.8, 0.6, 0.7], "c": [0.7, 0.6, 0.8, math.nan]},
                          index=["s1", "s2", "s3", "s4"])
    # ranks per row (1 = best): s1 a1 b2 c3; s2 a1.5 b1.5 c3; s3 a2 b3 c1; s4 a1 b2 c3 (NaN last)
    ranks = average_ranks(scores)
    assert list(ranks.index) == ["a", "b", "c"]
    assert ranks.to_dict() == pytest.approx({"a": 5.5 / 4, "b": 8.5 / 4, "c": 10 / 4})
    summary = rank_summary(scores)
    n, k = 4, 3
    r = np.array([5.5, 8.5, 10]) / 4
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(r ** 2) - k * (k + 1) ** 2 / 4)  # without the ties correction
    assert summary.statistic >= chi2 - 1e-9 and 0 < summary.p < 1
    assert summary.cd == pytest.approx(nemenyi_cd(3, 4))


def test_nemenyi_critical_difference_matches_demsar_table():
    # Demšar (2006), Table 5(a): q_0.05 = 1.960, 2.343, 2.569, 2.728 for k = 2, 3, 4, 5
    for k, q in ((2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728)):
        assert nemenyi_cd(k, 10) == pytest.approx(q * math.sqrt(k * (k + 1) / 60), abs=2e-3)


def test_cliques_join_methods_within_the_critical_difference():
    ranks = pd.Series({"a": 1.0, "b": 1.5, "c": 2.4, "d": 3.9})
    assert cliques(ranks, 1.0) == [["a", "b"], ["b", "c"]]
    assert cliques(ranks, 3.0) == [["a", "b", "c", "d"]]
    assert cliques(ranks, 0.1) == []


# ----------------------------------------------------------------------------- cost per replicate

def test_per_replicate_cost_arithmetic():
    run = 2880.0  # one SAM run
    assert per_replicate_cost(final_cost=5 * run, final_runs=5) == run  # plain method, 5 seeds
    assert per_replicate_cost(search_cost=6 * 5 * run, search_replicates=5) == 6 * run  # grid 6 × 5 seeds
    assert per_replicate_cost(search_cost=6 * run, search_replicates=1) == 6 * run  # grid 6, one seed
    # nested selection: the selected model re-trained on each of 3 evaluation seeds adds one run each
    assert per_replicate_cost(search_cost=6 * 5 * run, search_replicates=5, final_cost=3 * run, final_runs=3) == 7 * run
    assert per_replicate_cost() == 0.0
    with pytest.raises(ValueError, match="allowed: search_replicates >= 1"):
        per_replicate_cost(search_cost=1.0, search_replicates=0)
