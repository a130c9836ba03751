"""Equal-budget comparison: what each strategy reaches for what it costs PER REPLICATE.

From the stored trials of a search, smaller searches are replayed: a grid of k points uses the k grid
values at the centres of k equal slices of the sorted grid (index ⌊(j + ½)·G/k⌋, j = 0…k−1: one point
is the middle value, G points the whole grid); TPE's first n points are its first n ρ values in the
order their first trial finished. Each replay selects ρ* as the search does (mean validation accuracy
over seeds, :func:`hpo_bench.selection.select`) and reports the test accuracy at ρ* per seed (see
:data:`BUDGET_TEXT` for which runs); its cost per replicate is one seed's trials at those points plus
the evaluation run (:func:`hpo_bench.report.entries.replicate_costs`).
Plain methods (LETS and its 3-pass variant, the exact hypergradient, AE-SAM, SAM, ...) are one run."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hpo_bench.report.document import _ci, _count, _p, _pct, _setting_title
from hpo_bench.report.entries import Entry, evaluation_runs, replicate_costs
from hpo_bench.report.figures import _legend, _log_x, _panels, _title, _yerr, collapsed, zoom_accuracy
from hpo_bench.report.verdicts import reference
from hpo_bench.selection import select
from hpo_bench.stats import Interval, compare, compare_family, holm, mean_ci

BUDGET_TEXT = ("Smaller searches replayed from the stored trials: a grid of k points uses the k grid values at the "
               "centres of k equal slices of the sorted grid (index ⌊(j + ½)·G/k⌋, j = 0…k−1: one point is the "
               "middle value, G points the whole grid); TPE's first n points are its first n ρ values in the order "
               "their first trial finished. Each replay selects ρ* as the search does (mean validation accuracy over "
               "seeds) and reports the test accuracy at ρ* per seed: that of the search's evaluation runs when its ρ* "
               "is the search's own (then paired by seed with the other methods), else that of its selection runs at "
               "ρ* (marked †: other seeds, so not paired, and optimistic since the same runs chose ρ*). Its cost per "
               "replicate is one seed's trials at those points plus, when the search has evaluation runs, one "
               "evaluation run. Plain methods cost one run per replicate.")


@dataclass
class Candidate:
    label: str
    entry: Entry
    points: str  # "k of G" for a replayed search, "" for a plain method
    seed_acc: dict
    seed_cost: dict  # seed -> grad evals per replicate
    acc: Interval = None
    cost: Interval = None
    rho: str = ""
    order: int = 0  # the k of a replayed search (its curve), 0 otherwise
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.acc = mean_ci(list(self.seed_acc.values()))
        self.cost = mean_ci(list(self.seed_cost.values()))


def spread(values: list, k: int) -> list:
    """The k of the sorted values at the centres of k equal slices (k ≥ len: all of them)."""
    values = sorted(values)
    g = len(values)
    if k >= g:
        return values
    return [values[int((j + 0.5) * g / k)] for j in range(k)]


def _replay(e: Entry, trials: pd.DataFrame, evals: pd.DataFrame, points: list) -> tuple[dict, dict, float, bool]:
    """(seed → test accuracy at the replay's ρ*, replicate → cost, ρ*, whether the accuracy comes from runs
    on the other methods' seeds). With evaluation runs, the accuracy at the search's own ρ* is theirs; at
    another ρ* only the selection runs exist (other seeds, not paired, optimistic by the selection)."""
    rows = trials[trials["rho0"].isin(points)]
    star = select(rows)["rho_star"]
    if math.isnan(star):
        return {}, {}, star, True
    own = len(evals) and np.isclose(star, e.rho_star)
    at = evals if own else rows[np.isclose(rows["rho0"].astype(float), star)]
    ok = at[at["status"] == "ok"]
    acc = {int(s): float(v) for s, v in ok.groupby("seed")["test_acc"].mean().items()}
    return acc, replicate_costs(rows, evals, "grad_evals"), star, bool(own or not len(evals))


def candidates(entries, setting) -> list:
    """Every strategy of a setting on the per-replicate axis, replayed searches included."""
    out = []
    for e in entries:
        if e.setting != setting or e.kind == "missing" or not e.has_acc:
            continue
        kind = e.search.split("/")[0] if e.kind == "search" else ""
        trials, evals = evaluation_runs(e.rows) if e.kind == "search" and e.rows is not None and len(e.rows) else \
            (None, None)
        if kind in ("grid", "tpe") and trials is not None and trials["rho0"].nunique() > 1:
            if kind == "grid":
                grid = sorted(trials["rho0"].dropna().unique())
                subsets = [spread(grid, k) for k in range(1, len(grid) + 1)]
                name = "points"
            else:
                first = trials.groupby("rho0")["finished_at"].min().sort_values(kind="stable")
                grid = list(first.index)
                subsets = [grid[:n] for n in range(1, len(grid) + 1)]
                name = "first points"
            for k, pts in enumerate(subsets, start=1):
                acc, cost, star, paired = _replay(e, trials, evals, pts)
                if not acc:
                    continue
                label = e.label if k == len(subsets) else f"{e.label}, {k} {name if k > 1 else name[:-1]}"
                out.append(Candidate(label, e, f"{k} of {len(subsets)}" + ("" if paired else " †"), acc, cost,
                                     rho=f"ρ*={star:g}" if not math.isnan(star) else "—", order=k))
            continue
        cost = e.cost_seeds.get("grad_evals", {})
        out.append(Candidate(e.label, e, "", dict(e.seed_acc), dict(cost), rho=e.rho_text))
    return sorted(out, key=lambda c: (c.cost.estimate if not math.isnan(c.cost.estimate) else math.inf, c.label))


def budget_section(doc, res, settings, entries, sam_cost) -> bool:
    """The equal-budget tables (all candidates; best strategy at each budget). False when no search was replayed."""
    per = {s: candidates(entries, s) for s in settings}
    if not any(c.order for cs in per.values() for c in cs):
        return False
    doc.section("Equal budget: the best strategy at each cost")
    doc.p(BUDGET_TEXT + " Cost: gradient evaluations per replicate (×: "
          "relative to one SAM run). Accuracy: mean [bootstrap 95 % interval] over seeds; Δ vs SAM: paired over "
          "seeds, Student-t interval, Wilcoxon p Holm-corrected across the rows of the table.")
    for s in settings:
        cs = per[s]
        if not cs:
            continue
        if len(settings) > 1:
            doc.h(4, _setting_title(res.setting_cols, s))
        ref = sam_cost(s)
        sam = reference([e for e in entries if e.setting == s], "sam", "SAM")
        groups = {c.label: c.seed_acc for c in cs}
        if sam is not None and sam.label not in groups:
            groups[sam.label] = sam.seed_acc
        comps = compare_family(groups, sam.label) if sam is not None else {}
        rows = []
        for c in cs:
            x = c.cost.estimate
            cost = _count(x) + (f" (×{x / ref:.2f})" if ref and not math.isnan(x) else "")
            comp = comps.get(c.label)
            d = ["reference", ""] if sam is not None and c.label == sam.label else \
                [_ci(comp.diff, signed=True), _p(comp.p_adj, comp.n)] if comp else ["—", "—"]
            rows.append([c.label, c.points or "—", c.rho, cost, _pct(c.acc.estimate, c.acc)] + d)
        doc.table(["strategy", "points", "ρ", "grad evals per replicate", "test acc (%) [95% CI]",
                   "Δ vs SAM (pp) [95% CI]", "p vs SAM (Holm)"], rows)
        _front_table(doc, cs, ref)
    return True


def _front_table(doc, cs, ref):
    """Best mean within each budget: a row whenever a costlier strategy has a higher mean, with its paired
    difference to the previous best (does the extra budget buy a significant gain?)."""
    front, best = [], -math.inf
    for c in cs:
        if not math.isnan(c.acc.estimate) and c.acc.estimate > best:
            front.append(c)
            best = c.acc.estimate
    comps = [compare(b.seed_acc, a.seed_acc) for a, b in zip(front, front[1:])]
    adj = holm([c.p for c in comps])
    rows = []
    for i, c in enumerate(front):
        x = c.cost.estimate
        budget = _count(x) + (f" (×{x / ref:.2f})" if ref else "")
        d = ["—", "—"] if i == 0 else [_ci(comps[i - 1].diff, signed=True), _p(adj[i - 1], comps[i - 1].n)]
        rows.append([budget, c.label, _pct(c.acc.estimate, c.acc)] + d)
    doc.p("Best strategy at budget B (grad evals per replicate ≤ B): each row is the cheapest strategy with a "
          "higher mean than every cheaper one; Δ: its paired gain over the previous row (Holm across the rows).")
    doc.table(["budget B", "best strategy", "test acc (%) [95% CI]", "Δ vs previous (pp) [95% CI]",
               "p (Holm)"], rows)


def fig_budget(res, settings, entries, styles):
    """Anytime curves on the per-replicate axis: each search replayed with 1, 2, … points (95 % band),
    the plain methods as points with their intervals."""
    per = {s: candidates(entries, s) for s in settings}
    keep = [s for s in settings if any(c.order for c in per[s])]
    if not keep:
        return None
    fig, axes = _panels(len(keep))
    for ax, s in zip(axes, keep):
        cs = [c for c in per[s] if not math.isnan(c.cost.estimate) and c.cost.estimate > 0]
        apart = collapsed({c.label: 100 * c.acc.estimate for c in cs})
        shown, xs = [], {}
        for e in {id(c.entry): c.entry for c in cs if c.order}.values():
            line = sorted((c for c in cs if c.entry is e and c.order), key=lambda c: c.order)
            color, marker = styles(e.label)
            x = [c.cost.estimate for c in line]
            y = [100 * c.acc.estimate for c in line]
            lo = [100 * (c.acc.low if c.acc.has_ci else c.acc.estimate) for c in line]
            hi = [100 * (c.acc.high if c.acc.has_ci else c.acc.estimate) for c in line]
            ax.plot(x, y, color=color, marker=marker, mfc="none", ms=6, lw=1.4, label=f"{e.label} (1…{len(line)} points)")
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
            shown += [(a, b) for a, b, c in zip(lo, hi, line) if c.label not in apart]
        plain = [c for c in cs if not c.order]
        same = {}
        for c in plain:  # strategies at the same cost are spread by a few % in x so that each stays visible
            same.setdefault(c.cost.estimate, []).append(c)
        for c in plain:
            color, marker = styles(c.label)
            group = same[c.cost.estimate]
            xs[c.label] = c.cost.estimate * (1 + 0.025 * (group.index(c) - (len(group) - 1) / 2))
            ax.errorbar([xs[c.label]], [100 * c.acc.estimate], yerr=_yerr(c.acc, c.acc.estimate), fmt=marker,
                        color=color, ms=7, capsize=3, label=c.label)
            if c.label not in apart:
                shown.append((100 * (c.acc.low if c.acc.has_ci else c.acc.estimate),
                               100 * (c.acc.high if c.acc.has_ci else c.acc.estimate)))
        _log_x(ax, [c.cost.estimate for c in cs])
        note = zoom_accuracy(ax, shown, {c.label: 100 * c.acc.estimate for c in cs if c.label in apart}, styles, xs)
        ax.set_xlabel("gradient evaluations per replicate (log)")
        ax.set_ylabel("test acc. at ρ* (%), 95 % CI")
        ax.set_title(_title(_setting_title(res.setting_cols, s) if len(settings) > 1 else "", note), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes, "strategy (lines: searches replayed)")
    return fig
