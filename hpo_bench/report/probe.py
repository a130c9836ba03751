"""The hypergradient-fidelity study (``hpo-bench fidelity``) in the report: its summary table, the sign
agreement of each estimator with each exact reference with a bootstrap 95 % interval (from the probed
steps of ``fidelity.parquet``), the same-batch decomposition of LETS's estimate, and a figure of LETS's
estimate against the exact hypergradient."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hpo_bench.report.document import _ci, _g
from hpo_bench.stats import mean_ci

ESTIMATORS = (("lets_appendix", "LETS (Appendix A g_b)", "o"), ("lets_literal", "LETS (Algorithm 1 g_b)", "x"))
REFERENCES = (("exact_k1", "exact, K = 1"), ("exact_kK", "exact, K unrolled steps"))


def sign_agreement(steps: pd.DataFrame, est: str, ref: str):
    """Fraction of probed steps where sign(est) == sign(ref), with its bootstrap interval (None without data)."""
    if steps is None or est not in steps or ref not in steps:
        return None
    d = steps[[est, ref]].dropna()
    if not len(d):
        return None
    return mean_ci((np.sign(d[est]) == np.sign(d[ref])).astype(float).to_numpy(), method="percentile")


def fidelity_table(doc, res) -> bool:
    fs, steps = res.fidelity, res.fidelity_steps
    if (fs is None or fs.empty) and (steps is None or steps.empty):
        return False
    doc.section("Hypergradient fidelity")
    doc.p("From `fidelity_summary.parquet` (`hpo-bench fidelity`): each estimator of dM/dν against each exact "
          "unrolled reference along one fixed-ρ run; sign agreement with a bootstrap 95 % interval over the probed "
          "steps (from `fidelity.parquet`). One trajectory and one seed: a measurement of this run, not a general law.")
    if fs is None or fs.empty:
        pairs = [(e, r) for e, _, _ in ESTIMATORS for r, _ in REFERENCES] + [("exact_k1", "exact_kK")]
        fs = pd.DataFrame([{"estimator": e, "reference": r} for e, r in pairs])
    cols = list(fs.columns)
    rows = []
    for row in fs.itertuples(index=False):
        d = row._asdict()
        cells = [_g(float(v)) if isinstance(v, (float, np.floating)) else str(v) for v in d.values()]
        ci = sign_agreement(steps, str(d.get("estimator")), str(d.get("reference")))
        rows.append(cells + [_ci(ci, scale=100.0, digits=1) if ci is not None else "—"])
    doc.table(cols + ["sign agreement (%) [95% CI]"], rows)
    same_batch_table(doc, steps)
    return True


def same_batch_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The same-batch bias of LETS's estimate (:meth:`hpo_bench.fidelity.FidelityProbe._same_batch_terms`): per training batch
    (the one just trained on, a fresh one), the share of probed steps whose training term and whole estimate
    are > 0 (dM/dν > 0: an Adam step on ν lowers ρ), and the median |training term| relative to the
    fresh batch's."""
    rows = []
    fresh_abs = table["lets_train_fresh"].abs().to_numpy(float)
    for batch, term, whole in (("just trained on (Algorithm 1)", "lets_train_same", "lets_appendix"),
                               ("fresh", "lets_train_fresh", "lets_fresh")):
        t, w = table[term].to_numpy(float), table[whole].to_numpy(float)
        ok = np.isfinite(t) & np.isfinite(w) & (fresh_abs > 0)
        rows.append({"training batch": batch, "n": int(ok.sum()),
                     "train_term_positive": float(np.mean(t[ok] > 0)) if ok.any() else math.nan,
                     "estimate_positive": float(np.mean(w[ok] > 0)) if ok.any() else math.nan,
                     "median_abs_train_term_vs_fresh": float(np.median(np.abs(t[ok]) / fresh_abs[ok]))
                     if ok.any() else math.nan})
    return pd.DataFrame(rows)


def same_batch_table(doc, steps) -> bool:
    """The same-batch decomposition of LETS's estimate, when the probe recorded it."""
    if steps is None or "lets_train_same" not in steps:
        return False
    sb = same_batch_summary(steps)
    doc.p("Same-batch bias: LETS's estimate (Appendix A form) = validation term + training term. Algorithm 1 "
          "evaluates the training term on the batch the step has just trained on; the probe also evaluates it "
          "on a fresh training batch at the same state. dM/dν > 0 means an Adam step on ν lowers ρ. "
          "Last column: median |training term| relative to the fresh batch's, over the probed steps.")
    doc.table(["training batch", "steps", "training term > 0 (%)", "whole estimate > 0 (%)",
               "median |training term| / fresh"],
              [[r["training batch"], str(r["n"]), _g(100 * r["train_term_positive"]),
                _g(100 * r["estimate_positive"]), _g(r["median_abs_train_term_vs_fresh"])]
               for r in sb.to_dict("records")])
    return True


def _symlog(ax, which: str, values):
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    thresh = float(np.quantile(v, 0.2)) if len(v) else 1e-12
    (ax.set_xscale if which == "x" else ax.set_yscale)("symlog", linthresh=thresh)


def fig_fidelity(res):
    """Per exact reference: LETS's estimate vs the exact hypergradient at the same probed steps (symlog axes,
    agreeing quadrants shaded green), and the rolling sign agreement along training."""
    steps = res.fidelity_steps
    if steps is None or steps.empty:
        return None
    refs = [(r, name) for r, name in REFERENCES if r in steps and steps[r].notna().any()]
    ests = [(e, name, m) for e, name, m in ESTIMATORS if e in steps and steps[e].notna().any()]
    if not refs or not ests:
        return None
    k = int(steps["K"].iloc[0]) if "K" in steps and len(steps) else None
    fig = Figure(figsize=(5.0 * (len(refs) + 1) + 0.5, 4.2), layout="constrained")
    axes = fig.subplots(1, len(refs) + 1, squeeze=False).ravel()
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for ax, (ref, ref_name) in zip(axes, refs):
        x = steps[ref].to_numpy(float)
        for j, (est, name, marker) in enumerate(ests):
            y = steps[est].to_numpy(float)
            ci = sign_agreement(steps, est, ref)
            agree = f"{100 * ci.estimate:.0f} %" + (f" [{100 * ci.low:.0f}, {100 * ci.high:.0f}]" if ci.has_ci else "")
            ax.scatter(x, y, s=18, marker=marker, color=colors[j], alpha=0.75,
                       label=f"{name}: sign agrees {agree}")
        _symlog(ax, "x", x)
        _symlog(ax, "y", steps[[e for e, _, _ in ests]].to_numpy(float).ravel())
        xl, yl = ax.get_xlim(), ax.get_ylim()
        ax.fill_between([0, xl[1]], 0, yl[1], color="tab:green", alpha=0.07, lw=0)
        ax.fill_between([xl[0], 0], yl[0], 0, color="tab:green", alpha=0.07, lw=0)
        ax.fill_between([xl[0], 0], 0, yl[1], color="tab:red", alpha=0.05, lw=0)
        ax.fill_between([0, xl[1]], yl[0], 0, color="tab:red", alpha=0.05, lw=0)
        ax.set_xlim(xl)
        ax.set_ylim(yl)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.axvline(0, color="0.4", lw=0.8)
        kk = f" (K = {k})" if ref == "exact_kK" and k else ""
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(f"{ref_name}{kk}: dM/dν (symlog)")
        ax.set_ylabel("LETS estimate of dM/dν (symlog)")
        ax.set_title(f"LETS vs {ref_name}{kk}; green: same sign", fontsize=9)
        ax.legend(fontsize=7.5, loc="upper left")
        ax.grid(alpha=0.3)
    ax = axes[-1]
    window = max(3, min(15, len(steps) // 5))
    order = steps.sort_values("step") if "step" in steps else steps
    est = ests[0][0]
    for j, (ref, ref_name) in enumerate(refs):
        same = (np.sign(order[est]) == np.sign(order[ref])).astype(float)
        roll = same.rolling(window, min_periods=1, center=True).mean()
        kk = f" (K = {k})" if ref == "exact_kK" and k else ""
        ax.plot(order["step"] if "step" in order else np.arange(len(order)), 100 * roll, color=colors[j + 2], lw=1.5,
                label=f"{ests[0][1]} vs {ref_name}{kk}")
    ax.axhline(50, color="0.3", ls="--", lw=1, label="chance (50 %)")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"sign agreement (%), rolling over {window} probes")
    ax.set_title("Sign agreement along training", fontsize=9)
    ax.legend(fontsize=7.5, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def fidelity_header(doc, res, shown_root: str):
    """The heading of a fidelity-only report (a directory written by ``hpo-bench fidelity``)."""
    steps = res.fidelity_steps
    doc.h(1, f"hpo-bench report: hypergradient fidelity ({res.root.name})")
    facts = [["run directory", f"`{shown_root}`"], ["probed steps", str(len(steps))]]
    for col, name in (("rho", "ρ"), ("K", "K (unrolled steps of the second reference)")):
        if col in steps and len(steps):
            facts.append([name, ", ".join(f"{v:g}" for v in sorted(steps[col].dropna().unique()))])
    if "step" in steps and len(steps):
        facts.append(["steps probed", f"{int(steps['step'].min())} … {int(steps['step'].max())}"])
    doc.table(["field", "value"], facts)
    doc.p("No metadata.json or runs: this directory holds the tables of `hpo-bench fidelity` only.")
