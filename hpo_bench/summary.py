"""The summary table `hpo-bench run` prints: one line per method (and setting), cost per replicate."""
from __future__ import annotations

import pandas as pd

from hpo_bench.stats import per_replicate_cost


def _fmt(mean: float, std: float) -> str:
    return "—" if pd.isna(mean) else f"{100 * mean:.2f} ± {100 * (0 if pd.isna(std) else std):.2f}"


def _search_cost(runs: pd.DataFrame, s: pd.Series, setting_cols: list, col: str) -> float:
    """One replicate of search ``s``: its trials for one selection seed plus one evaluation run at ρ*."""
    rows = runs[runs["method"] == s["method"]]
    for c in setting_cols:
        rows = rows[rows[c] == s.get(c)]
    is_eval = rows["search"].astype(str).str.endswith("/eval")
    sel, ev = rows[~is_eval], rows[is_eval]
    return per_replicate_cost(sel[col].sum(), max(1, sel["seed"].nunique()), ev[col].sum(), len(ev))


def summary_table(runs: pd.DataFrame, searches: pd.DataFrame) -> str:
    """Test accuracy (mean ± std over seeds, %) and cost per replicate (what choosing ρ and training one
    model costs: a plain method's mean run; a search's trials for one seed plus its evaluation run)."""
    if runs.empty:
        return "(no runs)"
    setting_cols = [c for c in runs.columns if c.startswith("setting.")]
    lines = []
    searched = set(searches["method"]) if not searches.empty else set()
    plain = runs[~runs["method"].isin(searched)]
    keys = setting_cols + ["method", "strategy", "rho0"]
    for key, g in plain.groupby(keys, sort=False, dropna=False):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        ok = g[g["status"] == "ok"]
        lines.append({**{k: key[k] for k in setting_cols}, "method": key["method"], "strategy": key["strategy"],
                      "rho": f"{key['rho0']:g}", "rho_final": f"{ok['rho_final'].mean():.4g}" if "rho_final" in ok and len(ok) else "",
                      "runs": f"{len(ok)}/{len(g)}", "test acc %": _fmt(ok["test_acc"].mean(), ok["test_acc"].std()),
                      "grad evals/rep": f"{g['grad_evals'].mean():.0f}", "wall s/rep": f"{g['wall_s'].mean():.1f}"})
    for _, s in (searches.iterrows() if not searches.empty else []):
        lines.append({**{k: s.get(k, "") for k in setting_cols}, "method": s["method"], "strategy": f"{s['strategy']} [{s['search']}]",
                      "rho": f"rho*={s['rho_star']:g}", "rho_final": "", "runs": f"{s['n_trials'] - s['n_failed']}/{s['n_trials']}",
                      "test acc %": _fmt(s["test_acc_mean"], s["test_acc_std"]),
                      "grad evals/rep": f"{_search_cost(runs, s, setting_cols, 'grad_evals'):.0f}",
                      "wall s/rep": f"{_search_cost(runs, s, setting_cols, 'wall_s'):.1f}"})
    return pd.DataFrame(lines).to_string(index=False)
