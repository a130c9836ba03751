"""Engines schedule trials; they never change what a trial computes.

Every engine is an :class:`~hpo_bench.engines.base.Engine`: it runs
:func:`hpo_bench.execute.execute_trial` on each trial and writes through the same
:class:`hpo_bench.store.ResultsStore`, so the same (ρ, seed) gives the same row whichever engine
ran it, and a re-run skips trials already done. The Optuna and Ray engines import ``optuna`` /
``ray`` only when they run, so importing this package stays cheap.
"""
from __future__ import annotations

from hpo_bench.engines.base import Engine, SearchSpace, TrialFactory
from hpo_bench.engines.local import LocalEngine
from hpo_bench.engines.optuna_engine import OptunaEngine
from hpo_bench.engines.ray_engine import RayEngine
from hpo_bench.registry import Registry

__all__ = ["ENGINES", "Engine", "SearchSpace", "TrialFactory", "get_engine", "list_engines"]

ENGINES: Registry[type[Engine]] = Registry("engine", "search.engine")
for _cls in (LocalEngine, OptunaEngine, RayEngine):
    ENGINES.register(_cls.name, _cls)


def list_engines() -> list[str]:
    return ENGINES.names()


def get_engine(name: str, search_cfg, run_dir, device=None, pool=None) -> Engine:
    """The engine ``name`` for ``search_cfg``; an unknown name is a one-line ValueError naming the field.

    ``pool`` (a :class:`~hpo_bench.pool.TrialPool`) runs the local engine's trials and sets the
    default concurrency of the others (``search.workers = 0``).
    """
    return ENGINES.get(name)(search_cfg, run_dir, device, pool)
