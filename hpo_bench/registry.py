"""A name → object registry filled by a decorator (timm's ``register_model`` style).

Models (:mod:`hpo_bench.models`) and strategies (:mod:`hpo_bench.strategy`) both use it, so both
refuse a duplicate name and name the allowed values when asked for an unknown one.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries keyed by name; ``field`` is the spec field an unknown name is reported against."""

    def __init__(self, kind: str, field: str, load: Callable[[], None] | None = None):
        self.kind, self.field, self._load = kind, field, load
        self._entries: dict[str, T] = {}
        self._loaded = load is None

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a second entry under the same name is a ValueError."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._load()

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._ensure_loaded()
        if name not in self._entries:
            raise ValueError(f"{self.field}: unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries
