"""Engines schedule trials; they never change what a trial computes.

Every engine runs :func:`hpo_bench.experiment.execute_trial` (or the same ``run_trial``) on each
trial and writes through the same :class:`hpo_bench.store.ResultsStore`, so the same (ρ, seed)
gives the same row whichever engine ran it, and a re-run skips trials already done.
"""
from __future__ import annotations

import importlib

_ENGINES = {"local": "hpo_bench.engines.local:LocalEngine",
            "optuna": "hpo_bench.engines.optuna_engine:OptunaEngine",
            "ray": "hpo_bench.engines.ray_engine:RayEngine"}


def list_engines() -> list[str]:
    return sorted(_ENGINES)


def get_engine(name: str, search_cfg, run_dir, device=None):
    if name not in _ENGINES:
        raise ValueError(f"search.engine: unknown engine {name!r}; allowed: {', '.join(list_engines())}")
    module, cls = _ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(search_cfg, run_dir, device)
