"""The report's markdown tables: test accuracy with intervals and paired comparisons, cost per replicate
(relative to one SAM run), the whole study's compute, robustness to ρ₀, generalization metric, label noise,
hypergradient fidelity, the adaptive-SAM statistics and the signal-to-noise of the learned-ρ
hypergradient dM/dν. Bold follows :data:`verdicts.RULE` everywhere.

Each optional table returns whether it was written (its data may be absent)."""
from __future__ import annotations

import math

import pandas as pd

from hpo_bench.report.curves import dnu_snr
from hpo_bench.report.document import (
    _bold,
    _ci,
    _count,
    _failures_text,
    _pct,
    _setting_title,
)
from hpo_bench.report.entries import COSTS
from hpo_bench.report.load import NOISE_COL
from hpo_bench.report.verdicts import (
    RULE,
    bold_significant,
    bold_winner,
    diff_cells,
    key,
    setting_stats,
    smoke_text,
    verdict_text,
)
from hpo_bench.stats import MIN_SEEDS_FOR_VERDICT, Interval, mean_ci

# ============================================================================= tables

def _per_setting(doc, res, settings, make_rows, headers):
    """One table per setting (a sub-heading each when several settings exist); returns number of tables."""
    n = 0
    for s in settings:
        rows = make_rows(s)
        if not rows:
            continue
        if len(settings) > 1:
            doc.h(4, _setting_title(res.setting_cols, s))
        doc.table(headers, rows)
        n += 1
    return n


def _sam_method(entries) -> str | None:
    """The SAM method costs are relative to: strategy 'sam', no search; the one labelled 'SAM' if any, else the first."""
    names = list(dict.fromkeys(e.method for e in entries if e.kind == "plain" and e.strategy == "sam"))
    return next((n for n in names if n.lower() == "sam"), names[0] if names else None)


def _sam_reference(entries, setting) -> dict | None:
    """Cost of one run of the SAM method (mean over its ok runs; per replicate = one run), per column."""
    name = _sam_method(entries)

    def ref(es):
        rows = [e.rows for e in es if e.kind == "plain" and e.strategy == "sam" and e.method == name]
        if not rows:
            return None
        rows = pd.concat(rows)
        basis = rows[rows["status"] == "ok"] if (rows["status"] == "ok").any() else rows
        return {c: float(basis[c].mean()) for c, _ in COSTS}

    return ref([e for e in entries if e.setting == setting]) or ref(entries)


MAIN_TEXT = ("Test accuracy at the best-validation epoch (%): the mean over seeds with its bootstrap 95 % interval "
             "(BCa, 9999 resamples, fixed seed). Δ vs SAM / ERM: the mean paired difference over seeds (percentage "
             "points) with its Student-t 95 % interval; p: two-sided Wilcoxon signed-rank test of the paired "
             "differences, Holm-corrected across the methods of the table, with the number of paired seeds n; "
             "P(> SAM): the fraction of seeds on which the method beats SAM (ties count ½), with a bootstrap 95 % "
             "interval. ρ: the fixed ρ, ρ₀ → mean final ρ for learned radii, or the searched ρ*; a search's accuracy "
             "is that of its evaluation runs, trained at ρ* on the same seeds as the other methods (nested "
             "selection: ρ* is selected on other seeds), or, in a store without evaluation runs, that of its trials "
             "at ρ*. Runs that did not finish `ok` are counted, never averaged. ")


def main_table(doc, res, settings, entries):
    doc.section("Test accuracy")
    stats = {s: setting_stats([e for e in entries if e.setting == s]) for s in settings}
    has_sam = any(st.sam is not None for st in stats.values())
    has_erm = any(st.erm is not None for st in stats.values())
    n_max = max((st.n_seeds for st in stats.values()), default=0)
    doc.p(MAIN_TEXT + RULE + " With n paired seeds the smallest attainable two-sided Wilcoxon p is 2/2ⁿ "
          "(5 seeds: 0.0625), so fewer than 6 seeds can never make a method bold, and more are needed after Holm.")
    if n_max < MIN_SEEDS_FOR_VERDICT:
        doc.p(smoke_text(n_max))
    headers = ["method", "strategy", "test acc (%) [95% CI]"]
    if has_sam:
        headers += ["Δ vs SAM (pp) [95% CI]", "p vs SAM (Holm)", "P(> SAM) [95% CI]"]
    if has_erm:
        headers += ["Δ vs ERM (pp) [95% CI]", "p vs ERM (Holm)"]
    headers += ["ρ", "runs ok/total", "not ok"]
    for s in settings:
        es = [e for e in entries if e.setting == s]
        if not es:
            continue
        st = stats[s]
        cells = []
        for e in es:
            strategy = e.strategy + (f" [{e.search}]" if e.search else "")
            runs = "—" if e.kind == "missing" else f"{e.n_ok}/{e.n_total}" + (" trials" if e.kind == "search" else "")
            if e.n_eval:
                runs += f" + {e.n_eval_ok}/{e.n_eval} eval"
            row = [e.label, strategy, e.acc_text()]
            if has_sam:
                row += diff_cells(e, st.sam, st.vs_sam, True) if st.sam is not None else ["no SAM", "", ""]
            if has_erm:
                row += diff_cells(e, st.erm, st.vs_erm, False) if st.erm is not None else ["no ERM", ""]
            row += [e.rho_text, runs, "missing" if e.kind == "missing" else (_failures_text(e.failures) or "—")]
            cells.append(row)
        winner = st.verdict.winner if st.verdict else None
        for c, e in zip(cells, es):
            if winner is not None and e.has_acc and key(e) == winner:
                c[2] = _bold(c[2])
        if len(settings) > 1:
            doc.h(4, _setting_title(res.setting_cols, s))
        doc.table(headers, cells)
        doc.p(verdict_text(st, {key(e): e.label for e in es}))
    return stats


def _cost_cell(e, c, ref) -> str:
    v, ci = e.cost.get(c, math.nan), e.cost_ci.get(c)
    if pd.isna(v):
        return "—"
    if c == "peak_mem_bytes":
        text = f"{v / 2 ** 20:.1f}"
    elif c == "grad_evals":
        text = _count(v) + (f" [{_count(round(ci.low))}, {_count(round(ci.high))}]" if ci is not None and ci.has_ci
                            and ci.high > ci.low else "")
    else:
        text = _ci(ci, scale=1.0) if ci is not None and ci.has_ci and ci.high > ci.low else f"{v:.2f}"
    r = ref.get(c) if ref else None
    if r and not pd.isna(r) and r > 0:
        text += f" (×{v / r:.2f})"
    return text


COST_TEXT = ("Cost PER REPLICATE — what it takes to choose ρ and produce one trained model: one run of a plain "
             "method (its ok runs when it has some); for a search, its trials of one seed (summed per seed, "
             "whatever the number of seeds it ran) plus the final training at ρ*: one evaluation run when the search "
             "re-trains the selected ρ* on evaluation seeds, nothing when the selected model is one of its trials. "
             "Mean over replicates with a bootstrap 95 % interval when they differ; peak memory: the maximum over "
             "the runs. ρ* is selected on the mean validation accuracy over all the search's seeds. ")


def cost_table(doc, res, settings, entries):
    doc.section("Cost per replicate")
    has_ref = any(_sam_reference(entries, s) for s in settings)
    doc.p(COST_TEXT +
          (f"In parentheses: relative to one run of {_sam_method(entries)} (strategy `sam`, no search; mean of its "
           "ok runs in the same setting when there are some). " if has_ref else
           "No SAM run (strategy `sam` without a search) in this directory: relative costs are not shown. ") +
          "The compute of the whole study (every run summed) is in the next table.")
    headers = ["method", "basis"] + [h for _, h in COSTS]

    def rows(s):
        ref = _sam_reference(entries, s)
        return [[e.label, e.cost_basis] + [_cost_cell(e, c, ref) for c, _ in COSTS]
                for e in entries if e.setting == s and e.kind != "missing"]

    _per_setting(doc, res, settings, rows, headers)


def study_table(doc, res):
    doc.section("Compute of the whole study")
    doc.p("Every run of this directory summed per method (all settings, seeds and search trials, whatever their "
          "status); wall and device seconds are sums over runs, which may have overlapped.")
    runs = res.runs
    out = []
    for method, g in runs.groupby("method", sort=False):
        out.append([method, str(len(g)), _count(g["grad_evals"].sum()), f"{g['wall_s'].sum():.1f}",
                    f"{g['device_s'].sum():.1f}"])
    out.append([_bold("total"), _bold(str(len(runs))), _bold(_count(runs["grad_evals"].sum())),
                _bold(f"{runs['wall_s'].sum():.1f}"), _bold(f"{runs['device_s'].sum():.1f}")])
    doc.table(["method", "runs", "grad evals", "wall s", "device s"], out)


def rho0_table(doc, res, settings, entries) -> bool:
    multi = [e for e in entries if e.kind == "plain" and e.rho0 is not None]
    if not multi:
        return False
    doc.section("Robustness to ρ₀")
    doc.p("Test accuracy (%) of each method started from each initial radius ρ₀ (rows: methods run with several "
          "ρ values): mean [bootstrap 95 % interval] over seeds; spread = max − min of the means (percentage "
          "points). Bold: the significantly best method of a column (same rule as the accuracy table).")
    rhos = sorted({e.rho0 for e in multi})
    headers = ["method"] + [f"ρ₀={r:g}" for r in rhos] + ["spread (pp)"]

    def rows(s):
        es = [e for e in multi if e.setting == s]
        methods = list(dict.fromkeys(e.method for e in es))
        grid = {(e.method, e.rho0): e for e in es}
        out = [[m] + [grid[(m, r)].acc_text() if (m, r) in grid else "" for r in rhos] for m in methods]
        for j, r in enumerate(rhos):
            col = bold_winner([row[1 + j] for row in out], [grid.get((m, r)) for m in methods])
            for row, c in zip(out, col):
                row[1 + j] = c
        for row, m in zip(out, methods):
            means = [grid[(m, r)].acc_mean for r in rhos if (m, r) in grid and grid[(m, r)].has_acc]
            row.append(f"{100 * (max(means) - min(means)):.2f}" if len(means) > 1 else "—")
        return out

    _per_setting(doc, res, settings, rows, headers)
    return True


def metric_table(doc, res, settings, entries) -> bool:
    plain = [e for e in entries if e.kind == "plain" and "metric" in e.params]
    by_strategy = {}
    for e in plain:
        by_strategy.setdefault(e.strategy, set()).add(str(e.params["metric"]))
    strategies = [s for s, m in by_strategy.items() if len(m) > 1]
    if not strategies:
        return False
    doc.section("Generalization metric")
    doc.p("Test accuracy (%) by the upper-level metric M of the learned-ρ methods (`metric` in the method's params); "
          "mean [bootstrap 95 % interval] over seeds; bold: the significantly best metric of a row (same rule "
          "as the accuracy table, seeds paired across metrics).")
    metrics = list(dict.fromkeys(str(e.params["metric"]) for e in plain if e.strategy in strategies))
    headers = ["strategy"] + metrics + ["methods"]

    def r0(e):  # the entry's rho0 (a single-rho method has one value across its rows)
        return e.rho0 if e.rho0 is not None else float(e.rows["rho0"].iloc[0])

    def rows(s):
        out = []
        for strat in strategies:
            es = [e for e in plain if e.setting == s and e.strategy == strat]
            rho0s = sorted(dict.fromkeys(r0(e) for e in plain if e.strategy == strat))
            for rho0 in rho0s:
                group_es = [e for e in es if r0(e) == rho0]
                if not group_es:
                    continue
                texts, seed_groups = [], []
                for m in metrics:
                    group = [e for e in group_es if str(e.params["metric"]) == m]
                    ok = pd.concat([g.acc_runs for g in group])[["seed", "test_acc"]].dropna() if group else None
                    fails = {}
                    for g in group:
                        for k, v in g.failures.items():
                            fails[k] = fails.get(k, 0) + v
                    if ok is not None and len(ok):
                        by_seed = ok.groupby("seed")["test_acc"].mean()
                        texts.append(_pct(by_seed.mean(), mean_ci(by_seed.to_numpy())))
                        seed_groups.append({int(s): float(v) for s, v in by_seed.items()})
                    else:
                        texts.append(_failures_text(fails) or ("—" if group else ""))
                        seed_groups.append(None)
                name = strat if len(rho0s) == 1 else f"{strat} (ρ₀={rho0:g})"
                labels = ", ".join(dict.fromkeys(e.label for e in group_es))
                out.append([name] + bold_significant(texts, seed_groups) + [labels])
        return out

    _per_setting(doc, res, settings, rows, headers)
    return True


def noise_table(doc, res, settings, entries) -> bool:
    cols = res.setting_cols
    if NOISE_COL not in cols:
        return False
    i = cols.index(NOISE_COL)
    levels = list(dict.fromkeys(s[i] for s in settings))
    if len(levels) < 2:
        return False
    doc.section("Label noise")
    doc.p("Test accuracy (%, clean test labels) by symmetric training-label noise rate: mean [bootstrap 95 % "
          "interval] over seeds; bold: the significantly best method of a column (same rule as the accuracy table).")
    rest = list(dict.fromkeys(s[:i] + s[i + 1:] for s in settings))
    headers = ["method"] + [f"noise {v}" for v in levels]
    for r in rest:
        if len(rest) > 1:
            others = [c for c in cols if c != NOISE_COL]
            doc.h(4, _setting_title(others, r))
        es = [e for e in entries if e.setting[:i] + e.setting[i + 1:] == r]
        labels = list(dict.fromkeys(e.label for e in es))
        grid = {(e.label, e.setting[i]): e for e in es}
        out = [[lab] + [grid[(lab, v)].acc_text() if (lab, v) in grid else "" for v in levels] for lab in labels]
        for j, v in enumerate(levels):
            col = bold_winner([row[1 + j] for row in out], [grid.get((lab, v)) for lab in labels])
            for row, c in zip(out, col):
                row[1 + j] = c
        doc.table(headers, out)
    return True


def adaptive_table(doc, res, settings, entries) -> bool:
    def stat(e, col):
        if e.kind != "plain" or col not in e.acc_runs:
            return None
        v = e.acc_runs[col].dropna()
        return v if len(v) else None

    es = [e for e in entries if stat(e, "sam_fraction") is not None or stat(e, "lambda_final") is not None]
    if not es:
        return False
    doc.section("Adaptive SAM statistics")
    doc.p("AE-SAM / LookSAM: fraction of training steps that took a SAM step (%); SAMAR: final λ (weight of the "
          "SAM term). Mean [bootstrap 95 % interval] over the ok runs.")
    headers = ["method", "strategy", "SAM steps (%)", "final λ"]

    def rows(s):
        out = []
        for e in es:
            if e.setting != s:
                continue
            f, lam = stat(e, "sam_fraction"), stat(e, "lambda_final")
            out.append([e.label, e.strategy, _pct(f.mean(), mean_ci(f.to_numpy())) if f is not None else "—",
                        _ci(mean_ci(lam.to_numpy()), scale=1.0, digits=3) if lam is not None else "—"])
        return out

    _per_setting(doc, res, settings, rows, headers)
    return True


SNR_TEXT = ("Signal-to-noise of the hypergradient dM/dν (ν = log ρ) that moves ρ, from the per-step `dM_dnu` trace "
            "of the ok runs. Updates per run: the traced ν-updates (NaN marks a step without one: the exact "
            "hypergradient updates every U steps). SNR = "
            "|mean| / standard deviation (ddof = 1) of a run's updates, undefined with fewer than two updates or no "
            "spread; first / last third: the same over the updates in the first and the last third of the run's "
            "training steps, so a fading signal shows as a lower SNR late. Sign: ν takes Adam descent steps "
            "(ν ← ν − lr·m̂/√v̂), so an update with dM/dν < 0 raises ρ and one with dM/dν > 0 lowers it; "
            "dM/dν > 0 (%) is the fraction of a run's updates that push ρ down (50 %: no preferred direction). "
            "Each column: the mean over seeds (a seed's runs averaged first) with its Student-t 95 % interval.")


def _snr_cell(row, c: str, scale: float, digits: int) -> str:
    """The statistic c of a :func:`~hpo_bench.report.curves.dnu_snr` row as 'mean [low, high]'."""
    return _ci(Interval(row[c], row[f"{c}_low"], row[f"{c}_high"]), scale=scale, digits=digits)


def _snr_runs(entries, ids) -> list:
    """[(entry, its ok runs with a traced dM_dnu, labelled)] over the plain methods and searches."""
    out = []
    for e in entries:
        if e.kind in ("plain", "search"):
            ok = e.rows[(e.rows["status"] == "ok") & e.rows["run_id"].isin(ids)]
            if len(ok):
                out.append((e, ok.assign(label=e.label)))
    return out


def _snr_row(e, r) -> list:
    """The table row of one entry from its :func:`~hpo_bench.report.curves.dnu_snr` row."""
    return [e.label, e.strategy, str(int(r["runs"])), _count(r["updates"]), _snr_cell(r, "snr", 1.0, 3),
            _snr_cell(r, "frac_pos", 100.0, 1), _snr_cell(r, "snr_first", 1.0, 3), _snr_cell(r, "snr_last", 1.0, 3)]


def snr_table(doc, res, settings, entries, step: pd.DataFrame) -> bool:
    """Per method that traces dM_dnu (and setting): updates per run, SNR overall and in the first and last
    third of training, and the fraction of updates with dM/dν > 0 (:func:`~hpo_bench.report.curves.dnu_snr`)."""
    ids = set(step.loc[(step["metric"] == "dM_dnu") & step["value"].notna(), "run_id"]) if len(step) else set()
    runs = _snr_runs(entries, ids)
    if not runs:
        return False
    doc.section("Hypergradient signal-to-noise")
    doc.p(SNR_TEXT)
    headers = ["method", "strategy", "runs", "updates per run", "SNR [95% CI]", "dM/dν > 0 (%) [95% CI]",
               "SNR first third [95% CI]", "SNR last third [95% CI]"]

    def rows(s):
        mine = [(e, r) for e, r in runs if e.setting == s]
        if not mine:
            return []
        table = dnu_snr(step, pd.concat([r for _, r in mine]), by="label").set_index("label")
        return [_snr_row(e, table.loc[e.label]) for e, _ in mine if e.label in table.index]

    _per_setting(doc, res, settings, rows, headers)
    return True
