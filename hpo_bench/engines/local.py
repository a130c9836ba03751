"""The local engine: the experiment's :class:`~hpo_bench.pool.TrialPool` runs the trials
(one after another with ``--jobs 1``: the reference the other engines must match).

With ``search.batched = true`` the grid's points and seeds are trained as populations in one
vectorized pass (:mod:`hpo_bench.population`).
"""
from __future__ import annotations

from hpo_bench.engines.base import Engine
from hpo_bench.units import run_batched


class LocalEngine(Engine):
    name = "local"

    def run_trials(self, trials, store, progress=None) -> list[dict]:
        if self.cfg.batched:
            return run_batched(trials, store, device=self.device, progress=progress)
        return self.pool.run(trials, store, progress)
