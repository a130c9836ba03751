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

Modules: :mod:`~hpo_bench.report.load` (the directory, read through ``ResultsStore``),
:mod:`~hpo_bench.report.entries` (the methods of the tables), :mod:`~hpo_bench.report.tables`,
:mod:`~hpo_bench.report.figures` and :mod:`~hpo_bench.report.curves` (the figures),
:mod:`~hpo_bench.report.document` (markdown / HTML); this module assembles them. None imports torch:
``hpo-bench report`` runs without it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from hpo_bench.report.curves import (
    Curves,
    _acc_gap,
    _loss_gap,
    _train_loss,
    fig_epoch,
    fig_rho,
    fig_trace,
)
from hpo_bench.report.document import Doc, _setting_title
from hpo_bench.report.entries import Entry, build_entries
from hpo_bench.report.figures import Styles, _png, fig_anytime, fig_pareto
from hpo_bench.report.load import Results, load_results
from hpo_bench.report.tables import (
    _sam_reference,
    adaptive_table,
    cost_table,
    fidelity_table,
    main_table,
    metric_table,
    noise_table,
    rho0_table,
)
from hpo_bench.store import atomic_write_bytes, atomic_write_text

__all__ = ["FIGURES", "Doc", "Entry", "Results", "build_entries", "cmd_report", "load_results", "write_report"]

FIGURES = ("acc_vs_grad_evals", "acc_vs_wall", "rho_trajectories", "generalization_gap", "train_loss",
           "sam_fraction", "samar_lambda", "anytime")


# ============================================================================= report

def _shown_path(root: Path) -> str:
    """``root`` relative to the working directory when it lies under it, else as given."""
    try:
        return str(root.resolve().relative_to(Path.cwd().resolve()))
    except (OSError, ValueError):
        return str(root)


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
    rows = [["run directory", f"`{_shown_path(res.root)}`"],
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
    """Handler of ``hpo-bench report RUN_DIR [--format md|html]`` (arguments declared in hpo_bench.cli)."""
    path = write_report(args.run_dir, fmt=args.format)
    print(f"report: {path}")
    return 0
