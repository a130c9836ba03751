"""Units of work for the experiment's pool: one trial, or a population of trials trained together.

A plain method's ρ values × seeds share everything but (ρ, seed), so when its strategy and model
allow (:func:`hpo_bench.population.can_train_together`) they are trained as one population
(:mod:`hpo_bench.population`, up to :data:`~hpo_bench.population.MAX_POPULATION` members) in one
worker process instead of one process-run each (:func:`run_batched`; a population of 8 MNIST-1D CNNs
trains about 2.5× faster than its members one after another, one of 8 Fashion-MNIST CNNs 1.09×
slower: ``benchmarks/RESULTS.md``). Units run concurrently on the pool's workers, in the order
given. :func:`start_units` runs them from a driver thread, so the driver can run a search (a Ray
Tune search trains in Ray's own processes) at the same time.

Which trials form a unit depends only on the spec and on what the store already holds, never on
``--jobs``: a run gives the same rows with any number of workers. A population writes its members
when it ends, so an interrupted one is trained again, whole, by the re-run.
"""
from __future__ import annotations

import threading
import time

from hpo_bench.execute import execute_trial
from hpo_bench.pool import TrialPool, run_with_progress
from hpo_bench.population import MAX_POPULATION, can_train_together, train_key, train_population
from hpo_bench.store import ResultsStore
from hpo_bench.trial import Trial


def population_units(trials: list[Trial], store: ResultsStore, batched: bool = True) -> list[list[Trial]]:
    """The trials of one method not yet in ``store`` (each run id once), as populations where they can
    train together (chunks of at most MAX_POPULATION) and ``batched`` allows, else one run each."""
    todo = list({t.run_id: t for t in trials if not store.has(t.run_id)}.values())
    if not batched:
        return [[t] for t in todo]
    units = []
    for start in range(0, len(todo), MAX_POPULATION):
        chunk = todo[start:start + MAX_POPULATION]
        if len(chunk) > 1 and can_train_together(chunk):
            units.append(chunk)
        else:
            units.extend([t] for t in chunk)
    return units


def _work_unit(trials: list[dict], store_root: str, device) -> list[dict]:
    store, unit = ResultsStore(store_root), [Trial.from_dict(t) for t in trials]
    if len(unit) == 1:
        return [execute_trial(unit[0], store, device=device)]
    return run_batched(unit, store, device=device, consolidate=False)


def run_batched(trials: list[Trial], store, device=None, progress=None, consolidate: bool = True) -> list[dict]:
    """Run the not-yet-stored ``trials``: populations where they can train together (≤ MAX_POPULATION
    members), else one by one; return every row in order. ``consolidate``: False in a worker process."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        if not store.has(t.run_id):
            groups.setdefault(train_key(t), []).append(t)
    for group in groups.values():
        for start in range(0, len(group), MAX_POPULATION):
            chunk = group[start:start + MAX_POPULATION]
            if len(chunk) > 1 and can_train_together(chunk):
                for row, curves in train_population(chunk, device):
                    row["finished_at"] = time.time()
                    store.write_run(row, curves)
                    if progress is not None:
                        progress.finish(row)
            else:
                for t in chunk:
                    row = execute_trial(t, store, device=device)
                    if progress is not None:
                        progress.finish(row)
    if consolidate:
        store.consolidate()
    return [store.load_row(t.run_id) for t in trials]


def run_units(pool: TrialPool, units: list[list[Trial]], store: ResultsStore, progress=None) -> None:
    """Run every unit (a list of trials: one run, or a population) on ``pool``; print each run's line."""
    units = [u for u in units if u]
    if not units:
        return
    if pool.jobs == 1 or len(units) == 1:
        for unit in units:
            if len(unit) == 1:
                run_with_progress(unit[0], store, pool.device, progress)
            else:
                run_batched(unit, store, device=pool.device, progress=progress)
        store.consolidate()
        return
    _run_on_workers(pool, units, store, progress)


def _run_on_workers(pool: TrialPool, units: list[list[Trial]], store: ResultsStore, progress=None) -> None:
    if progress is not None:
        progress.start_batch(sum(len(u) for u in units), min(pool.jobs, len(units)))
    pool.drain({pool.submit_call(_work_unit, [t.to_dict() for t in u], str(store.root), pool.device) for u in units},
               store, progress)


class UnitsInFlight:
    """Units running on the pool from a daemon driver thread; :meth:`result` waits and re-raises its error.

    The thread only submits, waits and prints; the units train in the pool's worker processes. When
    the driver is interrupted, closing the pool (``TrialPool.close(kill=True)``) breaks its futures,
    so the thread ends on its own; being a daemon, it never holds up the interpreter's exit.
    """

    def __init__(self, pool: TrialPool, units: list[list[Trial]], store: ResultsStore, progress=None):
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(pool, units, store, progress),
                                        name="hpo-bench-units", daemon=True)
        self._thread.start()

    def _run(self, pool, units, store, progress) -> None:
        try:
            _run_on_workers(pool, units, store, progress)
        except BaseException as err:  # handed to the driver by result()
            self.error = err

    def result(self) -> None:
        """Wait for every unit; raise what the thread raised (a unit's exception), if anything."""
        self._thread.join()
        if self.error is not None:
            raise self.error


def start_units(pool: TrialPool, units: list[list[Trial]], store: ResultsStore, progress=None) -> UnitsInFlight | None:
    """Run ``units`` like :func:`run_units`, but in the background, on the workers, when the pool has
    worker processes (``--jobs`` > 1); with one job they run now, in this process, and None is returned."""
    units = [u for u in units if u]
    if pool.jobs == 1 or not units:
        run_units(pool, units, store, progress)
        return None
    pool.start()  # workers started by the short-lived thread would die with it (see TrialPool._pool)
    return UnitsInFlight(pool, units, store, progress)
