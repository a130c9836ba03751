"""Search kinds over ρ and running a method's search through its engine.

A :class:`SearchKind` says which trials an engine runs for a method (a grid, an adaptive search
over a :class:`~hpo_bench.engines.base.SearchSpace`, or the method's own ρ values) and how the
rows become a summary (ρ*, accuracy at ρ*, summed cost, anytime curve). The kinds themselves live
in the ``searchers`` package (:mod:`searchers.searches`) and register with
:func:`register_search_kind`; the registry finds them through the same ``hpo_bench.strategies``
entry point as the strategies, so ``hpo_bench`` never imports ``searchers``.
"""
from __future__ import annotations

from abc import ABC
from typing import ClassVar

import pandas as pd

from hpo_bench.config import SearchConfig
from hpo_bench.engines import Engine, get_engine
from hpo_bench.registry import Registry
from hpo_bench.selection import summarize
from hpo_bench.strategy import load_plugins
from hpo_bench.trial import Trial

__all__ = ["SEARCH_KINDS", "SearchKind", "get_search_kind", "list_search_kinds", "register_search_kind",
           "run_search"]


class SearchKind(ABC):
    """One kind of search over ρ (``search.kind``). Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str]
    summary_doc: ClassVar[str] = ""
    selects: ClassVar[bool] = True  # selects a rho* (then evaluated on fresh seeds); a sweep does not

    def __init__(self, search_cfg: SearchConfig):
        self.cfg = search_cfg

    @property
    def tag(self) -> str:
        """The ``search`` field of the search's trials and of its summary row."""
        return f"{self.cfg.kind}/{self.cfg.engine}"

    def fixed_trials(self, spec, method, setting: dict) -> list[Trial] | None:
        """The search's trials when they are known before it runs (grid, sweep); None for adaptive kinds."""
        return None

    def run(self, engine: Engine, spec, method, setting: dict, store, progress=None) -> list[dict]:
        """Run the search's trials of ``method`` through ``engine``; return their rows."""
        return engine.run_trials(self.fixed_trials(spec, method, setting), store, progress)

    def summaries(self, method, setting: dict, rows: list[dict]) -> list[dict]:
        """The search's summary (ρ* and cost) and anytime curve; ``[]`` for a kind that selects nothing."""
        return [summarize(method.label, method.strategy, self.tag, setting, pd.DataFrame(rows))]


SEARCH_KINDS: Registry[type[SearchKind]] = Registry("search kind", "search.kind", load=load_plugins)


def register_search_kind(cls: type[SearchKind]) -> type[SearchKind]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    return SEARCH_KINDS.register(cls.name, cls)


def list_search_kinds() -> list[str]:
    return SEARCH_KINDS.names()


def get_search_kind(name: str) -> type[SearchKind]:
    return SEARCH_KINDS.get(name)


def search_kind(method) -> SearchKind:
    """The search kind of ``method`` (which has a ``search`` table), built from its config."""
    cfg = SearchConfig(**method.search)
    return get_search_kind(cfg.kind)(cfg)


def run_search(spec, method, setting, store, device=None, progress=None, pool=None) -> list[dict]:
    """Run the search of ``method`` through its engine; return its summaries (``[]`` for a sweep)."""
    kind = search_kind(method)
    rows = kind.run(get_engine(kind.cfg.engine, kind.cfg, store.root, device, pool), spec, method, setting, store,
                    progress)
    return kind.summaries(method, setting, rows)
