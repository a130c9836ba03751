"""Selecting ρ* from a search's runs, its anytime curve and its summary: pure pandas, no torch.

Protocol (METHODS.md §2): ρ* maximizes the mean over seeds of the best validation accuracy
(held-out split carved from the training set, never the test set) over the search's selection
seeds; the reported accuracy is the TEST accuracy of fresh evaluation runs at ρ* on the spec's
seeds (:func:`with_evaluation`; nested selection: the runs that chose ρ* never report it); the
cost is the SUM over every trial of the search, evaluation runs included. Diverged/stopped trials
count in the cost but can never be selected.
"""
from __future__ import annotations

import math

import pandas as pd

COST_COLUMNS = ["grad_evals", "fwd_evals", "wall_s", "device_s"]


def select(rows: pd.DataFrame) -> dict:
    """ρ* = argmax over ρ of mean best-val-accuracy across seeds (ok runs only); accuracy at ρ*."""
    ok = rows[rows["status"] == "ok"]
    out = {"n_trials": int(len(rows)), "n_failed": int((rows["status"] != "ok").sum())}
    out.update({f"cost_{c}": float(rows[c].sum()) for c in COST_COLUMNS if c in rows})
    if ok.empty:
        return {**out, "rho_star": math.nan, "val_acc_mean": math.nan, "test_acc_mean": math.nan,
                "test_acc_std": math.nan, "n_seeds_at_star": 0}
    by_rho = ok.groupby("rho0")["best_val_acc"].mean()
    rho_star = float(by_rho.idxmax())
    at = ok[ok["rho0"] == rho_star]
    return {**out, "rho_star": rho_star, "val_acc_mean": float(by_rho.max()),
            "test_acc_mean": float(at["test_acc"].mean()),
            "test_acc_std": float(at["test_acc"].std(ddof=1)) if len(at) > 1 else 0.0,
            "n_seeds_at_star": int(len(at))}


def anytime_curve(rows: pd.DataFrame, label: str) -> pd.DataFrame:
    """Best-so-far selected test accuracy after each finished trial vs cumulative cost."""
    rows = rows.sort_values(["finished_at", "run_id"]) if "finished_at" in rows else rows
    out = []
    for k in range(1, len(rows) + 1):
        sel = select(rows.iloc[:k])
        out.append({"method": label, "trial": k, "cum_grad_evals": float(rows["grad_evals"].iloc[:k].sum()),
                    "cum_wall_s": float(rows["wall_s"].iloc[:k].sum()), "rho_star": sel["rho_star"],
                    "test_acc": sel["test_acc_mean"]})
    return pd.DataFrame(out)


def summarize(label: str, strategy: str, tag: str, setting: dict, rows: pd.DataFrame) -> dict:
    """A search's summary row (ρ*, accuracy at ρ*, summed cost, setting) and its anytime curve."""
    settings = {f"setting.{k}": v for k, v in setting.items()}
    summary = {"method": label, "strategy": strategy, "search": tag, **select(rows), **settings}
    return {"summary": summary, "anytime": anytime_curve(rows, label).assign(**settings)}


def with_evaluation(summary: dict, eval_rows: pd.DataFrame) -> dict:
    """``summary`` with its test accuracy taken from the evaluation runs at ρ* (``eval_rows``).

    The selection runs' own accuracy at ρ* is kept as ``sel_test_acc_mean`` (optimistic: the same
    runs chose ρ*); ``n_eval``/``n_eval_ok`` count the evaluation runs and ``eval_cost_*`` their cost,
    which is added to the search's ``cost_*``.
    """
    ok = eval_rows[eval_rows["status"] == "ok"] if len(eval_rows) else eval_rows
    acc = ok["test_acc"].dropna() if len(ok) else pd.Series(dtype=float)
    out = {**summary, "sel_test_acc_mean": summary.get("test_acc_mean", math.nan),
           "test_acc_mean": float(acc.mean()) if len(acc) else math.nan,
           "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0 if len(acc) else math.nan,
           "n_eval": int(len(eval_rows)), "n_eval_ok": int(len(ok))}
    for c in COST_COLUMNS:
        if c in eval_rows:
            out[f"eval_cost_{c}"] = float(eval_rows[c].sum())
            out[f"cost_{c}"] = float(summary.get(f"cost_{c}", 0.0)) + out[f"eval_cost_{c}"]
    return out
