"""Report of one results directory: ``report.md`` (or a self-contained ``report.html``) plus PNG figures.

``hpo-bench report RUN_DIR [--format md|html]`` (and ``hpo-bench run`` when the spec's ``report`` flag
is true) reads ``runs.parquet``, ``curves.parquet``, ``searches.parquet``, ``anytime.parquet``,
``metadata.json`` and, when present, ``fidelity_summary.parquet`` of RUN_DIR, and writes

* tables (markdown): main accuracy (LETS Table 1 layout), cost relative to one SAM run, ρ₀-robustness
  (Table 5), generalization metric (Table 6), label noise (Table 4), hypergradient fidelity, and the
  fraction of SAM steps / SAMAR's final λ;
* figures in ``RUN_DIR/figures/``: accuracy vs grad evals and vs wall time with the Pareto front, ρ_t
  trajectories coloured by ρ₀, generalization gap and training loss vs epoch, AE-SAM's fraction of SAM
  steps, SAMAR's λ_t, and the anytime curves of the searches. A figure whose data are absent is skipped
  and the report says so.

One "method" of the tables is either the plain (non-search) runs of a method label — split by ρ₀
when that label ran several ρ values — or a search, whose accuracy is the test accuracy at its
selected ρ* (``searches.parquet``) and whose cost is the sum over all its trials. Accuracies are the
mean ± sample std (ddof=1; 0 for a single seed) over seeds of the test accuracy at the best-validation
epoch, in %, computed from the numbers stored in the parquet files (rounded for display only). Runs
whose status is not ``ok`` (diverged, stopped, timeout, oom) are reported as counts, never as numbers.
Nothing under RUN_DIR is modified except ``report.md``/``report.html`` and ``figures/``.
"""
from __future__ import annotations

import base64
import html as html_lib
import io
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hpo_bench.store import atomic_write_bytes, atomic_write_text

ALLOWED = "allowed: a directory written by hpo-bench run"
REQUIRED_RUN_COLUMNS = ("run_id", "method", "strategy", "status", "rho0", "seed", "test_acc")
COSTS = (("grad_evals", "grad evals"), ("wall_s", "wall s"), ("device_s", "device s"), ("peak_mem_bytes", "peak mem (MiB)"))
NOISE_COL = "setting.data.label_noise"
FIGURES = ("acc_vs_grad_evals", "acc_vs_wall", "rho_trajectories", "generalization_gap", "train_loss",
           "sam_fraction", "samar_lambda", "anytime")


# ============================================================================= loading

@dataclass
class Results:
    root: Path
    meta: dict
    runs: pd.DataFrame
    searches: pd.DataFrame
    anytime: pd.DataFrame
    fidelity: pd.DataFrame
    setting_cols: list
    notes: list = field(default_factory=list)


def _bad(root, problem: str) -> ValueError:
    return ValueError(f"RUN_DIR: {str(root)!r} {problem}; {ALLOWED}")


def _read_parquet(root: Path, name: str) -> pd.DataFrame:
    path = root / f"{name}.parquet"
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_parquet(path)
    except Exception as err:  # a torn / foreign file: one line, no traceback
        raise _bad(root, f"has an unreadable {name}.parquet ({type(err).__name__})") from None


def load_results(run_dir) -> Results:
    """Read a results directory; raise a one-line ValueError naming RUN_DIR when it is not one."""
    root = Path(run_dir)
    if not root.is_dir():
        raise _bad(root, "is not a directory")
    meta_path = root / "metadata.json"
    if not meta_path.is_file():
        raise _bad(root, "has no metadata.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise _bad(root, "has a malformed metadata.json") from None
    if not isinstance(meta, dict):
        raise _bad(root, "has a malformed metadata.json")
    notes = []
    runs = _read_parquet(root, "runs")
    if runs.empty and (root / "trials").is_dir():  # a run in progress: read the finished trials, write nothing
        rows = []
        for p in sorted((root / "trials").glob("*.json")):
            if not p.name.startswith("."):
                try:
                    rows.append(json.loads(p.read_text()))
                except ValueError:
                    continue
        runs = pd.DataFrame(rows)
        if len(runs):
            notes.append(f"runs.parquet is absent: the report reads the {len(runs)} finished trials in trials/.")
    if runs.empty:
        raise _bad(root, "has no finished runs (runs.parquet or trials/*.json)")
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in runs]
    if missing:
        raise _bad(root, f"runs.parquet lacks columns {', '.join(missing)}")
    runs = runs.copy()
    for col, default in (("search", ""), ("params", "{}"), ("reason", ""), ("label_noise", math.nan)):
        if col not in runs:
            runs[col] = default
        runs[col] = runs[col].fillna(default) if isinstance(default, str) else runs[col]
    runs["search"] = runs["search"].astype(str)
    for col in ("grad_evals", "fwd_evals", "wall_s", "device_s", "peak_mem_bytes", "rho_final", "stop_step",
                "best_val_acc", "finished_at", "epochs_done", "steps"):
        if col not in runs:
            runs[col] = math.nan
    searches = _read_parquet(root, "searches")
    anytime = _read_parquet(root, "anytime")
    setting_cols = [c for c in runs.columns if c.startswith("setting.")]
    if NOISE_COL not in setting_cols and runs["label_noise"].nunique() > 1:  # merged directories
        runs[NOISE_COL] = runs["label_noise"]
        setting_cols.append(NOISE_COL)
    for col in setting_cols:
        if not searches.empty and col not in searches:
            searches[col] = math.nan
    return Results(root=root, meta=meta, runs=runs, searches=searches, anytime=anytime,
                   fidelity=_read_parquet(root, "fidelity_summary"), setting_cols=setting_cols, notes=notes)


# ============================================================================= formatting

def _g(v, digits: int = 4) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def _key_value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def _pct(mean, std, n: int) -> str:
    if n == 0 or mean is None or pd.isna(mean):
        return "—"
    return f"{100 * mean:.2f} ± {100 * (0.0 if pd.isna(std) else std):.2f}"


def _count(v) -> str:
    if v is None or pd.isna(v):
        return "—"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def _failures_text(failures: dict) -> str:
    return ", ".join(f"{n} {s}" for s, n in failures.items())


def _bold(text: str) -> str:
    return f"**{text}**"


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
            elif len(tr):  # trials without a summary (interrupted search): select rho* as search.select does
                found = True
                from hpo_bench.search import select

                for tag, g in tr.groupby("search", sort=False):
                    srow = pd.Series({"method": method, "strategy": g["strategy"].iloc[0], "search": tag, **select(g)})
                    entries.append(_search_entry(setting, method, srow, g))
                res.notes.append(f"{method}: no searches.parquet row; ρ* recomputed from its {len(tr)} finished "
                                 f"trials (the search may be incomplete).")
            if not found and method in dict(spec_methods):
                entries.append(Entry(setting=setting, method=method, strategy=dict(spec_methods)[method], kind="missing",
                                     rows=runs.iloc[0:0], acc_runs=runs.iloc[0:0]))
    return settings, entries


# ============================================================================= document model

class Doc:
    """A list of blocks rendered to markdown or to one self-contained HTML page."""

    def __init__(self):
        self.blocks = []
        self.n_sections = 0

    def section(self, title):
        """A numbered level-2 heading (tables that are absent take no number)."""
        self.n_sections += 1
        self.h(2, f"{self.n_sections}. {title}")

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def table(self, headers, rows):
        self.blocks.append(("table", list(headers), [list(r) for r in rows]))

    def ul(self, items):
        if items:
            self.blocks.append(("ul", list(items)))

    def img(self, rel, alt, data: bytes):
        self.blocks.append(("img", rel, alt, data))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                cell = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines = ["| " + " | ".join(cell(c) for c in b[1]) + " |", "|" + "|".join("---" for _ in b[1]) + "|"]
                lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    @staticmethod
    def _inline(text: str) -> str:
        t = html_lib.escape(str(text))
        t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", t)

    def html(self, title: str) -> str:
        inl = self._inline
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{inl(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{inl(b[1])}</p>")
            elif b[0] == "table":
                head = "".join(f"<th>{inl(c)}</th>" for c in b[1])
                rows = "".join("<tr>" + "".join(f"<td>{inl(c)}</td>" for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{inl(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "img":
                data = base64.b64encode(b[3]).decode("ascii")
                body.append(f'<figure><img alt="{html_lib.escape(b[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{inl(b[2])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
                 "text-align:left}th{background:#eee}img{max-width:100%}code{background:#f4f4f4}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html_lib.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ============================================================================= tables

def _setting_title(cols, setting) -> str:
    return ", ".join(f"{c[len('setting.'):]} = {v}" for c, v in zip(cols, setting))


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


# ============================================================================= figures

MARKERS = "osD^vP*Xh<>p"


class Styles:
    def __init__(self, labels):
        from matplotlib import colormaps

        labels = list(dict.fromkeys(labels))
        cmap = colormaps["tab10"]  # (colour, marker) pairs stay distinct for up to 60 labels
        self.map = {lab: (cmap(i % 10), MARKERS[i % len(MARKERS)]) for i, lab in enumerate(labels)}

    def __call__(self, label):
        return self.map.get(label, ("black", "o"))


def _panels(n, ncols=2, w=5.2, h=3.7):
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols + 2.8, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend(fig, axes, title=None):
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8, title=title,
                   title_fontsize=8)


def _log_axis(ax, which: str, values):
    """Log scale with plain-number labels at 1-2-5 ticks (every integer multiple on a narrow range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    vals = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    span = max(vals) / min(vals) if vals else 1e9
    subs = tuple(range(1, 10)) if span < 10 else (1.0, 2.0, 5.0) if span < 1000 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_x(ax, xs):
    _log_axis(ax, "x", xs)


def _int_x(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


class Curves:
    """Lazy, filtered reads of curves.parquet (or trials/<run_id>.parquet when it is absent)."""

    EPOCH = ["train_loss", "train_acc", "test_loss", "test_acc"]
    STEP = ["rho", "sam_step", "lambda"]

    def __init__(self, res: Results):
        self.res = res
        self.cache = {}

    def get(self, scope: str) -> pd.DataFrame:
        if scope not in self.cache:
            metrics = self.EPOCH if scope == "epoch" else self.STEP
            path = self.res.root / "curves.parquet"
            df = pd.DataFrame(columns=["run_id", "scope", "epoch", "step", "metric", "value"])
            try:
                if path.exists():
                    df = pd.read_parquet(path, filters=[("scope", "==", scope), ("metric", "in", metrics)])
                elif (self.res.root / "trials").is_dir():
                    parts = [pd.read_parquet(p) for p in (self.res.root / "trials").glob("*.parquet")
                             if not p.name.startswith(".")]
                    parts = [p for p in parts if len(p)]
                    if parts:
                        df = pd.concat(parts, ignore_index=True)
                        df = df[(df["scope"] == scope) & df["metric"].isin(metrics)]
            except Exception as err:  # an unreadable curves file: figures from curves are skipped, noted
                self.res.notes.append(f"curves could not be read ({type(err).__name__}); curve figures skipped.")
            self.cache[scope] = df
        return self.cache[scope]

    def wide(self, scope, run_ids, metrics) -> pd.DataFrame:
        """Rows (run_id, epoch|step) × columns metrics, for the given runs."""
        df = self.get(scope)
        df = df[df["run_id"].isin(list(run_ids)) & df["metric"].isin(metrics)]
        if df.empty:
            return pd.DataFrame()
        idx = "epoch" if scope == "epoch" else "step"
        return df.pivot_table(index=["run_id", idx], columns="metric", values="value", aggfunc="mean").reset_index()


def _setting_panels(res, settings, entries, has_data):
    """Settings that have data for a figure, with panel titles."""
    keep = [s for s in settings if any(has_data(e) for e in entries if e.setting == s)]
    return keep, [(_setting_title(res.setting_cols, s) if len(settings) > 1 else "") for s in keep]


def fig_pareto(res, settings, entries, styles, cost: str, xlabel: str):
    pts = [e for e in entries if e.kind != "missing" and e.has_acc and not pd.isna(e.cost.get(cost)) and e.cost[cost] > 0]
    keep, titles = _setting_panels(res, settings, pts, lambda e: True)
    if not keep:
        return None
    fig, axes = _panels(len(keep))
    for ax, s, title in zip(axes, keep, titles):
        es = [e for e in pts if e.setting == s]
        same = {}
        for e in es:  # methods at the same cost are spread by a few % in x so that each stays visible
            same.setdefault(e.cost[cost], []).append(e)
        for e in es:
            color, marker = styles(e.label)
            group = same[e.cost[cost]]
            jitter = 1 + 0.025 * (group.index(e) - (len(group) - 1) / 2)
            ax.errorbar([e.cost[cost] * jitter], [100 * e.acc_mean], yerr=[100 * (0 if pd.isna(e.acc_std) else e.acc_std)],
                        fmt=marker, color=color, ms=7, capsize=3, label=e.label,
                        mfc="none" if e.kind == "search" else color)
        xs = sorted(((e.cost[cost], 100 * e.acc_mean) for e in es), key=lambda t: (t[0], -t[1]))
        front, best = [], -math.inf
        for x, y in xs:
            if y > best:
                front.append((x, y))
                best = y
        if front:  # non-dominated points (no other is cheaper and at least as accurate), extended to the right
            fx, fy = zip(*front)
            xmax = max(x for x, _ in xs)
            ax.step(list(fx) + [xmax * 1.15], list(fy) + [fy[-1]], where="post", color="black", ls="--", lw=1,
                    label="Pareto front", zorder=0)
        _log_x(ax, [x for x, _ in xs] + [max(x for x, _ in xs) * 1.15])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes, "method (hollow: search)")
    return fig


def fig_rho(res, settings, entries, curves):
    plain = [e for e in entries if e.kind == "plain"]
    step = curves.get("step")
    ids = set(step.loc[step["metric"] == "rho", "run_id"]) if len(step) else set()
    if not ids:
        return None
    panels = {}
    for e in plain:
        runs = e.rows[e.rows["run_id"].isin(ids)]
        if len(runs):
            panels.setdefault((e.setting, e.method), []).append((e, runs))
    if not panels:
        return None
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    rho0s = sorted({float(r) for lst in panels.values() for _, runs in lst for r in runs["rho0"].dropna()})
    norm = LogNorm(min(rho0s), max(rho0s)) if len(rho0s) > 1 and min(rho0s) > 0 else None
    cmap = colormaps["viridis"]
    keys = list(panels)[:24]
    fig, axes = _panels(len(keys), ncols=3, w=4.6, h=3.4)
    for ax, key in zip(axes, keys):
        for e, runs in panels[key]:
            wide = curves.wide("step", runs["run_id"], ["rho"])
            if wide.empty:
                continue
            rho0 = float(runs["rho0"].iloc[0])
            mean = wide.groupby("step")["rho"].mean()
            color = cmap(0.85 * norm(rho0)) if norm else "tab:blue"
            ax.plot(mean.index, mean.values, color=color, lw=1.3, label=f"ρ₀={rho0:g}")
        _log_axis(ax, "y", [v for line in ax.get_lines() for v in line.get_ydata()])
        ax.set_xlabel("training step")
        ax.set_ylabel("ρ_t (log scale)")
        title = key[1] + (f"\n{_setting_title(res.setting_cols, key[0])}" if len(settings) > 1 else "")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes, "initial ρ₀ (mean over seeds)")
    if len(panels) > len(keys):
        res.notes.append(f"ρ_t figure: {len(panels) - len(keys)} of {len(panels)} panels not drawn (24 at most).")
    return fig


def _epoch_means(curves, e, fn) -> pd.Series | None:
    wide = curves.wide("epoch", e.acc_runs["run_id"], Curves.EPOCH)
    if wide.empty:
        return None
    vals = fn(wide)
    if vals is None:
        return None
    s = pd.Series(vals.to_numpy(float), index=wide["epoch"].to_numpy()).dropna()
    return s.groupby(level=0).mean() if len(s) else None


def fig_epoch(res, settings, entries, curves, styles, specs):
    """specs: list of (title, fn(wide)->Series, ylabel, logy). Rows = settings, columns = specs."""
    es = [e for e in entries if e.kind != "missing" and e.acc_runs is not None and len(e.acc_runs)]
    epoch = curves.get("epoch")
    if epoch.empty or not es:
        return None
    lines = {}
    for e in es:
        for j, (_, fn, _, _) in enumerate(specs):
            s = _epoch_means(curves, e, fn)
            if s is not None and len(s):
                lines.setdefault((e.setting, j), []).append((e, s))
    keep = [s for s in settings if any((s, j) in lines for j in range(len(specs)))]
    if not keep:
        return None
    fig, axes = _panels(len(keep) * len(specs), ncols=len(specs) if len(specs) > 1 else 3)
    for r, s in enumerate(keep):
        for j, (title, _, ylabel, logy) in enumerate(specs):
            ax = axes[r * len(specs) + j]
            for e, series in lines.get((s, j), []):
                color, marker = styles(e.label)
                ax.plot(series.index, series.values, color=color, marker=marker, ms=3, lw=1.2,
                        ls="--" if e.kind == "search" else "-", label=e.label)
            if logy:
                _log_axis(ax, "y", [v for line in ax.get_lines() for v in line.get_ydata()])
            _int_x(ax)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(title + (f"\n{_setting_title(res.setting_cols, s)}" if len(settings) > 1 else ""), fontsize=9)
            ax.grid(alpha=0.3)
    _legend(fig, axes, "method (mean over seeds; dashed: search at ρ*)")
    return fig


def fig_trace(res, settings, entries, curves, styles, metric, ylabel, rolling: bool):
    step = curves.get("step")
    ids = set(step.loc[step["metric"] == metric, "run_id"]) if len(step) else set()
    es = [(e, e.rows[e.rows["run_id"].isin(ids)]) for e in entries if e.kind == "plain"]
    es = [(e, r) for e, r in es if len(r)]
    if not es:
        return None
    keep = list(dict.fromkeys(e.setting for e, _ in es))
    keep = [s for s in settings if s in keep]
    fig, axes = _panels(len(keep))
    for ax, s in zip(axes, keep):
        for e, runs in es:
            if e.setting != s:
                continue
            wide = curves.wide("step", runs["run_id"], [metric])
            if wide.empty:
                continue
            if rolling:
                per_run = []
                for rid, g in wide.groupby("run_id"):
                    g = g.sort_values("step")
                    spacing = float(np.median(np.diff(g["step"]))) if len(g) > 1 else 1.0
                    r = runs[runs["run_id"] == rid].iloc[0]
                    spe = (r["steps"] / r["epochs_done"]) if r["epochs_done"] and not pd.isna(r["steps"]) else 50.0
                    window = max(1, int(round(spe / max(spacing, 1.0))))
                    per_run.append(pd.Series(100 * g[metric].rolling(window, min_periods=1).mean().to_numpy(),
                                             index=g["step"].to_numpy()))
                mean = pd.concat(per_run, axis=1).mean(axis=1).sort_index()
            else:
                mean = wide.groupby("step")[metric].mean()
            color, marker = styles(e.label)
            ax.plot(mean.index, mean.values, color=color, lw=1.3, label=e.label)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(_setting_title(res.setting_cols, s) if len(settings) > 1 else "", fontsize=9)
        ax.grid(alpha=0.3)
    _legend(fig, axes, "method (mean over seeds)")
    return fig


def _anytime_segments(res, entries):
    """Split anytime.parquet into one curve per search entry: by its setting columns, or (stores written
    before those columns existed) the k-th curve of a method, restarting at trial 1, belongs to that
    method's k-th searches.parquet row."""
    at = res.anytime
    if at.empty or not {"method", "trial", "cum_grad_evals", "test_acc"} <= set(at.columns):
        return []
    out = []
    if res.setting_cols and set(res.setting_cols) <= set(at.columns):  # written with its setting columns
        for (method, *values), c in at.groupby(["method", *res.setting_cols], sort=False):
            key = _setting_key(dict(zip(res.setting_cols, values)), res.setting_cols)
            e = next((e for e in entries if e.kind == "search" and e.method == method and e.setting == key), None)
            out.append((e, method, c))
        return out
    for method, g in at.groupby("method", sort=False):
        t = g["trial"].to_numpy()
        seg = np.cumsum(np.r_[True, t[1:] <= t[:-1]])  # a new curve starts where the trial count restarts
        curves = [c for _, c in g.groupby(seg, sort=True)]
        ents = [e for e in entries if e.kind == "search" and e.method == method]
        for k, c in enumerate(curves):
            e = ents[k] if k < len(ents) else None
            out.append((e, method, c))
    return out


def fig_anytime(res, settings, entries, styles):
    segs = _anytime_segments(res, entries)
    segs = [(e, m, c) for e, m, c in segs if (c["cum_grad_evals"] > 0).any()]
    if not segs:
        return None
    keep = [s for s in settings if any(e is not None and e.setting == s for e, _, _ in segs)] or [None]
    fig, axes = _panels(len(keep))
    for ax, s in zip(axes, keep):
        for e, method, c in segs:
            if s is not None and (e is None or e.setting != s):
                continue
            color, marker = styles(e.label if e else method)
            ax.step(c["cum_grad_evals"], 100 * c["test_acc"], where="post", color=color, marker=marker, ms=4,
                    lw=1.3, label=e.label if e else method)
        _log_x(ax, [v for _, _, c in segs for v in c["cum_grad_evals"] if v > 0])
        ax.set_xlabel("cumulative gradient evaluations of the search (log scale)")
        ax.set_ylabel("test acc. at best-so-far ρ* (%)")
        ax.set_title(_setting_title(res.setting_cols, s) if s is not None and len(settings) > 1 else "", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes, "search")
    return fig


def _loss_gap(w):
    return (w["test_loss"] - w["train_loss"]) if {"test_loss", "train_loss"} <= set(w.columns) else None


def _acc_gap(w):
    return 100 * (w["train_acc"] - w["test_acc"]) if {"train_acc", "test_acc"} <= set(w.columns) else None


def _train_loss(w):
    return w["train_loss"] if "train_loss" in w else None


# ============================================================================= report

def _header(doc, res, entries):
    meta, spec, runs = res.meta, res.meta.get("spec") or {}, res.runs
    name = spec.get("name") or res.root.name
    doc.h(1, f"hpo-bench report: {name}")
    if spec.get("description"):
        doc.p(str(spec["description"]))
    hw = meta.get("hardware") or {}
    hw_text = ", ".join(f"{k}={v}" for k, v in hw.items()) if isinstance(hw, dict) else str(hw)
    devices = ", ".join(sorted(map(str, runs["device"].dropna().unique()))) if "device" in runs else "—"
    versions = meta.get("versions") or {}
    ver_text = ", ".join(f"{k} {v}" for k, v in versions.items() if v) if isinstance(versions, dict) else str(versions)
    data, model, train = spec.get("data") or {}, spec.get("model") or {}, spec.get("train") or {}
    setup = (f"{data.get('dataset', '—')} ({data.get('num_samples', '—')} samples, label noise "
             f"{data.get('label_noise', '—')}); model {model.get('name', '—')}; {train.get('epochs', '—')} epochs, "
             f"batch {train.get('batch_size', '—')}, lr {train.get('lr', '—')}, {train.get('schedule', '—')} schedule")
    status = runs["status"].value_counts(sort=False)
    status_text = ", ".join(f"{n} {s}" for s, n in status.items())
    n_search = int((runs["search"] != "").sum())
    rows = [["run directory", f"`{res.root.resolve()}`"],
            ["command", f"`{meta.get('command', '—')}`"],
            ["created", str(meta.get("created", "—"))],
            ["git commit", f"`{meta.get('git_commit', '—')}`"],
            ["hardware", hw_text or "—"],
            ["device of the runs", devices],
            ["versions", ver_text or "—"],
            ["seeds", ", ".join(map(str, spec.get("seeds") or sorted(runs["seed"].unique())))],
            ["setup", setup],
            ["runs", f"{len(runs)} ({status_text}); {n_search} of them search trials"],
            ["total wall time of the runs", f"{runs['wall_s'].sum():.1f} s (device time {runs['device_s'].sum():.1f} s; "
                                            "sum over runs, which may have overlapped)"]]
    if spec.get("vary"):
        rows.append(["varied", "; ".join(f"{k} ∈ {v}" for k, v in spec["vary"].items())])
    doc.table(["field", "value"], rows)


def _notes(res, settings, entries, skipped) -> list:
    notes = []
    runs = res.runs
    bad = runs[runs["status"] != "ok"]
    for (setting, method, status), g in bad.groupby(["_setting", "method", "status"], sort=False):
        kind = "search trial" if (g["search"] != "").any() else "run"
        where = f" ({_setting_title(res.setting_cols, setting)})" if len(settings) > 1 else ""
        reasons = "; ".join(dict.fromkeys(
            f"{r['reason'] or 'no reason recorded'}" + (f" (step {int(r['stop_step'])})" if not pd.isna(r["stop_step"])
                                                        and r["stop_step"] >= 0 else "")
            for _, r in g.iterrows()))
        rho = ", ".join(f"{v:g}" for v in sorted(g["rho0"].dropna().unique()))
        notes.append(f"{method}{where}: {len(g)} {kind}{'s' if len(g) != 1 else ''} {status} at ρ={rho} — {reasons}"
                     + (" (counted in the search cost, never selected)" if kind == "search trial" else ""))
    missing = {}
    for e in entries:
        if e.kind == "missing":
            missing.setdefault((e.method, e.strategy), []).append(e.setting)
        elif not e.has_acc:
            where = f" ({_setting_title(res.setting_cols, e.setting)})" if len(settings) > 1 else ""
            notes.append(f"{e.label}{where}: no run finished ok — no accuracy reported.")
    for (method, strategy), where in missing.items():
        where = "" if len(where) == len(settings) else " (" + "; ".join(_setting_title(res.setting_cols, s) for s in where) + ")"
        notes.append(f"{method} (strategy `{strategy}`) is in the spec but has no runs{where}: listed as missing.")
    for s in settings:
        es = [e for e in entries if e.setting == s and e.has_acc]
        if es:
            best = max(e.acc_mean for e in es)
            names = ", ".join(e.label for e in es if e.acc_mean == best)
            where = f" ({_setting_title(res.setting_cols, s)})" if len(settings) > 1 else ""
            notes.append(f"Best test accuracy{where}: {names} at {100 * best:.2f}%.")
    if not any(_sam_reference(entries, s) for s in settings):
        notes.append("No SAM run (strategy `sam`, no search): costs are not shown relative to SAM.")
    if len(settings) > 1 and not res.anytime.empty and not set(res.setting_cols) <= set(res.anytime.columns):
        notes.append("anytime.parquet has no setting columns: its curves are matched to settings by order "
                     "(k-th curve of a search ↔ k-th row of that search in searches.parquet).")
    notes += res.notes
    notes += [f"Figure skipped: {s}" for s in skipped]
    notes.append("Accuracies are the test accuracy at the best-validation epoch; ± is the sample std over seeds "
                 "(0 for one seed). Numbers are those of the parquet files, rounded for display only.")
    return notes


def write_report(run_dir, fmt: str = "md") -> Path:
    """Write ``report.md`` (fmt='md') or a self-contained ``report.html`` (fmt='html') and ``figures/*.png``."""
    if fmt not in ("md", "html"):
        raise ValueError(f"--format: {fmt!r}; allowed: md, html")
    res = load_results(run_dir)
    settings, entries = build_entries(res)
    doc = Doc()
    _header(doc, res, entries)
    main_table(doc, res, settings, entries)
    cost_table(doc, res, settings, entries)
    optional = [("ρ₀-robustness table", "no method ran several ρ₀ values", rho0_table(doc, res, settings, entries)),
                ("generalization-metric table", "no learned-ρ method ran several `metric` values",
                 metric_table(doc, res, settings, entries)),
                ("label-noise table", "a single label-noise level", noise_table(doc, res, settings, entries)),
                ("hypergradient-fidelity table", "no fidelity_summary.parquet", fidelity_table(doc, res)),
                ("adaptive-SAM table", "no sam_fraction / lambda_final columns",
                 adaptive_table(doc, res, settings, entries))]
    skipped_tables = [f"{name} ({why})" for name, why, done in optional if not done]

    # -- figures
    fig_dir = res.root / "figures"
    styles = Styles([e.label for e in entries])
    curves = Curves(res)
    figures = [
        ("acc_vs_grad_evals", "Test accuracy vs gradient evaluations (Pareto front dashed)",
         "no method with both an accuracy and a gradient-evaluation count",
         lambda: fig_pareto(res, settings, entries, styles, "grad_evals",
                            "gradient evaluations (per run; search: sum over trials), log scale")),
        ("acc_vs_wall", "Test accuracy vs wall-clock time (Pareto front dashed)",
         "no method with both an accuracy and a wall time",
         lambda: fig_pareto(res, settings, entries, styles, "wall_s",
                            "wall-clock time (s per run; search: sum over trials), log scale")),
        ("rho_trajectories", "ρ_t trajectories by initial ρ₀ (one panel per method)",
         "no per-step ρ traces (no LETS / hypergradient runs)", lambda: fig_rho(res, settings, entries, curves)),
        ("generalization_gap", "Generalization gap vs epoch (test − train loss; train − test accuracy)",
         "no per-epoch train/test curves",
         lambda: fig_epoch(res, settings, entries, curves, styles,
                           [("loss gap", _loss_gap, "test loss − train loss (nats)", False),
                            ("accuracy gap", _acc_gap, "train acc − test acc (pp)", False)])),
        ("train_loss", "Training loss vs epoch", "no per-epoch training-loss curves",
         lambda: fig_epoch(res, settings, entries, curves, styles,
                           [("training loss", _train_loss, "training loss (cross-entropy, nats, log scale)", True)])),
        ("sam_fraction", "Fraction of SAM steps over training (rolling mean over one epoch)",
         "no 'sam_step' traces (no AE-SAM / AE-LookSAM runs)",
         lambda: fig_trace(res, settings, entries, curves, styles, "sam_step", "SAM steps (% of steps, rolling)", True)),
        ("samar_lambda", "SAMAR λ_t", "no 'lambda' traces (no SAMAR runs)",
         lambda: fig_trace(res, settings, entries, curves, styles, "lambda", "λ_t (weight of the SAM term)", False)),
        ("anytime", "Anytime curves of the searches (test accuracy at the best-so-far ρ* selected on validation)",
         "no anytime.parquet (no searches)", lambda: fig_anytime(res, settings, entries, styles)),
    ]
    doc.h(2, "Figures")
    skipped = []
    written = set()
    for name, caption, why, make in figures:
        fig = make()
        if fig is None:
            skipped.append(f"{name} — {why}")
            doc.p(f"{caption}: skipped — {why}.")
            continue
        data = _png(fig)
        atomic_write_bytes(fig_dir / f"{name}.png", data)
        written.add(name)
        doc.h(3, caption)
        doc.img(f"figures/{name}.png", caption, data)
    for name in FIGURES:  # a figure of an earlier report whose data are gone
        if name not in written and (fig_dir / f"{name}.png").exists():
            (fig_dir / f"{name}.png").unlink()

    doc.h(2, "Notes")
    doc.ul(_notes(res, settings, entries, skipped) + [f"Not shown: {t}." for t in skipped_tables])
    if fmt == "html":
        path = res.root / "report.html"
        atomic_write_text(path, doc.html(f"hpo-bench report: {(res.meta.get('spec') or {}).get('name', res.root.name)}"))
    else:
        path = res.root / "report.md"
        atomic_write_text(path, doc.markdown())
    return path


# ============================================================================= CLI

def cmd_report(args) -> int:
    path = write_report(args.run_dir, fmt=args.format)
    print(f"report: {path}")
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("report", help="write report.md (or report.html) and figures/ for a results directory")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `hpo-bench run` (<out>/<name>-<digest>)")
    p.add_argument("--format", choices=["md", "html"], default="md",
                   help="md: report.md + figures/*.png (default); html: one self-contained report.html")
    p.set_defaults(func=cmd_report)
