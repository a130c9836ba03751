"""The small interface every per-run ρ strategy implements, and its registry.

The common trainer (:mod:`hpo_bench.trainer`) owns the loop. At every step it

1. computes g = ∇L(B^tr; θ_t) (always: one grad eval),
2. asks :meth:`Strategy.perturbation` for ε (``None`` → no second pass: an ERM step),
3. if ε is given, computes ĝ = ∇L(B^tr; θ_t + ε) with BN statistics frozen (one grad eval),
4. asks :meth:`Strategy.combine` for the update direction (default: ĝ, or g without ε),
5. takes the base-optimizer step (SGD, momentum, weight decay, cosine lr),
6. calls :meth:`Strategy.after_update` (e.g. update ρ from a validation batch).

Every gradient a strategy needs is obtained through the :class:`hpo_bench.trainer.StepContext`
it receives, so the ledger counts it; a strategy never runs its own loop nor charges by hand.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from hpo_bench.trainer import StepContext, Trainer

Grads = list  # list[torch.Tensor], one per trainable parameter, in model.parameters() order


@dataclass
class NoParams:
    """A strategy without hyperparameters beyond ρ."""


class Diverged(RuntimeError):
    """Raised by a strategy when its own state (e.g. a learned ρ) becomes non-finite."""


class Strategy(ABC):
    """A per-run rule for perturbing and combining gradients. Subclasses set ``name`` and ``Params``."""

    name: ClassVar[str]
    summary_doc: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

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
