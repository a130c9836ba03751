"""From a validated spec to finished runs: the experiment loop over settings and methods.

For each setting of ``spec.vary`` and each method in order: a plain method runs its trials
(ρ values × seeds); a method with a search runs it through its engine and records ρ*; a method
with ``rho_from`` runs at the ρ* an earlier search selected in the same setting.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from hpo_bench.config import ExperimentSpec, SearchConfig, settings
from hpo_bench.engines import get_engine
from hpo_bench.execute import execute_trial
from hpo_bench.progress import RunProgress
from hpo_bench.search import run_search
from hpo_bench.store import ResultsStore
from hpo_bench.trial import method_trials


def dispatch_sweep(spec, method, setting, store, device=None, progress=None) -> list[dict]:
    """Run a plain method's trials (ρ values × seeds) through ``method.search.engine``, without selection.

    The trials are exactly :func:`method_trials` (same run ids as a local run), so the rows are
    ordinary runs of the method; only where they execute changes (e.g. Ray Tune on a cluster).
    """
    cfg = SearchConfig(**method.search)
    return get_engine(cfg.engine, cfg, store.root, device).run_trials(method_trials(spec, method, setting), store, progress)


def run_experiment(spec: ExperimentSpec, store: ResultsStore, device: str | None = None, show_progress: bool = True):
    """Run every setting × method of ``spec`` into ``store`` (skipping done runs); return runs frame."""
    search_rows = []
    with RunProgress(enabled=show_progress) as progress:
        for setting, sspec in settings(spec):
            rho_star = {}
            for method in sspec.methods:
                if method.rho_from:  # run at the ρ* an earlier search selected in this setting
                    method = dataclasses.replace(method, rho=rho_star[method.rho_from])
                if method.search is not None and method.search["kind"] == "sweep":
                    dispatch_sweep(sspec, method, setting, store, device, progress)
                    continue
                if method.search is not None:
                    found = run_search(sspec, method, setting, store, device, progress)
                    rho_star[method.label] = found[0]["summary"]["rho_star"]
                    search_rows.extend(found)
                    continue
                for trial in method_trials(sspec, method, setting):
                    progress.start(trial)
                    row = execute_trial(trial, store, device=device, progress=progress.bar)
                    progress.finish(row)
                    store.consolidate()
    runs = store.consolidate()
    if search_rows:
        store.write_table("searches", pd.DataFrame([r["summary"] for r in search_rows]))
        store.write_table("anytime", pd.concat([r["anytime"] for r in search_rows], ignore_index=True))
    return runs
