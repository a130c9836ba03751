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
from dataclasses import dataclass
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


class Strategy(ABC):
    """A per-run rule for perturbing and combining gradients. Subclasses set ``name`` and ``Params``.

    ``reduces_to`` declares the parameters under which the strategy is exactly another one
    (``(params, "sam")``: these params make every step a SAM step with the same ρ); the shared
    contract test (``tests/test_strategy_contract.py``) checks that reduction bit for bit.
    """

    name: ClassVar[str]
    summary_doc: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    reduces_to: ClassVar[tuple[dict, str] | None] = None

    def __init__(self, rho: float, params=None):
        self.rho0 = float(rho)
        self.rho = float(rho)
        self.params = params if params is not None else self.Params()

    @classmethod
    def validate_params(cls, params, where: str) -> None:
        """Cross-field checks beyond types and ranges; raise SpecError. Default: none."""

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


def _load_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "strategy", load=_load_plugins)


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
