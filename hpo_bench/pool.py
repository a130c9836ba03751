"""Independent trials in concurrent worker processes (``hpo-bench run --jobs N``).

Each worker is a process forked from a fork server that has imported torch once
(:mod:`hpo_bench.workers`), running one trial at a time through
:func:`hpo_bench.execute.execute_trial` with one torch thread (or ``train.threads``), so a trial
computes the same bits as in a sequential run with one thread, and writes its row through the
same :class:`~hpo_bench.store.ResultsStore` (a finished run is its ``trials/<run_id>.json``). The
driver only waits, prints each finished run's line, advances the progress bar (runs done, ETA)
and rebuilds ``runs.parquet``.

Workers ignore SIGINT: Ctrl-C reaches the driver, which cancels what has not started and
terminates the workers (a run in flight is lost and re-run next time; finished runs are kept).
A worker also gets SIGKILL when its driver dies (the fork server ends with the driver, and the
worker with the server: Linux ``PR_SET_PDEATHSIG``), so no worker outlives a killed driver to race
its re-run.
"""
from __future__ import annotations

import ctypes
import os
import signal
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import torch

from hpo_bench.execute import execute_trial
from hpo_bench.store import ResultsStore
from hpo_bench.trial import Trial
from hpo_bench.workers import release_driver_pipe, start_server, worker_context

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - non-Linux: workers end when their queue closes
        pass


def init_worker(threads: int = 1, environ: dict | None = None) -> None:
    """Set up a worker process: SIGINT ignored (the driver stops it), SIGKILL when its parent (the fork
    server, which ends with the driver) dies,
    ``threads`` torch threads (a trial's ``train.threads``, when set, wins), and the driver's
    environment ``environ`` as of the pool's start (the fork server's is older)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    release_driver_pipe()
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    torch.set_num_threads(max(1, int(threads)))


def _work(trial: dict, store_root: str, device, on_epoch=None) -> dict:
    return execute_trial(Trial.from_dict(trial), ResultsStore(store_root), device=device, on_epoch=on_epoch)


def run_with_progress(trial: Trial, store, device=None, progress=None, consolidate: bool = True,
                      on_epoch=None) -> dict:
    """Run ``trial`` (skipped when stored) under the progress display; return its row.

    ``consolidate`` refreshes runs.parquet after the trial (sequential runs:
    :meth:`~hpo_bench.store.ResultsStore.refresh`); parallel workers leave that to their driver.
    ``on_epoch``: the trainer's hook after each evaluated epoch (a pruner).
    """
    if progress is not None:
        progress.start(trial)
    row = execute_trial(trial, store, device=device, progress=progress.step_bar if progress is not None else None,
                        on_epoch=on_epoch)
    if progress is not None:
        progress.finish(row)
    if consolidate:
        store.refresh()
    return row


class TrialPool:
    """``jobs`` worker processes with ``threads`` torch threads each, started on first use and kept for
    the whole experiment."""

    def __init__(self, jobs: int, device=None, threads: int = 1):
        if jobs < 1:
            raise ValueError(f"--jobs: {jobs}; allowed: an integer >= 1")
        self.jobs, self.device, self.threads = jobs, device, max(1, int(threads))
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "TrialPool":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(kill=exc_type is not None)

    def close(self, kill: bool = False) -> None:
        if self._executor is None:
            return
        if kill:  # interrupted or failed: nothing half-done is kept, so stop the workers now
            for proc in list((self._executor._processes or {}).values()):
                proc.kill()
        self._executor.shutdown(wait=not kill, cancel_futures=True)
        self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            start_server()
            self._executor = ProcessPoolExecutor(self.jobs, mp_context=worker_context(), initializer=init_worker,
                                                 initargs=(self.threads, dict(os.environ)))
            # Every worker now, from this thread, so that the environment and the set of workers are
            # fixed before another thread (the experiment's phase-1 thread) submits to the pool.
            for _ in range(self.jobs):
                self._executor._spawn_process()
        return self._executor

    def start(self) -> None:
        """Start the worker processes now, from the calling thread (the driver's main thread), before
        another thread submits to the pool."""
        self._pool()

    def submit(self, trial: Trial, store: ResultsStore, on_epoch=None) -> Future:
        """Start ``trial`` in a worker process (skipped there when stored); the future's result is its row.

        For a driver that schedules runs itself (the Optuna grid): it decides what runs, the pool only
        trains. An exception of the trial is the future's exception. ``on_epoch``: a picklable hook the
        trainer calls after each evaluated epoch (an Optuna pruner).
        """
        return self._pool().submit(_work, trial.to_dict(), str(store.root), self.device, on_epoch)

    def submit_call(self, fn, *args) -> Future:
        """Run the picklable ``fn(*args)`` in a worker process (e.g. a population of trials)."""
        return self._pool().submit(fn, *args)

    def run(self, trials: list[Trial], store: ResultsStore, progress=None) -> list[dict]:
        """Run every trial not in ``store`` (each run id once); return the rows of ``trials`` in order."""
        todo = list({t.run_id: t for t in trials if not store.has(t.run_id)}.values())
        if self.jobs == 1 or len(todo) <= 1:
            for trial in todo:
                run_with_progress(trial, store, self.device, progress)
            store.consolidate()
        else:
            self._run_parallel(todo, store, progress)
        return [store.load_row(t.run_id) for t in trials]

    def _run_parallel(self, todo: list[Trial], store: ResultsStore, progress) -> None:
        if progress is not None:
            progress.start_batch(len(todo), min(self.jobs, len(todo)))
        pool = self._pool()
        self.drain({pool.submit(_work, t.to_dict(), str(store.root), self.device) for t in todo}, store, progress)

    @staticmethod
    def drain(pending: set[Future], store: ResultsStore, progress=None) -> None:
        """Wait for ``pending`` (each future's result: a row, or a population's list of rows); print each
        run's line; refresh runs.parquet as runs finish and rebuild it at the end."""
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()  # a trial that raised re-raises here, as in a sequential run
                for row in [result] if isinstance(result, dict) else result:
                    if progress is not None:
                        progress.finish(row)
            store.refresh()
        store.consolidate()
