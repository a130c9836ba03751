"""The report's figures drawn from the training curves (``curves.parquet``, or the finished runs'
trials while it is absent, read through ``ResultsStore``): ρ_t trajectories, per-epoch curves
(generalization gap, training loss) and per-step traces (AE-SAM's SAM steps, SAMAR's λ_t); and the
signal-to-noise of the learned-ρ hypergradient dM/dν from its per-step trace (:func:`dnu_snr`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm

from hpo_bench.report.document import _setting_title
from hpo_bench.report.figures import _int_x, _legend, _log_axis, _panels
from hpo_bench.report.load import Results
from hpo_bench.stats import t_ci
from hpo_bench.store import ResultsStore


class Curves:
    """Lazy, filtered reads of the curves through ``ResultsStore.read_curves`` (curves.parquet, or the
    finished runs' trials/<run_id>.parquet while it is absent)."""

    EPOCH = ["train_loss", "train_acc", "test_loss", "test_acc"]
    STEP = ["rho", "sam_step", "lambda", "dM_dnu"]

    def __init__(self, res: Results):
        self.res = res
        self.store = ResultsStore(res.root)
        self.cache = {}

    def get(self, scope: str) -> pd.DataFrame:
        if scope not in self.cache:
            metrics = self.EPOCH if scope == "epoch" else self.STEP
            df = pd.DataFrame(columns=["run_id", "scope", "epoch", "step", "metric", "value"])
            try:
                df = self.store.read_curves(scope, metrics)
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


def _rho_panels(entries, ids) -> dict:
    """{(setting, method): [(entry, its runs whose ρ_t is traced)]} over the plain methods and searches."""
    panels = {}
    for e in entries:
        if e.kind not in ("plain", "search"):
            continue
        runs = e.rows[e.rows["run_id"].isin(ids)]
        if len(runs):
            panels.setdefault((e.setting, e.method), []).append((e, runs))
    return panels


def _draw_rho(ax, wide, color, rho0) -> None:
    """Each run's ρ_t as a thin, semi-transparent line, and the mean over seeds of ρ_t per step as a thick
    line on top of them."""
    for _, g in wide.sort_values("step").groupby("run_id", sort=False):
        ax.plot(g["step"], g["rho"], color=color, lw=0.6, alpha=0.3)
    mean = wide.groupby("step")["rho"].mean()
    ax.plot(mean.index, mean.values, color=color, lw=1.6, zorder=3, label=f"ρ₀={rho0:g}")


def fig_rho(res, settings, entries, curves):
    """ρ_t of every run that traces it (LETS, the exact hypergradient, PBT's members), one panel per
    (setting, method): each seed's ρ_t thin and semi-transparent, the mean over seeds per ρ₀ thick, both in
    the colour of ρ₀."""
    step = curves.get("step")
    ids = set(step.loc[step["metric"] == "rho", "run_id"]) if len(step) else set()
    panels = _rho_panels(entries, ids) if ids else {}
    if not panels:
        return None
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
            _draw_rho(ax, wide, cmap(0.85 * norm(rho0)) if norm else "tab:blue", rho0)
        _log_axis(ax, "y", [v for line in ax.get_lines() for v in line.get_ydata()])
        ax.set_xlabel("training step")
        ax.set_ylabel("ρ_t (log scale)")
        title = key[1] + (f"\n{_setting_title(res.setting_cols, key[0])}" if len(settings) > 1 else "")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes, "initial ρ₀ (thick: mean over seeds;\nthin: each seed)")
    if len(panels) > len(keys):
        res.notes.append(f"ρ_t figure: {len(panels) - len(keys)} of {len(panels)} panels not drawn (24 at most).")
    return fig


SNR_STATS = ("snr", "frac_pos", "snr_first", "snr_last")


def dnu_updates(step: pd.DataFrame) -> pd.DataFrame:
    """The ν-updates among the ``dM_dnu`` rows of a step-curves frame: (run_id, step, value) sorted by run and
    step, without NaN (a step without an update: the exact hypergradient traces NaN between its updates)."""
    d = step.loc[step["metric"] == "dM_dnu", ["run_id", "step", "value"]].dropna(subset=["value"])
    return d.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)


def _snr(values: np.ndarray) -> float:
    """|mean| / standard deviation (ddof=1) of the values; NaN with fewer than two values or no spread."""
    if len(values) < 2:
        return np.nan
    sd = float(np.std(values, ddof=1))
    return abs(float(np.mean(values))) / sd if sd > 0 else np.nan


def _run_snr(values: np.ndarray, steps: np.ndarray, total: float) -> dict:
    """One run's updates: their number, SNR, fraction > 0, and the SNR of those in the first third
    (step < total/3) and the last third (step ≥ 2·total/3) of its ``total`` training steps."""
    return {"n_updates": len(values), "snr": _snr(values),
            "frac_pos": float(np.mean(values > 0)) if len(values) else np.nan,
            "snr_first": _snr(values[steps < total / 3]), "snr_last": _snr(values[steps >= 2 * total / 3])}


def dnu_snr_runs(step: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``runs`` with traced ν-updates (:func:`dnu_updates`): run_id, n_updates, snr,
    frac_pos, snr_first, snr_last (:func:`_run_snr`); a run's training length is its ``steps`` column,
    or its last traced step + 1 where that is absent."""
    upd = dnu_updates(step)
    upd = upd[upd["run_id"].isin(runs["run_id"])]
    length = runs.set_index("run_id")["steps"] if "steps" in runs else pd.Series(dtype=float)
    out = []
    for rid, g in upd.groupby("run_id", sort=False):
        total = float(length.get(rid, np.nan))
        steps = g["step"].to_numpy(float)
        total = total if np.isfinite(total) and total > 0 else float(steps.max()) + 1
        out.append({"run_id": rid, **_run_snr(g["value"].to_numpy(float), steps, total)})
    return pd.DataFrame(out, columns=["run_id", "n_updates", *SNR_STATS])


def dnu_snr(step: pd.DataFrame, runs: pd.DataFrame, by: str = "method") -> pd.DataFrame:
    """Signal-to-noise of dM/dν per group of ``runs`` (column ``by``), from the step curves: runs (those with
    traced updates), updates (mean per run), and for each of snr, frac_pos, snr_first, snr_last
    (:func:`dnu_snr_runs`) the mean over seeds (a seed's runs averaged first) with its Student-t 95 %
    interval (columns ``<stat>``, ``<stat>_low``, ``<stat>_high``; runs where a statistic is undefined left out)."""
    per_run = dnu_snr_runs(step, runs).merge(runs[["run_id", "seed", by]], on="run_id")
    out = []
    for key, g in per_run.groupby(by, sort=False):
        seeds = g.groupby("seed")[list(SNR_STATS)].mean()
        row = {by: key, "runs": len(g), "updates": float(g["n_updates"].mean())}
        for c in SNR_STATS:
            ci = t_ci(seeds[c].to_numpy(float))
            row.update({c: ci.estimate, f"{c}_low": ci.low, f"{c}_high": ci.high})
        out.append(row)
    stats = [f"{c}{x}" for c in SNR_STATS for x in ("", "_low", "_high")]
    return pd.DataFrame(out, columns=[by, "runs", "updates", *stats])


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


def _loss_gap(w):
    return (w["test_loss"] - w["train_loss"]) if {"test_loss", "train_loss"} <= set(w.columns) else None


def _acc_gap(w):
    return 100 * (w["train_acc"] - w["test_acc"]) if {"train_acc", "test_acc"} <= set(w.columns) else None


def _train_loss(w):
    return w["train_loss"] if "train_loss" in w else None
