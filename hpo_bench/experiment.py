"""From a validated spec to finished runs: the experiment loop over settings and methods.

Every setting of ``spec.vary`` × every method runs in three phases, so that independent runs
share the worker processes of one :class:`~hpo_bench.pool.TrialPool` (``--jobs``):

1. every run the local engine can take without waiting for anything — plain methods (ρ values ×
   seeds) and grid/sweep searches on the local engine — of every setting, in one batch;
2. the searches of the other engines (Optuna, Ray Tune) and the adaptive ones, one after another
   (each engine runs its own trials concurrently: ``search.workers``, default ``--jobs``);
3. the methods with ``rho_from``, at the ρ* their search selected in the same setting.

A method's rows do not depend on the phase or the worker that ran them (each run is its own
seeded process with one thread), only on its trial; ``searches.parquet`` keeps the spec's order.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from hpo_bench.config import ExperimentSpec, settings
from hpo_bench.pool import TrialPool
from hpo_bench.progress import RunProgress
from hpo_bench.search import run_search, search_kind
from hpo_bench.store import ResultsStore
from hpo_bench.trial import method_trials


def _first_phase_trials(spec, method, setting):
    """The trials of ``method`` the shared pool runs in phase 1, or None if it waits for phase 2/3."""
    if method.rho_from:
        return None
    if method.search is None:
        return method_trials(spec, method, setting)
    kind = search_kind(method)
    if kind.cfg.engine != "local" or kind.cfg.batched:
        return None
    return kind.fixed_trials(spec, method, setting)


def run_experiment(spec: ExperimentSpec, store: ResultsStore, device: str | None = None, show_progress: bool = True,
                   jobs: int = 1) -> pd.DataFrame:
    """Run every setting × method of ``spec`` into ``store`` (skipping done runs); return the runs frame."""
    cases = [(i, setting, sspec, j, method) for i, (setting, sspec) in enumerate(settings(spec))
             for j, method in enumerate(sspec.methods)]
    summaries: dict[tuple[int, int], list[dict]] = {}
    with RunProgress(enabled=show_progress) as progress, TrialPool(jobs, device) as pool:
        first = {(i, j): _first_phase_trials(sspec, method, setting) for i, setting, sspec, j, method in cases}
        pool.run([t for trials in first.values() if trials for t in trials], store, progress)
        rho_star: dict[tuple[int, str], float] = {}
        for i, setting, sspec, j, method in cases:
            if method.rho_from:
                continue
            if first[i, j] is not None and method.search is None:
                continue
            if first[i, j] is not None:  # a local grid/sweep: its rows are in the store; summarize them
                kind = search_kind(method)
                found = kind.summaries(method, setting, [store.load_row(t.run_id) for t in first[i, j]])
            else:
                found = run_search(sspec, method, setting, store, device, progress, pool)
            summaries[i, j] = found
            if found:  # a sweep selects nothing
                rho_star[i, method.label] = found[0]["summary"]["rho_star"]
        later = []
        for i, setting, sspec, j, method in cases:
            if not method.rho_from:
                continue
            rho = rho_star[i, method.rho_from]
            if rho != rho:  # NaN: every run of the search failed, so it selected nothing
                progress.note(f"{method.label}: skipped, its rho_from search {method.rho_from!r} selected no rho "
                              "(none of its runs ended ok)")
                continue
            later.append((i, setting, sspec, dataclasses.replace(method, rho=rho)))
        pool.run([t for i, setting, sspec, method in later for t in method_trials(sspec, method, setting)], store,
                 progress)
    runs = store.consolidate()
    found = [s for key in sorted(summaries) for s in summaries[key]]
    if found:
        store.write_table("searches", pd.DataFrame([r["summary"] for r in found]))
        store.write_table("anytime", pd.concat([r["anytime"] for r in found], ignore_index=True))
    return runs
