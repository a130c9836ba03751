"""The ρ-response figure: test accuracy against a fixed ρ, per setting, with 95 % bands.

A plain method that ran at least three fixed ρ values (a ``rho`` list whose runs keep their ρ,
e.g. SAM in the calibration study) is drawn as its mean test accuracy over seeds at each ρ (log
axis) with the bootstrap 95 % interval as a band; ERM-like methods with one run per seed (no ρ
list) are drawn as a horizontal line with their band, so where SAM's curve clears ERM's band, and
on which side of the optimum it falls off, can be read off directly. Learned-ρ methods (ρ₀ lists)
are not ρ-responses and are left to the ρ₀ table.
"""
from __future__ import annotations

import numpy as np

from hpo_bench.report.figures import _legend, _log_x, _panels, _setting_panels, _title, collapsed, zoom_accuracy

MIN_POINTS = 3


def _fixed_rho(e) -> bool:
    final = e.rows["rho_final"].dropna() if e.rows is not None and "rho_final" in e.rows else []
    return len(final) == 0 or bool(np.allclose(np.asarray(final, float), e.rho0, rtol=1e-9, atol=0))


def response_curves(entries, setting) -> dict:
    """{method: [(ρ, mean, low, high)] in %, sorted by ρ} of the plain fixed-ρ methods with ≥ MIN_POINTS values."""
    by_method: dict[str, list] = {}
    for e in entries:
        if e.setting == setting and e.kind == "plain" and e.rho0 is not None and e.has_acc and _fixed_rho(e):
            by_method.setdefault(e.method, []).append(e)
    out = {}
    for method, es in by_method.items():
        if len(es) >= MIN_POINTS:
            out[method] = sorted((e.rho0, *_percent(e)) for e in es)
    return out


def _percent(e) -> tuple[float, float, float]:
    ci = e.acc_ci
    low, high = (ci.low, ci.high) if ci.has_ci else (e.acc_mean, e.acc_mean)
    return 100 * e.acc_mean, 100 * low, 100 * high


def _references(entries, setting) -> dict:
    """{method: (mean, low, high)} in % of the plain ERM methods (no ρ list): the level to beat."""
    return {e.method: _percent(e) for e in entries
            if e.setting == setting and e.kind == "plain" and e.rho0 is None and e.has_acc and e.strategy == "erm"}


def fig_response(res, settings, entries, styles):
    """One panel per setting: accuracy vs ρ (log) with bands; None when no method has a ρ-response."""
    keep, titles = _setting_panels(res, settings, entries, lambda e: bool(response_curves(entries, e.setting)))
    if not keep:
        return None
    fig, axes = _panels(len(keep))
    for ax, s, title in zip(axes, keep, titles):
        curves, refs = response_curves(entries, s), _references(entries, s)
        points = {f"{m} ρ={rho:g}": (rho, mean, low, high) for m, pts in curves.items() for rho, mean, low, high in pts}
        apart = collapsed({**{k: v[1] for k, v in points.items()}, **{m: v[0] for m, v in refs.items()}})
        for method, pts in curves.items():
            rho, mean, low, high = (np.array(v, float) for v in zip(*pts))
            color, marker = styles(method)
            ax.plot(rho, mean, marker=marker, color=color, label=f"{method} (band: 95 % CI)")
            ax.fill_between(rho, low, high, color=color, alpha=0.2, lw=0)
        for method, (mean, low, high) in refs.items():
            color, _ = styles(method)
            ax.axhline(mean, color=color, ls="--", label=f"{method} (band: 95 % CI)")
            ax.axhspan(low, high, color=color, alpha=0.12, lw=0)
        _log_x(ax, [v[0] for v in points.values()])
        shown = [(v[2], v[3]) for k, v in points.items() if k not in apart] + \
                [(v[1], v[2]) for m, v in refs.items() if m not in apart]
        note = zoom_accuracy(ax, shown, {k: points[k][1] for k in apart if k in points})
        ax.set_xlabel("ρ (log)")
        ax.set_ylabel("test accuracy (%), mean over seeds")
        ax.set_title(_title(title, note), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return fig
