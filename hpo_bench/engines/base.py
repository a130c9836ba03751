"""The engine contract: what every engine runs, and the search space an adaptive search hands it.

An engine only schedules trials; it never changes what a trial computes. ``run_trials`` runs a
fixed list of trials (a grid, or a method's ρ values × seeds); ``run_adaptive`` runs a search that
decides its trials as it goes (TPE, ASHA), given a trial factory ``(ρ, seed) -> Trial`` and the
:class:`SearchSpace`. Both return the rows of every trial of the search, as the store holds them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from hpo_bench.pool import TrialPool
from hpo_bench.trial import Trial

TrialFactory = Callable[[float, int], Trial]  # (rho, seed) -> the search's trial at that point


@dataclass(frozen=True)
class SearchSpace:
    """What an adaptive search explores; the engine's own settings (workers, storage, ...) stay in its config.

    ``tpe``: ρ log-uniform in [rho_min, rho_max], ``n_trials`` ρ points (each runs every seed),
    sampled by a TPE sampler seeded with ``sampler_seed``. ``asha``: every ρ of ``grid`` × every
    seed under an ASHA scheduler (grace period ``asha_grace`` epochs, ``asha_reduction``).
    """

    kind: str
    seeds: tuple[int, ...]
    grid: tuple[float, ...] = ()
    rho_min: float = 1e-3
    rho_max: float = 2.0
    n_trials: int = 8
    sampler_seed: int = 0
    asha_grace: int = 1
    asha_reduction: float = 2.0

    @classmethod
    def from_config(cls, search_cfg, seeds) -> SearchSpace:
        """The space of a :class:`hpo_bench.config.SearchConfig` over the spec's ``seeds``."""
        return cls(kind=search_cfg.kind, seeds=tuple(seeds),
                   grid=tuple(float(r) for r in search_cfg.grid), rho_min=search_cfg.rho_min,
                   rho_max=search_cfg.rho_max, n_trials=search_cfg.n_trials, sampler_seed=search_cfg.sampler_seed,
                   asha_grace=search_cfg.asha_grace, asha_reduction=search_cfg.asha_reduction)


class Engine(ABC):
    """Schedules trials. Subclasses set ``name`` and ``kinds`` (the search kinds they can run).

    Every trial runs :func:`hpo_bench.execute.execute_trial` (which skips a trial the store already
    has) and is written through the same :class:`~hpo_bench.store.ResultsStore`, so the same
    (ρ, seed) gives the same row whichever engine ran it.
    """

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ("grid", "sweep")
    trains_on_pool: ClassVar[bool] = True  # False: trials train in the engine's own processes (Ray's workers)

    def __init__(self, search_cfg, run_dir, device=None, pool: TrialPool | None = None):
        self.cfg, self.run_dir, self.device = search_cfg, Path(run_dir).resolve(), device
        self.pool = pool if pool is not None else TrialPool(1, device)
        self.workers = search_cfg.workers or self.pool.jobs  # concurrent trials; search.workers = 0: --jobs

    @classmethod
    def warm_up(cls, search_cfg) -> None:
        """Start, in the background, what this engine's searches will need (while other runs train)."""

    @classmethod
    def cool_down(cls) -> None:
        """Release what :meth:`warm_up` started, once the experiment's last search on this engine is done."""

    @abstractmethod
    def run_trials(self, trials: list[Trial], store, progress=None) -> list[dict]:
        """Run every trial not yet in ``store``; return the rows of all ``trials``, in order."""

    def run_adaptive(self, make_trial: TrialFactory, space: SearchSpace, store, progress=None) -> list[dict]:
        """Run an adaptive search over ``space``; return the rows of every trial it evaluated."""
        raise ValueError(f"search.kind: {space.kind!r} is not supported by engine {self.name!r}; "
                         f"allowed: {', '.join(self.kinds)}")
