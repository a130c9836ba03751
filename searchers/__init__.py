"""ρ-selection strategies: one module per strategy, registered by decorator (timm-style).

``list_strategies()`` names every registered per-run strategy; ``create_strategy(name, rho, params)``
builds one. Modules in this package are imported on first use, so a new strategy is one new file.
"""
from __future__ import annotations

import importlib
import pkgutil

from searchers.base import Diverged, NoParams, Strategy

_REGISTRY: dict[str, type[Strategy]] = {}
_LOADED = False


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"strategy {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        for mod in pkgutil.iter_modules(__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        _LOADED = True


def list_strategies() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_strategy_class(name: str) -> type[Strategy]:
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"strategy: unknown strategy {name!r}; allowed: {', '.join(list_strategies())}")
    return _REGISTRY[name]


def create_strategy(name: str, rho: float, params: dict | None = None) -> Strategy:
    cls = get_strategy_class(name)
    return cls(rho, cls.Params(**(params or {})))


__all__ = ["Diverged", "NoParams", "Strategy", "create_strategy", "get_strategy_class",
           "list_strategies", "register_strategy"]
