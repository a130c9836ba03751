"""The methods of the tables: one :class:`Entry` per method (plain runs, split by ρ₀ when a label ran
several ρ values, or one search) and setting, including the spec's methods that have no runs ("missing")."""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hpo_bench.report.document import _failures_text, _g, _key_value, _pct
from hpo_bench.report.load import Results
from hpo_bench.selection import select

COSTS = (("grad_evals", "grad evals"), ("wall_s", "wall s"), ("device_s", "device s"), ("peak_mem_bytes", "peak mem (MiB)"))


# ============================================================================= methods (table rows)

@dataclass
class Entry:
    setting: tuple
    method: str
    strategy: str
    kind: str  # 'plain' | 'search' | 'missing'
    rho0: float | None = None  # set when the method ran several rho values
    search: str = ""
    rows: pd.DataFrame = None  # every run of this entry (plain runs, or the search's trials)
    acc_runs: pd.DataFrame = None  # the ok runs behind the accuracy (for a search: those at rho*)
    acc_mean: float = math.nan
    acc_std: float = math.nan
    n_acc: int = 0
    n_ok: int = 0
    n_total: int = 0
    failures: dict = field(default_factory=dict)
    rho_text: str = "—"
    rho_star: float = math.nan
    cost: dict = field(default_factory=dict)
    cost_basis: str = ""
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.method if self.rho0 is None else f"{self.method} (ρ₀={self.rho0:g})"

    @property
    def has_acc(self) -> bool:
        return self.n_acc > 0 and not pd.isna(self.acc_mean)

    def acc_text(self) -> str:
        if self.kind == "missing":
            return "missing"
        if not self.has_acc:
            return _failures_text(self.failures) or "—"
        return _pct(self.acc_mean, self.acc_std, self.n_acc)


def _setting_key(row, cols) -> tuple:
    return tuple(_key_value(row[c]) if c in row else "—" for c in cols)


def _failures(rows: pd.DataFrame) -> dict:
    bad = rows[rows["status"] != "ok"]["status"]
    return {str(s): int(n) for s, n in bad.value_counts(sort=False).items()}


def _params(rows: pd.DataFrame) -> dict:
    try:
        p = json.loads(rows["params"].iloc[0]) if len(rows) else {}
        return p if isinstance(p, dict) else {}
    except (TypeError, ValueError):
        return {}


def _plain_entry(setting, method, rho0, rows) -> Entry:
    ok = rows[rows["status"] == "ok"]
    acc = ok["test_acc"].dropna()
    e = Entry(setting=setting, method=method, strategy=str(rows["strategy"].iloc[0]), kind="plain", rho0=rho0,
              rows=rows, acc_runs=ok, acc_mean=float(acc.mean()) if len(acc) else math.nan,
              acc_std=float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, n_acc=int(len(acc)), n_ok=int(len(ok)),
              n_total=int(len(rows)), failures=_failures(rows), params=_params(rows))
    basis = ok if len(ok) else rows
    e.cost = {c: float(basis[c].mean()) for c, _ in COSTS}
    e.cost_basis = f"mean of {len(basis)} {'ok ' if len(ok) else ''}run{'s' if len(basis) != 1 else ''}"
    rho0s = rows["rho0"].dropna().unique()
    final = ok["rho_final"].dropna()
    r0 = float(rho0s[0]) if len(rho0s) == 1 else None
    if len(final) == 0:
        e.rho_text = "—" if e.strategy == "erm" or r0 is None else f"{r0:g}"
    elif r0 is not None and np.allclose(final.to_numpy(float), r0, rtol=1e-9, atol=0):
        e.rho_text = f"{r0:g}"
    else:
        e.rho_text = f"{_g(r0)} → {_g(float(final.mean()))}"
    return e


def _search_entry(setting, method, srow, trials: pd.DataFrame) -> Entry:
    def sget(name, default=math.nan):
        v = srow.get(name, default) if srow is not None else default
        return default if v is None or (isinstance(v, float) and math.isnan(v)) else v

    strategy = sget("strategy", str(trials["strategy"].iloc[0]) if len(trials) else "")
    rho_star = float(sget("rho_star"))
    ok = trials[trials["status"] == "ok"] if len(trials) else trials
    at_star = ok[np.isclose(ok["rho0"].astype(float), rho_star)] if len(ok) and not math.isnan(rho_star) else ok.iloc[0:0]
    n_trials = int(sget("n_trials", len(trials)))
    n_failed = int(sget("n_failed", int((trials["status"] != "ok").sum()) if len(trials) else 0))
    e = Entry(setting=setting, method=method, strategy=str(strategy), kind="search",
              search=str(sget("search", trials["search"].iloc[0] if len(trials) else "")), rows=trials,
              acc_runs=at_star, acc_mean=float(sget("test_acc_mean")), acc_std=float(sget("test_acc_std", 0.0)),
              n_acc=int(sget("n_seeds_at_star", len(at_star))), n_ok=n_trials - n_failed, n_total=n_trials,
              failures=_failures(trials) if len(trials) else {}, rho_star=rho_star,
              params=_params(trials) if len(trials) else {})
    if not e.has_acc and n_failed and not e.failures:
        e.failures = {"failed": n_failed}
    e.rho_text = f"ρ*={rho_star:g}" if not math.isnan(rho_star) else "—"
    for c, _ in COSTS:
        v = sget(f"cost_{c}") if c != "peak_mem_bytes" else math.nan
        if pd.isna(v) and len(trials):
            v = float(trials[c].max() if c == "peak_mem_bytes" else trials[c].sum())
        e.cost[c] = float(v)
    e.cost_basis = f"sum over {n_trials} trial{'s' if n_trials != 1 else ''}"
    return e


def _in_setting(df: pd.DataFrame, setting: tuple) -> pd.DataFrame:
    return df.loc[np.array([s == setting for s in df["_setting"]], dtype=bool)]


def _spec_methods(meta: dict) -> list:
    methods = (meta.get("spec") or {}).get("methods") or []
    return [(str(m.get("label") or m.get("strategy")), str(m.get("strategy", ""))) for m in methods if isinstance(m, dict)]


def build_entries(res: Results) -> tuple[list, list]:
    """(ordered settings, entries): every method of every setting, including those without rows ('missing')."""
    runs, cols = res.runs, res.setting_cols
    runs["_setting"] = [_setting_key(r, cols) for _, r in runs[cols].iterrows()] if cols else [()] * len(runs)
    spec = res.meta.get("spec") or {}
    settings = []
    vary = spec.get("vary") or {}
    if cols and vary and all(f"setting.{k}" in cols for k in vary):
        order = [c[len("setting."):] for c in cols]
        for combo in itertools.product(*(vary[k] if isinstance(vary[k], list) else [vary[k]] for k in vary)):
            d = dict(zip(vary, combo))
            settings.append(tuple(_key_value(d.get(k)) for k in order))
    for s in runs["_setting"]:
        if s not in settings:
            settings.append(s)
    searches = res.searches
    if not searches.empty:
        searches = searches.copy()
        searches["_setting"] = [_setting_key(r, cols) for _, r in searches.iterrows()] if cols else [()] * len(searches)
        for s in searches["_setting"]:
            if s not in settings:
                settings.append(s)
    if not settings:
        settings = [()]
    spec_methods = _spec_methods(res.meta)
    order = [m for m, _ in spec_methods]
    for m in list(runs["method"]) + (list(searches["method"]) if not searches.empty else []):
        if m not in order:
            order.append(m)
    plain = runs[runs["search"] == ""]
    trials = runs[runs["search"] != ""]
    multi_rho = {m for m, g in plain.groupby("method") if g["rho0"].nunique() > 1}
    entries = []
    for setting in settings:
        p_set, t_set = _in_setting(plain, setting), _in_setting(trials, setting)
        s_set = _in_setting(searches, setting) if not searches.empty else searches
        for method in order:
            rows = p_set[p_set["method"] == method]
            found = False
            if len(rows):
                found = True
                if method in multi_rho:
                    for rho0, g in sorted(rows.groupby("rho0"), key=lambda kv: kv[0]):
                        entries.append(_plain_entry(setting, method, float(rho0), g))
                else:
                    entries.append(_plain_entry(setting, method, None, rows))
            srows = s_set[s_set["method"] == method] if not s_set.empty else s_set
            tr = t_set[t_set["method"] == method]
            if len(srows):
                found = True
                for _, srow in srows.iterrows():
                    tag = srow.get("search")
                    entries.append(_search_entry(setting, method, srow, tr[tr["search"] == tag] if isinstance(tag, str) else tr))
            elif len(tr):  # trials without a summary (interrupted search): rho* selected from them
                found = True
                for tag, g in tr.groupby("search", sort=False):
                    srow = pd.Series({"method": method, "strategy": g["strategy"].iloc[0], "search": tag, **select(g)})
                    entries.append(_search_entry(setting, method, srow, g))
                res.notes.append(f"{method}: no searches.parquet row; ρ* recomputed from its {len(tr)} finished "
                                 f"trials (the search may be incomplete).")
            if not found and method in dict(spec_methods):
                entries.append(Entry(setting=setting, method=method, strategy=dict(spec_methods)[method], kind="missing",
                                     rows=runs.iloc[0:0], acc_runs=runs.iloc[0:0]))
    return settings, entries
