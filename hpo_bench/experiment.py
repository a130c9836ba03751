"""From a validated spec to finished runs: the experiment loop over settings and methods.

Every setting of ``spec.vary`` × every method runs in three phases, so that independent runs
share the worker processes of one :class:`~hpo_bench.pool.TrialPool` (``--jobs``):

1. every run the local engine can take without waiting for anything — plain methods (ρ values ×
   seeds, as one population each where possible: ``methods[].batched``, :mod:`hpo_bench.units`)
   and grid/sweep searches on the local engine (as populations with ``search.batched``) — of
   every setting, in one batch; meanwhile the engines of phase 2 warm up (Ray starts);
2. the searches of the other engines (Optuna, Ray Tune) and the adaptive ones, one after another
   (each engine runs its own trials concurrently: ``search.workers``, default ``--jobs``);
3. the evaluation runs of each search at its ρ*, and the methods with ``rho_from``.

With worker processes (``--jobs`` > 1), phases 1 and 2 overlap: phase 1 runs from a driver thread
(:func:`hpo_bench.units.start_units`) while the driver runs the searches, those whose trials train
in their engine's own processes (Ray Tune) first, so that no core idles while Ray Tune sets up and
the pool's workers meanwhile train phase 1. Searches on the pool (Optuna) queue their runs behind
phase 1's. Phase 3 starts when both are done.

Nested selection: a search that selects ρ* (grid, TPE, ASHA) runs on its *selection seeds*
(``search.selection_seeds``, default 1000 + each spec seed); its reported accuracy comes from
fresh *evaluation runs* at ρ* on the spec's seeds, which pair with every other method's runs
(same initialization, batch order and split) and are charged to the search (trial field
``search = "<kind>/<engine>/eval"``). ``rho_from`` methods likewise train on the spec's seeds.

A method's rows do not depend on the phase or the worker that ran them (each run is its own
seeded process with one thread), only on its trial; ``searches.parquet`` keeps the spec's order.
"""
from __future__ import annotations

import dataclasses
import math

import pandas as pd

from hpo_bench.config import ExperimentSpec, selection_seeds, settings
from hpo_bench.engines import ENGINES
from hpo_bench.pool import TrialPool
from hpo_bench.progress import RunProgress
from hpo_bench.search import run_search, search_kind
from hpo_bench.selection import with_evaluation
from hpo_bench.store import ResultsStore
from hpo_bench.trial import make_trial, method_trials
from hpo_bench.units import population_units, run_units, start_units


def selection_spec(spec, method):
    """``spec`` as a selecting search of ``method`` sees it: its seeds are the selection seeds."""
    if method.search is None or not search_kind(method).selects:
        return spec
    return dataclasses.replace(spec, seeds=selection_seeds(spec.seeds, method.search))


def _first_phase_trials(spec, method, setting):
    """The trials of ``method`` the shared pool runs in phase 1, or None if it waits for phase 2/3."""
    if method.rho_from:
        return None
    if method.search is None:
        return method_trials(spec, method, setting)
    kind = search_kind(method)
    if kind.cfg.engine != "local":
        return None
    return kind.fixed_trials(selection_spec(spec, method), method, setting)


def _eval_trials(spec, method, setting, rho: float) -> list:
    """The evaluation runs of a search at its ρ*: one per spec seed, tagged ``<kind>/<engine>/eval``."""
    tag = f"{search_kind(method).tag}/eval"
    return [make_trial(spec, method, rho, seed, setting, search=tag) for seed in spec.seeds]


def _units(method, trials, store):
    """Work units of ``method``'s trials: populations where it asks for them, else one run each."""
    batched = method.batched if method.search is None else search_kind(method).cfg.batched
    return population_units(trials, store, batched)


def _search_cases(cases, first) -> list:
    """The cases phase 2 runs, in the order it runs them: searches whose trials train outside the pool
    (Ray Tune) first, then the others, each group in the spec's order."""
    todo = [c for c in cases if first[c[0], c[3]] is None and c[4].search is not None and not c[4].rho_from]
    return sorted(todo, key=lambda c: ENGINES.get(search_kind(c[4]).cfg.engine).trains_on_pool)


def _warm_engines(searches) -> dict:
    """Warm up (in the background) each engine that phase 2 will use; {engine class: index of its last search}."""
    last = {}
    for n, (i, setting, sspec, j, method) in enumerate(searches):
        cfg = search_kind(method).cfg
        cls = ENGINES.get(cfg.engine)
        if cls not in last:
            cls.warm_up(cfg)
        last[cls] = n
    return last


def run_experiment(spec: ExperimentSpec, store: ResultsStore, device: str | None = None, show_progress: bool = True,
                   jobs: int = 1) -> pd.DataFrame:
    """Run every setting × method of ``spec`` into ``store`` (skipping done runs); return the runs frame."""
    cases = [(i, setting, sspec, j, method) for i, (setting, sspec) in enumerate(settings(spec))
             for j, method in enumerate(sspec.methods)]
    summaries: dict[tuple[int, int], list[dict]] = {}
    with RunProgress(enabled=show_progress) as progress, TrialPool(jobs, device) as pool:
        first = {(i, j): _first_phase_trials(sspec, method, setting) for i, setting, sspec, j, method in cases}
        searches = _search_cases(cases, first)
        warm = _warm_engines(searches)
        try:
            phase1 = start_units(pool, [u for i, setting, sspec, j, method in cases if first[i, j]
                                        for u in _units(method, first[i, j], store)], store, progress)
            for n, (i, setting, sspec, j, method) in enumerate(searches):
                summaries[i, j] = run_search(selection_spec(sspec, method), method, setting, store, device,
                                             progress, pool)
                for cls in [c for c, last in warm.items() if last == n]:  # its last search is done
                    cls.cool_down()
            if phase1 is not None:
                phase1.result()
        finally:
            for cls in warm:
                cls.cool_down()
        for i, setting, sspec, j, method in cases:  # local grids/sweeps: their rows are in the store
            if method.search is not None and not method.rho_from and first[i, j] is not None:
                summaries[i, j] = search_kind(method).summaries(method, setting,
                                                                [store.load_row(t.run_id) for t in first[i, j]])
        rho_star = {(i, method.label): summaries[i, j][0]["summary"]["rho_star"]
                    for i, setting, sspec, j, method in cases if summaries.get((i, j))}
        evals, later = {}, []
        for i, setting, sspec, j, method in cases:
            if summaries.get((i, j)) and rho_star[i, method.label] == rho_star[i, method.label]:
                evals[i, j] = _eval_trials(sspec, method, setting, rho_star[i, method.label])
                later.append((method, evals[i, j]))
            if not method.rho_from:
                continue
            rho = rho_star[i, method.rho_from]
            if math.isnan(rho):  # every run of the search failed, so it selected nothing
                progress.note(f"{method.label}: skipped, its rho_from search {method.rho_from!r} selected no rho "
                              "(none of its runs ended ok)")
                continue
            method = dataclasses.replace(method, rho=rho)
            later.append((method, method_trials(sspec, method, setting)))
        run_units(pool, [u for method, trials in later for u in _units(method, trials, store)], store, progress)
    runs = store.consolidate()
    for key, trials in evals.items():
        summaries[key][0]["summary"] = with_evaluation(summaries[key][0]["summary"],
                                                       pd.DataFrame([store.load_row(t.run_id) for t in trials]))
    found = [s for key in sorted(summaries) for s in summaries[key]]
    if found:
        store.write_table("searches", pd.DataFrame([r["summary"] for r in found]))
        store.write_table("anytime", pd.concat([r["anytime"] for r in found], ignore_index=True))
    return runs
