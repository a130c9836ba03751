"""The summary table `hpo-bench run` prints: one line per method (and setting)."""
from __future__ import annotations

import pandas as pd


def _fmt(mean: float, std: float) -> str:
    return "—" if pd.isna(mean) else f"{100 * mean:.2f} ± {100 * (0 if pd.isna(std) else std):.2f}"


def summary_table(runs: pd.DataFrame, searches: pd.DataFrame) -> str:
    """Test accuracy (mean ± std over seeds, %) and mean cost per run; searches show ρ* and summed cost."""
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
                      "grad evals": f"{g['grad_evals'].sum():.0f}", "wall s": f"{g['wall_s'].sum():.1f}"})
    for _, s in (searches.iterrows() if not searches.empty else []):
        lines.append({**{k: s.get(k, "") for k in setting_cols}, "method": s["method"], "strategy": f"{s['strategy']} [{s['search']}]",
                      "rho": f"rho*={s['rho_star']:g}", "rho_final": "", "runs": f"{s['n_trials'] - s['n_failed']}/{s['n_trials']}",
                      "test acc %": _fmt(s["test_acc_mean"], s["test_acc_std"]),
                      "grad evals": f"{s['cost_grad_evals']:.0f}", "wall s": f"{s['cost_wall_s']:.1f}"})
    return pd.DataFrame(lines).to_string(index=False)
