"""Paired comparisons behind the tables (:mod:`hpo_bench.stats`): every method against SAM and against
ERM, and the rule that decides what is bold.

Seeds pair runs across methods (same split, initialization and batch order). Per setting, the
differences to SAM form one family and the differences to ERM another: their Wilcoxon p-values are
Holm-corrected across the methods of the table. A method is **significantly best** (bold) when it
has the highest mean and every other method's paired difference to it has a Holm-corrected
Wilcoxon p < 0.05 (:func:`hpo_bench.stats.significant_best`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from hpo_bench.report.document import _bold, _ci, _p
from hpo_bench.report.entries import Entry
from hpo_bench.stats import ALPHA, MIN_SEEDS_FOR_VERDICT, Verdict, compare_family, min_wilcoxon_p, significant_best

RULE = (f"**Bold** marks a significantly best method only: the highest mean AND every other method's paired "
        f"difference to it (pairs by seed) has a Holm-corrected two-sided Wilcoxon signed-rank p < {ALPHA:g} "
        "(Holm across the other methods of the table); no bold means no method is significantly best.")


def _ref_key(e: Entry, name: str) -> tuple:
    return (e.method.lower() != name.lower(), e.rho0 is not None and e.rho0 != 0.05, e.rho0 or 0.0)


def reference(entries, strategy: str, name: str) -> Entry | None:
    """The plain entry the table compares with: strategy ``strategy``, the one labelled ``name`` first, then
    the one run at ρ₀ = 0.05 when the method ran several ρ₀ values, else the first."""
    cands = [e for e in entries if e.kind == "plain" and e.strategy == strategy and e.has_acc and e.seed_acc]
    return min(cands, key=lambda e: _ref_key(e, name)) if cands else None


def key(e: Entry) -> str:
    return e.label + (f" [{e.search}]" if e.kind == "search" else "")


def groups(entries) -> dict:
    """{key: seed → test accuracy} of the entries with an accuracy."""
    return {key(e): e.seed_acc for e in entries if e.has_acc and e.seed_acc}


def bold_significant(cells: list, seed_groups: list) -> list:
    """Bold the cell whose group (seed → accuracy; None or {} for no accuracy) is significantly best."""
    v = significant_best({str(i): g for i, g in enumerate(seed_groups) if g})
    return cells if v.winner is None else [_bold(c) if str(i) == v.winner else c for i, c in enumerate(cells)]


def bold_winner(cells: list, entries: list) -> list:
    """Bold the cell of the significantly best entry (entries aligned with cells; None where no entry)."""
    return bold_significant(cells, [e.seed_acc if e is not None and e.has_acc else None for e in entries])


@dataclass
class SettingStats:
    sam: Entry | None
    erm: Entry | None
    vs_sam: dict = field(default_factory=dict)  # key → Comparison(entry − SAM), Holm across the table
    vs_erm: dict = field(default_factory=dict)
    verdict: Verdict = None
    n_seeds: int = 0  # the most seeds any method of the table has

    @property
    def smoke(self) -> bool:
        return self.n_seeds < MIN_SEEDS_FOR_VERDICT


def setting_stats(entries) -> SettingStats:
    """The comparisons of one table (the entries of one setting)."""
    sam, erm = reference(entries, "sam", "SAM"), reference(entries, "erm", "ERM")
    g = groups(entries)
    st = SettingStats(sam, erm, verdict=significant_best(g), n_seeds=max((len(v) for v in g.values()), default=0))
    if sam is not None:
        st.vs_sam = compare_family(g, key(sam))
    if erm is not None:
        st.vs_erm = compare_family(g, key(erm))
    return st


def diff_cells(e: Entry, ref: Entry | None, comps: dict, with_prob: bool) -> list:
    """[Δ (pp) [CI], Holm p (n)] (+ [P(better) [CI]]) of entry e against the reference."""
    n = 3 if with_prob else 2
    if ref is None:
        return []
    if e is ref:
        return ["reference"] + [""] * (n - 1)
    c = comps.get(key(e))
    if c is None:
        return ["—"] * n
    cells = [_ci(c.diff, signed=True), _p(c.p_adj, c.n)]
    if with_prob:
        cells.append(_ci(c.prob, scale=1.0) if c.n else "—")
    return cells


def verdict_text(st: SettingStats, label_of: dict) -> str:
    """One sentence: the significantly best method, or why there is none."""
    v = st.verdict
    if v is None or v.best is None:
        return "No method has an accuracy here."
    best = label_of.get(v.best, v.best)
    if v.significant:
        return f"Significantly best: {best}."
    if not v.comparisons:
        return f"{best} is the only method with an accuracy: no comparison."
    name, c = max(v.comparisons.items(), key=lambda kv: kv[1].p_adj if kv[1].p_adj == kv[1].p_adj else 2.0)
    return (f"No method is significantly best: {best} has the highest mean, but not every difference to it holds up "
            f"(largest Holm-corrected p: {label_of.get(name, name)}, Δ = {_ci(c.diff, signed=True)} pp, "
            f"p = {_p(c.p_adj, c.n)}).")


def smoke_text(n: int) -> str:
    return (f"**Smoke run, not a verdict:** at most {n} paired seed{'s' if n != 1 else ''} per method (fewer than "
            f"{MIN_SEEDS_FOR_VERDICT}); intervals and p-values are shown for completeness but cannot separate the "
            f"methods (the smallest two-sided Wilcoxon p with {n} pair{'s' if n != 1 else ''} is "
            f"{min_wilcoxon_p(n):.3g}).")
