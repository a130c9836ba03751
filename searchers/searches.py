"""The search kinds over ρ: which trials an engine runs for a method, and whether ρ* is selected.

* ``grid``  — every ρ of ``search.grid`` × every seed; ρ* by mean validation accuracy.
* ``tpe``   — TPE over log ρ in [rho_min, rho_max], ``n_trials`` ρ points, each running every seed.
* ``asha``  — ``search.grid`` × seeds under an ASHA scheduler (stopped runs count in the cost).
* ``sweep`` — the method's own ρ value(s) × seeds through the engine; plain runs, no selection.

The summary of a selecting kind is :func:`hpo_bench.selection.summarize` of its rows.
"""
from __future__ import annotations

from functools import partial

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

    def fixed_trials(self, spec, method, setting) -> list[Trial]:
        return method_trials(spec, method, setting)

    def summaries(self, method, setting, rows) -> list[dict]:
        return []
