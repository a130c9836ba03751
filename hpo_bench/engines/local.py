"""The plain sequential engine (debugging, and the reference the other engines must match).

With ``search.batched = true`` the grid points of each seed are trained together in one
vectorized pass (:mod:`hpo_bench.batched`).
"""
from __future__ import annotations

from hpo_bench.batched import run_batched
from hpo_bench.execute import execute_trial


class LocalEngine:
    def __init__(self, search_cfg, run_dir, device=None):
        self.cfg, self.run_dir, self.device = search_cfg, run_dir, device

    def run_trials(self, trials, store, progress=None) -> list[dict]:
        if getattr(self.cfg, "batched", False):
            return run_batched(trials, store, device=self.device, progress=progress)
        rows = []
        for trial in trials:
            if progress is not None:
                progress.start(trial)
            row = execute_trial(trial, store, device=self.device, progress=progress.bar if progress else None)
            if progress is not None:
                progress.finish(row)
            store.consolidate()
            rows.append(row)
        return rows
