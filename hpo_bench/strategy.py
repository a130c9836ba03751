"""The hook protocol between the trainer and a per-run ρ strategy, and the strategy registry.

The common trainer (:mod:`hpo_bench.trainer`) owns the loop. At every step it

1. computes g = ∇L(B^tr; θ_t) (always: one grad eval),
2. asks :meth:`Strategy.perturbation` for ε (``None`` → no second pass: an ERM step),
3. if ε is given, computes ĝ = ∇L(B^tr; θ_t + ε) with BN statistics frozen (one grad eval),
4. asks :meth:`Strategy.combine` for the update direction (default: ĝ, or g without ε),
5. takes the base-optimizer step (SGD, momentum, weight decay, cosine lr),
6. calls :meth:`Strategy.after_update` (e.g. update ρ from a validation batch).

Every gradient a strategy needs is obtained through the :class:`hpo_bench.trainer.StepContext`
it receives, so the ledger counts it; a strategy never runs its own loop nor charges by hand.

Strategies live in the ``searchers`` package (one module each) and register themselves with
:func:`register_strategy`. The registry finds them through the ``hpo_bench.strategies`` entry
point group (``pyproject.toml``), so ``hpo_bench`` never imports ``searchers`` and a third-party
package can add a strategy by declaring the same entry point.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar

from hpo_bench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from hpo_bench.trainer import StepContext, Trainer

Grads = list  # list[torch.Tensor], one per trainable parameter, in model.parameters() order
ENTRY_POINT_GROUP = "hpo_bench.strategies"


@dataclass
class NoParams:
    """A strategy without hyperparameters beyond ρ."""


class Diverged(RuntimeError):
    """Raised by a strategy when its own state (e.g. a learned ρ) becomes non-finite."""


@dataclass(frozen=True)
class Reduction:
    """Parameters under which a strategy trains exactly like another one, bit for bit on CPU.

    ``Strategy(rho if self.rho is None else self.rho, params)`` must give the same weights, BN
    statistics and per-epoch metrics as ``to`` with ``to_params`` at the same ρ (its ledger may
    charge more: e.g. LETS with β = 0 still computes its hypergradient).
    """

    params: dict = field(default_factory=dict)
    to: str = "sam"
    to_params: dict = field(default_factory=dict)
    rho: float | None = None


class Strategy(ABC):
    """A per-run rule for perturbing and combining gradients. Subclasses set ``name`` and ``Params``.

    ``reduces_to`` (a :class:`Reduction`) declares the parameters under which the strategy is
    exactly another one; the shared contract test (``tests/test_strategy_contract.py``) checks that
    reduction bit for bit, the ledger charge, ``trace``/``summary`` and determinism for every
    registered strategy, and fails for a strategy that declares none.
    """

    name: ClassVar[str]
    summary_doc: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    reduces_to: ClassVar[Reduction | None] = None

    def __init__(self, rho: float, params=None):
        self.rho0 = float(rho)
        self.rho = float(rho)
        self.params = params if params is not None else self.Params()

    @classmethod
    def validate_params(cls, params, where: str) -> None:
        """Cross-field checks beyond types and ranges; raise SpecError. Default: none."""

    @classmethod
    def uses_validation_split(cls, params) -> bool:
        """True if a run draws batches from the held-out validation split (it must not be empty)."""
        return False

    def setup(self, trainer: "Trainer") -> None:
        """Called once before the first step (total steps, data, model are known)."""

    @abstractmethod
    def perturbation(self, ctx: "StepContext", g: Grads) -> Grads | None:
        """ε for this step, or None to skip the second pass (ERM step)."""

    def combine(self, ctx: "StepContext", g: Grads, g_hat: Grads | None) -> Grads:
        """The update direction given g and ĝ (None on ERM steps). Default: ĝ if present, else g."""
        return g if g_hat is None else g_hat

    def after_update(self, ctx: "StepContext") -> None:
        """Called after the base-optimizer step, at θ_{t+1}."""

    def trace(self) -> dict[str, float]:
        """Per-step values stored in the curves table (e.g. ρ_t); called every ``trace_every`` steps."""
        return {}

    def summary(self) -> dict[str, float]:
        """Per-run values stored in runs.parquet (e.g. final ρ, fraction of SAM steps)."""
        return {"rho_final": self.rho}


def load_plugins() -> None:
    """Import every package declared under the ``hpo_bench.strategies`` entry point (registration)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "strategy", load=load_plugins)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    return STRATEGIES.register(cls.name, cls)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def get_strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def create_strategy(name: str, rho: float, params: dict | None = None) -> Strategy:
    cls = get_strategy_class(name)
    return cls(rho, cls.Params(**(params or {})))
