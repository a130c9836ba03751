"""The report's markdown tables: test accuracy, cost (relative to one SAM run), robustness to ρ₀,
generalization metric, label noise, hypergradient fidelity and the adaptive-SAM statistics.

Each optional table returns whether it was written (its data may be absent)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from hpo_bench.report.document import (
    _bold,
    _count,
    _failures_text,
    _g,
    _pct,
    _setting_title,
)
from hpo_bench.report.entries import COSTS
from hpo_bench.report.load import NOISE_COL

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


def _bold_best(cells: list, values: list) -> list:
    finite = [v for v in values if v is not None and not pd.isna(v)]
    if len(finite) < 2:
        return cells
    best = max(finite)
    return [_bold(c) if v is not None and not pd.isna(v) and v == best else c for c, v in zip(cells, values)]


def main_table(doc, res, settings, entries):
    doc.section("Test accuracy")
    doc.p("Test accuracy at the best-validation epoch, mean ± std over seeds (%); best per setting in **bold**. "
          "ρ: the fixed ρ, ρ₀ → mean final ρ for learned radii, or the searched ρ* (accuracy of the runs at ρ*). "
          "Runs that did not finish `ok` are counted, never averaged.")
    headers = ["method", "strategy", "test acc (%)", "ρ", "runs ok/total", "not ok"]

    def rows(s):
        es = [e for e in entries if e.setting == s]
        cells = []
        for e in es:
            strategy = e.strategy + (f" [{e.search}]" if e.search else "")
            runs = "—" if e.kind == "missing" else f"{e.n_ok}/{e.n_total}" + (" trials" if e.kind == "search" else "")
            cells.append([e.label, strategy, e.acc_text(), e.rho_text, runs,
                          "missing" if e.kind == "missing" else (_failures_text(e.failures) or "—")])
        acc = _bold_best([c[2] for c in cells], [e.acc_mean if e.has_acc else None for e in es])
        for c, a in zip(cells, acc):
            c[2] = a
        return cells

    _per_setting(doc, res, settings, rows, headers)


def _sam_method(entries) -> str | None:
    """The SAM method costs are relative to: strategy 'sam', no search; the one labelled 'SAM' if any, else the first."""
    names = list(dict.fromkeys(e.method for e in entries if e.kind == "plain" and e.strategy == "sam"))
    return next((n for n in names if n.lower() == "sam"), names[0] if names else None)


def _sam_reference(entries, setting) -> dict | None:
    name = _sam_method(entries)

    def ref(es):
        rows = [e.rows for e in es if e.kind == "plain" and e.strategy == "sam" and e.method == name]
        if not rows:
            return None
        rows = pd.concat(rows)
        basis = rows[rows["status"] == "ok"] if (rows["status"] == "ok").any() else rows
        return {c: float(basis[c].mean()) for c, _ in COSTS}

    return ref([e for e in entries if e.setting == setting]) or ref(entries)


def cost_table(doc, res, settings, entries):
    doc.section("Cost")
    has_ref = any(_sam_reference(entries, s) for s in settings)
    doc.p("Cost of one run (mean over the ok runs of a method) or, for a search, the sum over all its trials "
          "(peak memory: the maximum over trials). " +
          (f"In parentheses: relative to one run of {_sam_method(entries)} (strategy `sam`, no search; mean of its "
           "ok runs in the same setting when there are some)." if has_ref else
           "No SAM run (strategy `sam` without a search) in this directory: relative costs are not shown."))
    headers = ["method", "basis"] + [h for _, h in COSTS]

    def rows(s):
        ref = _sam_reference(entries, s)
        out = []
        for e in entries:
            if e.setting != s or e.kind == "missing":
                continue
            cells = [e.label, e.cost_basis]
            for c, _ in COSTS:
                v = e.cost.get(c, math.nan)
                shown = v / 2 ** 20 if c == "peak_mem_bytes" and not pd.isna(v) else v
                text = _count(shown) if c == "grad_evals" else ("—" if pd.isna(shown) else
                                                                f"{shown:.1f}" if c == "peak_mem_bytes" else f"{shown:.2f}")
                r = ref.get(c) if ref else None
                if r and not pd.isna(r) and r > 0 and not pd.isna(v):
                    text += f" (×{v / r:.2f})"
                cells.append(text)
            out.append(cells)
        return out

    _per_setting(doc, res, settings, rows, headers)


def rho0_table(doc, res, settings, entries) -> bool:
    multi = [e for e in entries if e.kind == "plain" and e.rho0 is not None]
    if not multi:
        return False
    doc.section("Robustness to ρ₀")
    doc.p("Test accuracy (%) of each method started from each initial radius ρ₀ (rows: methods run with several "
          "ρ values); best per column in **bold**; spread = max − min of the means (percentage points).")
    rhos = sorted({e.rho0 for e in multi})
    headers = ["method"] + [f"ρ₀={r:g}" for r in rhos] + ["spread (pp)"]

    def rows(s):
        es = [e for e in multi if e.setting == s]
        methods = list(dict.fromkeys(e.method for e in es))
        grid = {(e.method, e.rho0): e for e in es}
        out = [[m] + [grid[(m, r)].acc_text() if (m, r) in grid else "" for r in rhos] for m in methods]
        for j, r in enumerate(rhos):
            vals = [grid[(m, r)].acc_mean if (m, r) in grid and grid[(m, r)].has_acc else None for m in methods]
            col = _bold_best([row[1 + j] for row in out], vals)
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
          "best per row in **bold**.")
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
                texts, vals = [], []
                for m in metrics:
                    group = [e for e in group_es if str(e.params["metric"]) == m]
                    ok = pd.concat([g.acc_runs for g in group])["test_acc"].dropna() if group else pd.Series(dtype=float)
                    fails = {}
                    for g in group:
                        for k, v in g.failures.items():
                            fails[k] = fails.get(k, 0) + v
                    if len(ok):
                        texts.append(_pct(ok.mean(), ok.std(ddof=1) if len(ok) > 1 else 0.0, len(ok)))
                        vals.append(float(ok.mean()))
                    else:
                        texts.append(_failures_text(fails) or ("—" if group else ""))
                        vals.append(None)
                name = strat if len(rho0s) == 1 else f"{strat} (ρ₀={rho0:g})"
                labels = ", ".join(dict.fromkeys(e.label for e in group_es))
                out.append([name] + _bold_best(texts, vals) + [labels])
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
    doc.p("Test accuracy (%, clean test labels) by symmetric training-label noise rate; best per column in **bold**.")
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
            vals = [grid[(lab, v)].acc_mean if (lab, v) in grid and grid[(lab, v)].has_acc else None for lab in labels]
            col = _bold_best([row[1 + j] for row in out], vals)
            for row, c in zip(out, col):
                row[1 + j] = c
        doc.table(headers, out)
    return True


def fidelity_table(doc, res) -> bool:
    fs = res.fidelity
    if fs is None or fs.empty:
        return False
    doc.section("Hypergradient fidelity")
    doc.p("From `fidelity_summary.parquet` (`hpo-bench fidelity`): each estimator of dM/dν against each exact "
          "unrolled reference along one fixed-ρ run.")

    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return _g(float(v))
        return str(v)

    doc.table(list(fs.columns), [[fmt(v) for v in row] for row in fs.itertuples(index=False)])
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
          "SAM term). Mean ± std over the ok runs.")
    headers = ["method", "strategy", "SAM steps (%)", "final λ"]

    def rows(s):
        out = []
        for e in es:
            if e.setting != s:
                continue
            f, lam = stat(e, "sam_fraction"), stat(e, "lambda_final")
            out.append([e.label, e.strategy, _pct(f.mean(), f.std(ddof=1) if len(f) > 1 else 0.0, len(f)) if f is not None else "—",
                        f"{lam.mean():.3f} ± {(lam.std(ddof=1) if len(lam) > 1 else 0.0):.3f}" if lam is not None else "—"])
        return out

    _per_setting(doc, res, settings, rows, headers)
    return True
