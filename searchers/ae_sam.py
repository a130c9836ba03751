"""AE-SAM: take the SAM step only in sharp regions (Jiang et al., ICLR 2023) — RECONSTRUCTION.

Reconstructed from the AE-SAM poster and METHODS.md §5 (the exact official schedule is not
available here). With s_t = ‖g_t‖² (the first gradient, computed anyway):

    μ_t  = δ μ_{t−1} + (1−δ) s_t                 (EMA mean, δ = 0.9)
    σ²_t = δ σ²_{t−1} + (1−δ)(s_t − μ_t)²         (EMA variance)
    c_t  = λ₁ t/T + λ₂ (1 − t/T)                 (threshold schedule, (λ₁, λ₂) = (−1, 1))
    SAM step  if  s_t ≥ μ_t + c_t σ_t,  else an ERM step with g_t (no second pass).

Initialization (our choice, documented): μ₀ = s₀ and σ²₀ = 0 at the first step, so the EMA is
not biased towards 0 and the first step is a SAM step (s₀ ≥ μ₀). ``force`` = 'always' / 'never'
pins the decision (reduces to SAM / ERM bit for bit; used by the tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hpo_bench.config import SpecError, spec_field
from hpo_bench.perturbation import global_norm, sam_direction
from hpo_bench.strategy import Reduction, Strategy, register_strategy


@dataclass
class AEPolicyParams:
    delta: float = spec_field(0.9, lo=0.0, hi=1.0, hi_open=True, doc="EMA factor δ")
    lambda1: float = spec_field(-1.0, doc="threshold at the end of training (t = T)")
    lambda2: float = spec_field(1.0, doc="threshold at the start of training (t = 0)")
    force: str = spec_field("auto", choices=["auto", "always", "never"])


class AEPolicy:
    """The adaptive SAM/ERM decision rule of AE-SAM, on a stream of squared gradient norms."""

    def __init__(self, params: AEPolicyParams, total_steps: int):
        self.p, self.total = params, max(1, total_steps)
        self.mu = self.var = math.nan
        self.s = self.c = math.nan
        self.use_sam = False
        self.n_steps = self.n_sam = 0

    def decide(self, s: float, t: int) -> bool:
        """Update the EMAs with s_t and return whether step t is a SAM step."""
        d = self.p.delta
        if self.n_steps == 0:
            self.mu, self.var = s, 0.0
        else:
            self.mu = d * self.mu + (1 - d) * s
            self.var = d * self.var + (1 - d) * (s - self.mu) ** 2
        frac = t / self.total
        self.s, self.c = s, self.p.lambda1 * frac + self.p.lambda2 * (1 - frac)
        if self.p.force == "auto":
            self.use_sam = s >= self.mu + self.c * math.sqrt(self.var)
        else:
            self.use_sam = self.p.force == "always"
        self.n_steps += 1
        self.n_sam += int(self.use_sam)
        return self.use_sam

    def trace(self) -> dict:
        return {"sam_step": float(self.use_sam), "sq_grad_norm": self.s, "ema_mu": self.mu,
                "ema_sigma": math.sqrt(self.var), "threshold_c": self.c}

    @property
    def fraction(self) -> float:
        return self.n_sam / self.n_steps if self.n_steps else math.nan


@register_strategy
class AESAM(Strategy):
    """AE-SAM: SAM step iff ‖g_t‖² ≥ μ_t + c_t σ_t, ERM step otherwise (reconstruction, see module doc)."""

    name = "ae-sam"
    reduces_to = Reduction({"force": "always"}, to="sam")
    summary_doc = "AE-SAM: SAM only in sharp regions (reconstruction)"
    Params = AEPolicyParams

    def setup(self, trainer):
        self.policy = AEPolicy(self.params, trainer.total_steps)

    def perturbation(self, ctx, g):
        norm = global_norm(g)
        if not self.policy.decide(float(norm) ** 2, ctx.step):
            return None
        return sam_direction(g, self.rho, norm)

    def trace(self):
        return self.policy.trace()

    def summary(self):
        return {"rho_final": self.rho, "sam_fraction": self.policy.fraction}

    @classmethod
    def validate_params(cls, params, where):
        if params.lambda1 > params.lambda2:
            raise SpecError(f"{where}.lambda1: {params.lambda1} > lambda2 {params.lambda2}; allowed: lambda1 <= lambda2 "
                            "(the threshold decreases over training)")
