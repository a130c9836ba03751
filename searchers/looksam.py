"""LookSAM (Liu et al., CVPR 2022) and AE-LookSAM (Jiang et al., ICLR 2023) — cost baselines.

On SAM steps (every k-th step for LookSAM; AE policy's decision for AE-LookSAM) the SAM gradient
ĝ is used and its component orthogonal to g is stored:

    g_v = ĝ − (ĝ·g / ‖g‖²) g                       (LookSAM Eq. 6)

On the other steps no second pass is made and the update reuses it:

    d = g + α (‖g‖ / ‖g_v‖) g_v,   α = 0.7          (LookSAM Eq. 7)

Before the first SAM step (never, since step 0 is a SAM step for both) d = g.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpo_bench.config import spec_field
from hpo_bench.perturbation import EPS, global_norm, sam_direction
from hpo_bench.strategy import Reduction, Strategy, register_strategy
from searchers.ae_sam import AEPolicy, AEPolicyParams


class _ReuseMixin:
    """Stores g_v on SAM steps and applies the LookSAM reuse on the others."""

    g_v = None

    def _is_sam_step(self, ctx, norm) -> bool:
        """Whether this step is a SAM step, given ‖g‖."""
        raise NotImplementedError

    def perturbation(self, ctx, g):
        norm = global_norm(g)
        if not self._is_sam_step(ctx, norm):
            return None
        return sam_direction(g, self.rho, norm)

    def combine(self, ctx, g, g_hat):
        if g_hat is not None:
            dot = sum((a * b).sum() for a, b in zip(g_hat, g))
            coef = dot / (global_norm(g) ** 2 + EPS)
            self.g_v = [gh - coef * gi for gh, gi in zip(g_hat, g)]
            return g_hat
        if self.g_v is None:
            return g
        scale = self.params.alpha * global_norm(g) / (global_norm(self.g_v) + EPS)
        return [gi + scale * v for gi, v in zip(g, self.g_v)]


@dataclass
class LookSAMParams:
    k: int = spec_field(5, lo=1, doc="SAM step every k steps")
    alpha: float = spec_field(0.7, lo=0.0, doc="weight of the reused orthogonal component")


@register_strategy
class LookSAM(_ReuseMixin, Strategy):
    """LookSAM: SAM every k steps, reuse of the orthogonal component g_v in between."""

    name = "looksam"
    reduces_to = Reduction({"k": 1}, to="sam")  # every step a SAM step: nothing is reused
    summary_doc = "LookSAM: SAM every k steps, gradient reuse in between"
    Params = LookSAMParams

    def setup(self, trainer):
        self.n_steps = self.n_sam = 0

    def _is_sam_step(self, ctx, norm):
        use = ctx.step % self.params.k == 0
        self.n_steps += 1
        self.n_sam += int(use)
        return use

    def summary(self):
        return {"rho_final": self.rho, "sam_fraction": self.n_sam / max(1, self.n_steps)}


@dataclass
class AELookSAMParams(AEPolicyParams):
    alpha: float = spec_field(0.7, lo=0.0, doc="weight of the reused orthogonal component")


@register_strategy
class AELookSAM(_ReuseMixin, Strategy):
    """AE-LookSAM: the AE-SAM policy decides when to refresh g_v; LookSAM reuse otherwise (reconstruction)."""

    name = "ae-looksam"
    reduces_to = Reduction({"force": "always"}, to="sam")
    summary_doc = "AE-LookSAM: AE policy + LookSAM reuse (reconstruction)"
    Params = AELookSAMParams

    def setup(self, trainer):
        self.policy = AEPolicy(self.params, trainer.total_steps)

    def _is_sam_step(self, ctx, norm):
        return self.policy.decide(float(norm) ** 2, ctx.step)

    def trace(self):
        return self.policy.trace()

    def summary(self):
        return {"rho_final": self.rho, "sam_fraction": self.policy.fraction}
