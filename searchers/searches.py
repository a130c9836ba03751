"""The search kinds over ρ: which trials an engine runs for a method, and whether ρ* is selected.

* ``grid``  — every ρ of ``search.grid`` × every seed; ρ* by mean validation accuracy.
* ``tpe``   — TPE over log ρ in [rho_min, rho_max], ``n_trials`` ρ points, each running every seed.
* ``asha``  — ``search.grid`` × seeds under an ASHA scheduler (stopped runs count in the cost).
* ``sweep`` — the method's own ρ value(s) × seeds through the engine; plain runs, no selection.
* ``pbt`` / ``pb2`` — a population of ρ schedules per selection seed (Ray Tune's PBT / PB2,
  :mod:`hpo_bench.engines.ray_pbt`); ρ* = the final ρ of the best member (best validation
  accuracy). Like every selecting kind its evaluation runs then train ρ* as a *fixed* ρ on the
  spec's seeds: the reported test accuracy is what PBT's final ρ is worth as a constant, not the
  schedule's own; the best member's own test accuracy stays in the summary as ``sel_test_acc_mean``.

A selecting kind runs on its selection seeds (``search.selection_seeds``), the experiment then
trains its evaluation runs at ρ* on the spec's seeds (nested selection, :mod:`hpo_bench.experiment`).
The summary of a selecting kind is :func:`hpo_bench.selection.summarize` of its rows.
"""
from __future__ import annotations

import math
from functools import partial

import pandas as pd

from hpo_bench.engines import Engine, SearchSpace
from hpo_bench.search import SearchKind, register_search_kind
from hpo_bench.trial import Trial, grid_trials, make_trial, method_trials


@register_search_kind
class GridSearch(SearchKind):
    name = "grid"
    summary_doc = "every rho of search.grid x every seed; rho* = best mean validation accuracy"

    def fixed_trials(self, spec, method, setting) -> list[Trial]:
        return grid_trials(spec, method, setting, self.tag)


class AdaptiveSearch(SearchKind):
    """A search whose engine decides the trials as it goes, from a trial factory and a search space."""

    def run(self, engine: Engine, spec, method, setting, store, progress=None) -> list[dict]:
        factory = partial(make_trial, spec, method, setting=setting, search=self.tag)
        return engine.run_adaptive(factory, SearchSpace.from_config(self.cfg, spec.seeds), store, progress)


@register_search_kind
class TPESearch(AdaptiveSearch):
    name = "tpe"
    summary_doc = "TPE over log rho in [rho_min, rho_max], n_trials points x every seed (optuna, ray)"


@register_search_kind
class ASHASearch(AdaptiveSearch):
    name = "asha"
    summary_doc = "search.grid x seeds under an ASHA scheduler; stopped runs count in the cost (ray)"


@register_search_kind
class SweepSearch(SearchKind):
    name = "sweep"
    summary_doc = "the method's rho value(s) x seeds run through the engine; no selection"
    selects = False

    def fixed_trials(self, spec, method, setting) -> list[Trial]:
        return method_trials(spec, method, setting)

    def summaries(self, method, setting, rows) -> list[dict]:
        return []


def best_member(rows: pd.DataFrame) -> pd.Series | None:
    """The population member (run) with the best validation accuracy among those that ended ok; of tied
    members (two that cloned one state) the first by run_id."""
    ok = rows[(rows["status"] == "ok") & rows["best_val_acc"].notna()] if len(rows) else rows
    if not len(ok):
        return None
    return ok.sort_values(["best_val_acc", "run_id"], ascending=[False, True]).iloc[0]


@register_search_kind
class PBTSearch(AdaptiveSearch):
    name = "pbt"
    summary_doc = ("a population of rho schedules per selection seed (Population Based Training over log rho, ray); "
                   "rho* = the best member's final rho; cost = every member's own work")

    def summaries(self, method, setting, rows) -> list[dict]:
        out = super().summaries(method, setting, rows)
        frame = pd.DataFrame(rows)
        best = best_member(frame)
        summary = out[0]["summary"]
        summary.update(rho_star=float(best["rho_final"]) if best is not None else math.nan,
                       val_acc_mean=float(best["best_val_acc"]) if best is not None else math.nan,
                       test_acc_mean=float(best["test_acc"]) if best is not None else math.nan,
                       test_acc_std=0.0 if best is not None else math.nan, n_seeds_at_star=int(best is not None))
        anytime = out[0]["anytime"]
        if len(anytime):  # best-so-far member by finishing order
            order = frame.sort_values(["finished_at", "run_id"]) if "finished_at" in frame else frame
            firsts = [best_member(order.iloc[:k]) for k in range(1, len(order) + 1)]
            anytime["rho_star"] = [float(b["rho_final"]) if b is not None else math.nan for b in firsts]
            anytime["test_acc"] = [float(b["test_acc"]) if b is not None else math.nan for b in firsts]
        return out


@register_search_kind
class PB2Search(PBTSearch):
    name = "pb2"
    summary_doc = "like pbt, with PB2's GP-bandit explore step over rho in [rho_min, rho_max] (needs GPy, scikit-learn)"
