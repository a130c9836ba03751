"""Report of one results directory: ``report.md`` (or a self-contained ``report.html``) plus PNG figures.

``hpo-bench report RUN_DIR [--format md|html]`` (and ``hpo-bench run`` when the spec's ``report`` flag
is true) reads ``runs.parquet``, ``curves.parquet``, ``searches.parquet``, ``anytime.parquet``,
``metadata.json`` and, when present, ``fidelity.parquet`` / ``fidelity_summary.parquet`` of RUN_DIR, and writes

* tables (markdown): test accuracy with bootstrap 95 % intervals and paired comparisons with SAM and ERM
  (:mod:`~hpo_bench.report.verdicts`), cost per replicate relative to one SAM run, the whole study's
  compute, the equal-budget comparison (:mod:`~hpo_bench.report.budget`), average ranks across settings
  (:mod:`~hpo_bench.report.cd`), ρ₀-robustness (Table 5), generalization metric (Table 6), label noise
  (Table 4), hypergradient fidelity, the fraction of SAM steps / SAMAR's final λ and the signal-to-noise
  of the learned-ρ hypergradient dM/dν (updates per run, SNR overall and in the first / last third of
  training, share of updates that lower ρ);
* figures in ``RUN_DIR/figures/``: accuracy vs grad evals and vs wall time per replicate with the Pareto
  front, critical-difference diagrams, ρ_t trajectories coloured by ρ₀ (each seed thin, the mean over
  seeds thick), generalization gap and training loss vs epoch, AE-SAM's fraction of SAM steps, SAMAR's
  λ_t, the anytime curves on the per-replicate axis and LETS's estimate against the exact hypergradient.
  A figure whose data are absent is skipped and the report says so.

A directory written by ``hpo-bench fidelity`` (no runs) gets a report of its fidelity table and figure.

One "method" of the tables is either the plain (non-search) runs of a method label — split by ρ₀
when that label ran several ρ values — or a search, whose accuracy is the test accuracy at its
selected ρ* (``searches.parquet``). Seeds are the replicates: comparisons pair runs by seed
(:mod:`hpo_bench.stats`). Bold marks a significantly best method only (:data:`verdicts.RULE`). Runs
whose status is not ``ok`` (diverged, stopped, timeout, oom) are reported as counts, never as numbers.
Nothing under RUN_DIR is modified except ``report.md``/``report.html`` and ``figures/``.

Modules: :mod:`~hpo_bench.report.load` (the directory, read through ``ResultsStore``),
:mod:`~hpo_bench.report.entries` (the methods of the tables), :mod:`~hpo_bench.report.verdicts`,
:mod:`~hpo_bench.report.tables`, :mod:`~hpo_bench.report.budget`, :mod:`~hpo_bench.report.cd`,
:mod:`~hpo_bench.report.probe` (fidelity), :mod:`~hpo_bench.report.figures` and
:mod:`~hpo_bench.report.curves` (the figures), :mod:`~hpo_bench.report.document` (markdown / HTML);
this module assembles them. None imports torch: ``hpo-bench report`` runs without it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from hpo_bench.report.budget import budget_section, fig_budget
from hpo_bench.report.cd import fig_cd, rank_section
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
from hpo_bench.report.figures import Styles, _png, fig_pareto
from hpo_bench.report.load import Results, load_results
from hpo_bench.report.probe import fidelity_header, fidelity_table, fig_fidelity
from hpo_bench.report.response import fig_response
from hpo_bench.report.tables import (
    _sam_reference,
    adaptive_table,
    cost_table,
    main_table,
    metric_table,
    noise_table,
    rho0_table,
    snr_table,
    study_table,
)
from hpo_bench.report.verdicts import key
from hpo_bench.store import atomic_write_bytes, atomic_write_text

__all__ = ["FIGURES", "Doc", "Entry", "Results", "build_entries", "cmd_report", "load_results", "write_report"]

FIGURES = ("acc_vs_grad_evals", "acc_vs_wall", "cd_settings", "cd_rho0", "rho_trajectories", "generalization_gap",
           "train_loss", "sam_fraction", "samar_lambda", "anytime", "fidelity")


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
    n_eval = int(runs["search"].str.endswith("/eval").sum())
    n_search = int((runs["search"] != "").sum()) - n_eval
    rows = [["run directory", f"`{_shown_path(res.root)}`"],
            ["command", f"`{meta.get('command', '—')}`"],
            ["created", str(meta.get("created", "—"))],
            ["git commit", f"`{meta.get('git_commit', '—')}`"],
            ["hardware", hw_text or "—"],
            ["device of the runs", devices],
            ["versions", ver_text or "—"],
            ["seeds", ", ".join(map(str, spec.get("seeds") or sorted(runs["seed"].unique())))],
            ["setup", setup],
            ["runs", f"{len(runs)} ({status_text}); {n_search} of them search trials"
                     + (f", {n_eval} evaluation runs of searches at their ρ*" if n_eval else "")],
            ["total wall time of the runs", f"{runs['wall_s'].sum():.1f} s (device time {runs['device_s'].sum():.1f} s; "
                                            "sum over runs, which may have overlapped)"]]
    if spec.get("vary"):
        rows.append(["varied", "; ".join(f"{k} ∈ {v}" for k, v in spec["vary"].items())])
    doc.table(["field", "value"], rows)


def _notes(res, settings, entries, skipped, stats) -> list:
    notes = []
    runs = res.runs
    bad = runs[runs["status"] != "ok"]
    for (setting, method, status), g in bad.groupby(["_setting", "method", "status"], sort=False):
        kind = ("evaluation run" if g["search"].str.endswith("/eval").all() else
                "search trial" if (g["search"] != "").any() else "run")
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
        st = stats.get(s)
        if st is None or st.verdict is None or st.verdict.best is None:
            continue
        labels = {key(e): e for e in entries if e.setting == s}
        best = labels[st.verdict.best]
        where = f" ({_setting_title(res.setting_cols, s)})" if len(settings) > 1 else ""
        notes.append(f"Highest mean test accuracy{where}: {best.label} at {100 * best.acc_mean:.2f}% — "
                     + ("significantly best (bold)." if st.verdict.significant else
                        "not significantly best (see the rule under the accuracy table)."))
    if not any(_sam_reference(entries, s) for s in settings):
        notes.append("No SAM run (strategy `sam`, no search): costs are not shown relative to SAM.")
    notes += res.notes
    notes += [f"Figure skipped: {s}" for s in skipped]
    notes.append("Accuracies are the test accuracy at the best-validation epoch; intervals are 95 % intervals over "
                 "seeds (bootstrap for means, Student-t for paired differences); p-values are Holm-corrected. "
                 "Numbers are those of the parquet files, rounded for display only.")
    return notes


def _write_figures(doc, fig_dir: Path, figures) -> list:
    """Draw, write and link each (name, caption, why-absent, make) figure; return the skipped ones."""
    doc.h(2, "Figures")
    skipped, written = [], set()
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
    return skipped


FIDELITY_FIGURE = ("fidelity", "LETS's estimate of dM/dν against the exact hypergradient at the same steps, and their "
                   "sign agreement along training", "no fidelity.parquet (no `hpo-bench fidelity` probes)")


def _save(res, doc, fmt: str, title: str) -> Path:
    if fmt == "html":
        path = res.root / "report.html"
        atomic_write_text(path, doc.html(title))
    else:
        path = res.root / "report.md"
        atomic_write_text(path, doc.markdown())
    return path


def _fidelity_report(res, fmt: str) -> Path:
    doc = Doc()
    fidelity_header(doc, res, _shown_path(res.root))
    fidelity_table(doc, res)
    skipped = _write_figures(doc, res.root / "figures", [(*FIDELITY_FIGURE, lambda: fig_fidelity(res))])
    doc.h(2, "Notes")
    doc.ul([f"Figure skipped: {s}" for s in skipped] + res.notes +
           ["A sign agreement of 50 % is chance; Adam on ν mostly follows the sign of the hypergradient, so the "
            "agreement with the exact value is what decides whether LETS moves ρ the right way."])
    return _save(res, doc, fmt, f"hpo-bench report: fidelity ({res.root.name})")


def write_report(run_dir, fmt: str = "md") -> Path:
    """Write ``report.md`` (fmt='md') or a self-contained ``report.html`` (fmt='html') and ``figures/*.png``."""
    if fmt not in ("md", "html"):
        raise ValueError(f"--format: {fmt!r}; allowed: md, html")
    res = load_results(run_dir)
    if res.fidelity_only:
        return _fidelity_report(res, fmt)
    settings, entries = build_entries(res)
    doc = Doc()
    _header(doc, res, entries)
    stats = main_table(doc, res, settings, entries)
    cost_table(doc, res, settings, entries)
    study_table(doc, res)
    curves = Curves(res)

    def sam_cost(s):
        return (_sam_reference(entries, s) or {}).get("grad_evals")

    optional = [("equal-budget table", "no grid or TPE search with trials to replay",
                 budget_section(doc, res, settings, entries, sam_cost))]
    ranks = rank_section(doc, res, settings, entries)
    if not ranks:
        optional.append(("average-rank summary", "a single setting and no methods compared over several ρ₀", False))
    optional += [("ρ₀-robustness table", "no method ran several ρ₀ values", rho0_table(doc, res, settings, entries)),
                 ("generalization-metric table", "no learned-ρ method ran several `metric` values",
                  metric_table(doc, res, settings, entries)),
                 ("label-noise table", "a single label-noise level", noise_table(doc, res, settings, entries)),
                 ("hypergradient-fidelity table", "no fidelity_summary.parquet", fidelity_table(doc, res)),
                 ("adaptive-SAM table", "no sam_fraction / lambda_final columns",
                  adaptive_table(doc, res, settings, entries)),
                 ("hypergradient signal-to-noise table", "no `dM_dnu` traces (no LETS / hypergradient runs)",
                  snr_table(doc, res, settings, entries, curves.get("step")))]
    skipped_tables = [f"{name} ({why})" for name, why, done in optional if not done]

    styles = Styles([e.label for e in entries])
    cd = {name: (caption, summary) for name, caption, summary in ranks}
    per_rep = ("per replicate: one run of a plain method, one seed's trials of a search; bootstrap 95 % intervals "
               "over seeds; Pareto front of the means dashed")
    figures = [
        ("acc_vs_grad_evals", f"Test accuracy vs gradient evaluations ({per_rep})",
         "no method with both an accuracy and a gradient-evaluation count",
         lambda: fig_pareto(res, settings, entries, styles, "grad_evals", "gradient evaluations per replicate (log)")),
        ("acc_vs_wall", f"Test accuracy vs wall-clock time ({per_rep})",
         "no method with both an accuracy and a wall time",
         lambda: fig_pareto(res, settings, entries, styles, "wall_s", "wall-clock seconds per replicate (log)")),
    ] + [(name, cd[name][0] if name in cd else f"Critical-difference diagram across {what}",
          f"fewer than two {what} or two methods compared over them",
          (lambda name=name: fig_cd(cd[name][1]) if name in cd else None))
         for name, what in (("cd_settings", "settings"), ("cd_rho0", "initial radii ρ₀"))] + [
        ("rho_response", "ρ-response: test accuracy vs a fixed ρ (mean over seeds, band: bootstrap 95 % CI), "
                         "ERM dashed with its band", "no plain method with three or more fixed ρ values",
         lambda: fig_response(res, settings, entries, styles)),
        ("rho_trajectories", ("ρ_t trajectories by initial ρ₀ (one panel per method; thin lines: each seed, "
                              "thick: the mean over seeds)"),
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
        ("anytime", "Anytime curves on the per-replicate axis: each search replayed with its first 1, 2, … points "
                    "(band: bootstrap 95 % CI), plain methods as points",
         "no grid or TPE search with trials to replay", lambda: fig_budget(res, settings, entries, styles)),
        (*FIDELITY_FIGURE, lambda: fig_fidelity(res)),
    ]
    skipped = _write_figures(doc, res.root / "figures", figures)
    doc.h(2, "Notes")
    doc.ul(_notes(res, settings, entries, skipped, stats) + [f"Not shown: {t}." for t in skipped_tables])
    return _save(res, doc, fmt, f"hpo-bench report: {(res.meta.get('spec') or {}).get('name', res.root.name)}")


# ============================================================================= CLI

def cmd_report(args) -> int:
    """Handler of ``hpo-bench report RUN_DIR [--format md|html]`` (arguments declared in hpo_bench.cli)."""
    path = write_report(args.run_dir, fmt=args.format)
    print(f"report: {path}")
    return 0
