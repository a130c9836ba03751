"""The plain sequential engine (debugging, and the reference the other engines must match).

With ``search.batched = true`` the grid points of each seed are trained together in one
vectorized pass (:mod:`hpo_bench.population`: points and seeds as populations).
"""
from __future__ import annotations

from hpo_bench.population import run_batched
from hpo_bench.engines.base import Engine


class LocalEngine(Engine):
    name = "local"

    def run_trials(self, trials, store, progress=None) -> list[dict]:
        if self.cfg.batched:
            return run_batched(trials, store, device=self.device, progress=progress)
        return self.pool.run(trials, store, progress)
