"""The report's figures, as matplotlib ``Figure`` objects (no pyplot, no display): the shared helpers
(styles, panels, legends, log axes, PNG bytes), accuracy vs cost with the Pareto front and the anytime
curves of the searches. The figures drawn from the training curves are in :mod:`hpo_bench.report.curves`.

A ``fig_*`` function returns None when its data are absent."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from hpo_bench.report.document import _setting_title
from hpo_bench.report.entries import _setting_key

MARKERS = "osD^vP*Xh<>p"


class Styles:
    def __init__(self, labels):
        labels = list(dict.fromkeys(labels))
        cmap = colormaps["tab10"]  # (colour, marker) pairs stay distinct for up to 60 labels
        self.map = {lab: (cmap(i % 10), MARKERS[i % len(MARKERS)]) for i, lab in enumerate(labels)}

    def __call__(self, label):
        return self.map.get(label, ("black", "o"))


def _panels(n, ncols=2, w=5.2, h=3.7):
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


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
