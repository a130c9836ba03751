"""Progress display: a tqdm bar and one line per finished run.

Sequential runs: the bar counts the current run's steps (ETA, latest validation accuracy).
Concurrent runs (:meth:`RunProgress.start_batch`): the bar counts finished runs of the batch
(ETA over runs), since the runs' steps happen in other processes; each run's line also ends with
``(k/n, eta ...)``, so the ETA shows without a terminal too (``--no-progress``, a log file). Every
engine uses this: the pool and the Optuna grid call :meth:`RunProgress.finish` for each run, Ray
Tune's driver from a Tune callback.

Batches may overlap: the experiment runs plain methods from a driver thread while a search runs
(:func:`hpo_bench.units.start_units`). A batch that starts while another is in flight joins it (the
bar and the ``k/n`` count cover both), every method takes a lock, and a run the driver trains itself
meanwhile gets no step bar (the bar keeps counting runs).
"""
from __future__ import annotations

import sys
import threading
import time

from tqdm.auto import tqdm


class RunProgress:
    """Context manager owning one reusable tqdm bar; ``step_bar`` is handed to the trainer."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.done = 0
        self.batch = False
        self.batch_total, self.batch_done, self.batch_t0 = 0, 0, 0.0
        self._lock = threading.RLock()

    def __enter__(self):
        if self.enabled:
            self.bar = tqdm(total=1, unit="step", dynamic_ncols=True, leave=False)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    @property
    def in_batch(self) -> bool:
        """True while a batch has runs that have not finished."""
        return self.batch and self.batch_done < self.batch_total

    @property
    def step_bar(self):
        """The bar a run trained in this process advances step by step; None while a batch is in flight."""
        return None if self.in_batch else self.bar

    def start(self, trial) -> None:
        with self._lock:
            if self.in_batch:
                return
            self.batch = False
            if self.bar is not None:
                self.bar.unit = "step"
                self.bar.set_description(f"{trial.method} rho={trial.rho:g} seed={trial.seed}")

    def start_batch(self, n_runs: int, workers: int) -> None:
        """The next ``n_runs`` finish in any order, ``workers`` at a time: the bar counts runs. While
        another batch is in flight, they join it."""
        with self._lock:
            if self.in_batch:
                self.batch_total += n_runs
                line = f"{n_runs} more runs, {self.batch_total - self.batch_done} in flight"
            else:
                self.batch = True
                self.batch_total, self.batch_done, self.batch_t0 = n_runs, 0, time.monotonic()
                line = f"{n_runs} runs, {workers} at a time"
            if self.bar is not None:
                self.bar.reset(total=self.batch_total)
                self.bar.n = self.batch_done
                self.bar.unit = "run"
                self.bar.set_description(line)
                self.bar.refresh()
            else:
                print(line, flush=True)

    def note(self, message: str) -> None:
        with self._lock:
            (self.bar.write if self.bar is not None else print)(message)

    def finish(self, row: dict) -> None:
        with self._lock:
            self.done += 1
            status = row.get("status", "ok")
            acc = row.get("test_acc", float("nan"))
            msg = f"[{self.done}] {row['method']:<22} rho0={row['rho0']:<8g} seed={row['seed']:<3} " \
                  f"status={status:<8} test_acc={acc:.4f} grad_evals={row.get('grad_evals', 0)} " \
                  f"wall={row.get('wall_s', 0):.1f}s"
            counted = self.in_batch
            if counted:
                self.batch_done += 1
                msg += f"  ({self.batch_done}/{self.batch_total}, {self.eta()})"
            self.note(msg)
            if counted and self.bar is not None:
                self.bar.update(1)

    def eta(self) -> str:
        """``eta 1m05s`` for the rest of the batch, from its mean time per finished run so far."""
        left = max(0, self.batch_total - self.batch_done)
        if not left:
            return "done"
        secs = (time.monotonic() - self.batch_t0) / max(1, self.batch_done) * left
        return f"eta {int(secs // 60)}m{int(secs % 60):02d}s" if secs >= 60 else f"eta {secs:.0f}s"
