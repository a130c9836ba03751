"""The methods of the tables: one :class:`Entry` per method (plain runs, split by ρ₀ when a label ran
several ρ values, or one search) and setting, including the spec's methods that have no runs ("missing").

Each entry carries its test accuracy per seed (the replicates the comparisons pair), the mean with a
bootstrap 95 % interval, and its cost PER REPLICATE (:func:`hpo_bench.stats.per_replicate_cost`): what it
takes to choose ρ and produce one trained model — one run of a plain method; a search's trials of one
seed plus the final training at ρ* when the search re-trains on evaluation seeds — per seed, with a
bootstrap interval over seeds; ``total`` is what the entry's runs cost together (the study's compute)."""
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
from hpo_bench.stats import NO_INTERVAL, Interval, mean_ci, per_replicate_cost

COSTS = (("grad_evals", "grad evals"), ("wall_s", "wall s"), ("device_s", "device s"), ("peak_mem_bytes", "peak mem (MiB)"))
ADDITIVE = ("grad_evals", "wall_s", "device_s")  # peak memory is a maximum, never a sum


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
    cost: dict = field(default_factory=dict)  # per replicate: mean over seeds (peak memory: max)
    cost_ci: dict = field(default_factory=dict)  # per replicate: Interval over seeds
    cost_seeds: dict = field(default_factory=dict)  # per replicate: {column: {seed: cost}}
    cost_basis: str = ""
    total: dict = field(default_factory=dict)  # every run of the entry together (the study's compute)
    params: dict = field(default_factory=dict)
    seed_acc: dict = field(default_factory=dict)  # seed -> test accuracy (ok runs; a search: at rho*)
    acc_ci: Interval = NO_INTERVAL
    n_eval: int = 0  # a search's evaluation runs at rho* (nested selection) and how many ended ok
    n_eval_ok: int = 0

    @property
    def label(self) -> str:
        return self.method if self.rho0 is None else f"{self.method} (ρ₀={self.rho0:g})"

    @property
    def has_acc(self) -> bool:
        return self.n_acc > 0 and not pd.isna(self.acc_mean)

    def acc_text(self) -> str:
        """Mean test accuracy with its bootstrap 95 % interval, in %; failures as counts, never as numbers."""
        if self.kind == "missing":
            return "missing"
        if not self.has_acc:
            return _failures_text(self.failures) or "—"
        return _pct(self.acc_mean, self.acc_ci)


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


def _by_seed(rows: pd.DataFrame, col: str, how: str = "mean") -> dict:
    """{seed: value of col} over the rows (several rows of one seed: their mean, or their sum)."""
    if rows is None or not len(rows) or col not in rows:
        return {}
    vals = rows[["seed", col]].dropna()
    agg = vals.groupby("seed")[col].agg(how)
    return {int(s): float(v) for s, v in agg.items()}


def _set_accuracy(e: Entry) -> None:
    e.seed_acc = _by_seed(e.acc_runs, "test_acc")
    e.acc_ci = mean_ci(list(e.seed_acc.values()))
    if not pd.isna(e.acc_mean):  # the stored mean (a search: searches.parquet) with the interval of the seeds
        e.acc_ci = Interval(e.acc_mean, e.acc_ci.low, e.acc_ci.high, e.acc_ci.n)


def replicate_costs(search: pd.DataFrame, finals: pd.DataFrame, col: str) -> dict:
    """{replicate: cost per replicate} (:func:`hpo_bench.stats.per_replicate_cost` per replicate): the search
    trials of one seed plus the final run(s) of one seed. Search and final runs of the same seed form one
    replicate; when they use different seeds (nested selection: selection seeds ≠ evaluation seeds), the
    k-th selection seed and the k-th evaluation seed (in sorted order) do."""
    s, f = _by_seed(search, col, "sum"), _by_seed(finals, col, "sum")
    n_f = {int(k): int(v) for k, v in finals.groupby("seed").size().items()} if len(finals) else {}
    if not f or not s or set(s) == set(f):
        return {k: per_replicate_cost(s.get(k, 0.0), 1, f.get(k, 0.0), n_f.get(k, 0)) for k in sorted(set(s) | set(f))}
    out = {}
    for i, (ks, kf) in enumerate(zip(sorted(s), sorted(f))):
        out[i] = per_replicate_cost(s[ks], 1, f[kf], n_f[kf])
    if len(s) != len(f):  # unequal numbers: the mean of each part, no spread over replicates
        out = {0: per_replicate_cost(sum(s.values()), len(s), sum(f.values()), sum(n_f.values()))}
    return out


def _set_cost(e: Entry, trials: pd.DataFrame, finals: pd.DataFrame) -> None:
    """Per-replicate cost (mean over replicates, with its interval) and the entry's total, per column."""
    for c, _ in COSTS:
        both = pd.concat([trials, finals])
        if c == "peak_mem_bytes":
            per_seed = _by_seed(both, c, "max")
            e.cost_seeds[c] = per_seed
            e.cost[c] = max(per_seed.values()) if per_seed else math.nan
            e.cost_ci[c] = Interval(e.cost[c], n=len(per_seed))
            e.total[c] = float(both[c].max()) if len(both) and both[c].notna().any() else math.nan
            continue
        e.cost_seeds[c] = replicate_costs(trials, finals, c)
        e.cost_ci[c] = mean_ci(list(e.cost_seeds[c].values()))
        e.cost[c] = e.cost_ci[c].estimate
        e.total[c] = float(both[c].sum()) if len(both) else math.nan


EVAL_SUFFIX = "/eval"  # the search tag of a search's evaluation runs (nested selection)


def base_tag(tag: str) -> str:
    return tag[: -len(EVAL_SUFFIX)] if tag.endswith(EVAL_SUFFIX) else tag


def evaluation_runs(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(selection trials, evaluation runs) of a search's rows. Evaluation runs re-train the selected ρ* on
    the spec's seeds (search tag ``<kind>/<engine>/eval``); a store written before nested selection has
    none: its selected model is one of its trials and costs nothing extra."""
    if trials is None or not len(trials):
        return trials, trials
    is_eval = trials["search"].astype(str).str.endswith(EVAL_SUFFIX).to_numpy()
    return trials[~is_eval], trials[is_eval]


def _plain_entry(setting, method, rho0, rows) -> Entry:
    ok = rows[rows["status"] == "ok"]
    acc = ok["test_acc"].dropna()
    e = Entry(setting=setting, method=method, strategy=str(rows["strategy"].iloc[0]), kind="plain", rho0=rho0,
              rows=rows, acc_runs=ok, acc_mean=float(acc.mean()) if len(acc) else math.nan,
              acc_std=float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, n_acc=int(len(acc)), n_ok=int(len(ok)),
              n_total=int(len(rows)), failures=_failures(rows), params=_params(rows))
    basis = ok if len(ok) else rows
    _set_cost(e, rows.iloc[0:0], basis)
    e.total = {c: float(rows[c].max() if c == "peak_mem_bytes" else rows[c].sum()) for c, _ in COSTS}
    e.cost_basis = f"1 run ({'ok runs of ' if len(ok) else ''}{basis['seed'].nunique()} seed{'s' if basis['seed'].nunique() != 1 else ''})"
    _set_accuracy(e)
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
    search, finals = evaluation_runs(trials)
    ok = search[search["status"] == "ok"] if len(search) else search
    at_star = ok[np.isclose(ok["rho0"].astype(float), rho_star)] if len(ok) and not math.isnan(rho_star) else ok.iloc[0:0]
    acc_runs = finals[finals["status"] == "ok"] if len(finals) else at_star  # nested: the evaluation runs
    n_trials = int(sget("n_trials", len(search)))
    n_failed = int(sget("n_failed", int((search["status"] != "ok").sum()) if len(search) else 0))
    e = Entry(setting=setting, method=method, strategy=str(strategy), kind="search",
              search=base_tag(str(sget("search", trials["search"].iloc[0] if len(trials) else ""))), rows=trials,
              acc_runs=acc_runs, acc_mean=float(sget("test_acc_mean")), acc_std=float(sget("test_acc_std", 0.0)),
              n_acc=len(acc_runs) if len(trials) else int(sget("n_seeds_at_star", 0)), n_ok=n_trials - n_failed,
              n_total=n_trials, failures=_failures(trials) if len(trials) else {}, rho_star=rho_star,
              params=_params(trials) if len(trials) else {})
    e.n_eval, e.n_eval_ok = len(finals), int((finals["status"] == "ok").sum()) if len(finals) else 0
    if len(acc_runs) and len(finals):  # the accuracy is the evaluation runs' (as searches.parquet says, or would)
        e.acc_mean = float(acc_runs["test_acc"].mean())
    if not e.has_acc and n_failed and not e.failures:
        e.failures = {"failed": n_failed}
    e.rho_text = f"ρ*={rho_star:g}" if not math.isnan(rho_star) else "—"
    _set_cost(e, search, finals)
    for c in ADDITIVE:  # the summary's sum over all trials when the trials themselves are absent
        v = sget(f"cost_{c}")
        if not len(trials) and not pd.isna(v):
            e.total[c] = float(v)
            if e.n_acc:  # its seeds are those at rho*
                e.cost[c] = per_replicate_cost(float(v), e.n_acc)
                e.cost_ci[c] = Interval(e.cost[c], n=e.n_acc)
    n_seeds = search["seed"].nunique() if len(search) else 0
    per_seed = len(search) / n_seeds if n_seeds else math.nan
    e.cost_basis = (f"{per_seed:g} trials of 1 seed" if n_seeds else "no trials") + \
        (" + 1 evaluation run" if len(finals) else "")
    _set_accuracy(e)
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
                    mine = tr[tr["search"].map(base_tag) == tag] if isinstance(tag, str) else tr
                    entries.append(_search_entry(setting, method, srow, mine))
            elif len(tr):  # trials without a summary (interrupted search): rho* selected from them
                found = True
                for tag, g in tr.groupby(tr["search"].map(base_tag), sort=False):
                    srow = pd.Series({"method": method, "strategy": g["strategy"].iloc[0], "search": tag,
                                      **select(evaluation_runs(g)[0])})
                    entries.append(_search_entry(setting, method, srow, g))
                res.notes.append(f"{method}: no searches.parquet row; ρ* recomputed from its {len(tr)} finished "
                                 f"trials (the search may be incomplete).")
            if not found and method in dict(spec_methods):
                entries.append(Entry(setting=setting, method=method, strategy=dict(spec_methods)[method], kind="missing",
                                     rows=runs.iloc[0:0], acc_runs=runs.iloc[0:0]))
    return settings, entries
