"""From a validated spec to finished runs: the experiment loop over settings and methods.

For each setting of ``spec.vary`` and each method in order: a plain method runs its trials
(ρ values × seeds); a method with a search runs it through its search kind and engine
(:func:`hpo_bench.search.run_search`) and, when the kind selects, records ρ*; a method with
``rho_from`` runs at the ρ* an earlier search selected in the same setting.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from hpo_bench.config import ExperimentSpec, settings
from hpo_bench.engines.common import run_with_progress
from hpo_bench.progress import RunProgress
from hpo_bench.search import run_search
from hpo_bench.store import ResultsStore
from hpo_bench.trial import method_trials


def run_experiment(spec: ExperimentSpec, store: ResultsStore, device: str | None = None, show_progress: bool = True):
    """Run every setting × method of ``spec`` into ``store`` (skipping done runs); return runs frame."""
    search_rows = []
    with RunProgress(enabled=show_progress) as progress:
        for setting, sspec in settings(spec):
            rho_star = {}
            for method in sspec.methods:
                if method.rho_from:  # run at the ρ* an earlier search selected in this setting
                    method = dataclasses.replace(method, rho=rho_star[method.rho_from])
                if method.search is not None:
                    found = run_search(sspec, method, setting, store, device, progress)
                    if found:  # a sweep selects nothing
                        rho_star[method.label] = found[0]["summary"]["rho_star"]
                        search_rows.extend(found)
                    continue
                for trial in method_trials(sspec, method, setting):
                    run_with_progress(trial, store, device, progress)
    runs = store.consolidate()
    if search_rows:
        store.write_table("searches", pd.DataFrame([r["summary"] for r in search_rows]))
        store.write_table("anytime", pd.concat([r["anytime"] for r in search_rows], ignore_index=True))
    return runs
