"""SAMAR: SAM with an adaptive regularization weight λ (Zou, Deng & Sun 2024) — RECONSTRUCTION.

The paper text is not available here; this follows METHODS.md §6. Update direction

    d_k = (1 − λ_k) g(θ_k) + λ_k ∇L(θ_k + ε_k),   ε_k = ρ g/‖g‖

(λ ≡ 1 is SAM, λ ≡ 0 is ERM; both gradients are the ones SAM computes, so the cost is SAM's).
Sharpness ratio r_k = ‖g(θ_k)‖ / ‖g(θ_{k−1})‖ (stochastic), smoothed r̄_k = χ r̄_{k−1} + (1−χ) r_k
with r̄_0 = 1. Then: r̄_k ≥ 1+δ (getting sharper) → λ ← min(λ_max, γλ); r̄_k ≤ 1−δ (flatter) →
λ ← max(λ_min, λ/γ); else λ is kept. The new λ applies from the next step on. Defaults are our
choice: λ₀ = 1 (start as SAM), [λ_min, λ_max] = [0.5, 2], γ = 1.1, δ = 0.02, χ = 0.9.
State stays on the device (no host sync per step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hpo_bench.config import SpecError, spec_field
from hpo_bench.perturbation import global_norm, sam_direction
from hpo_bench.strategy import Reduction, Strategy, register_strategy


@dataclass
class SAMARParams:
    lambda0: float = spec_field(1.0, lo=0.0, doc="initial λ")
    lambda_min: float = spec_field(0.5, lo=0.0)
    lambda_max: float = spec_field(2.0, lo=0.0)
    gamma: float = spec_field(1.1, lo=1.0, doc="multiplicative step of λ")
    delta: float = spec_field(0.02, lo=0.0, hi=1.0, hi_open=True, doc="dead band around r̄ = 1")
    chi: float = spec_field(0.9, lo=0.0, hi=1.0, hi_open=True, doc="smoothing of the ratio")
    adapt: bool = spec_field(True, doc="false keeps λ = λ₀ (λ₀ = 1 is SAM)")


def samar_lambda_update(lam, r_bar, p: SAMARParams):
    """λ_{k+1} from λ_k and r̄_k (works on floats or tensors)."""
    up = torch.clamp(torch.as_tensor(lam * p.gamma), max=p.lambda_max)
    down = torch.clamp(torch.as_tensor(lam / p.gamma), min=p.lambda_min)
    r_bar = torch.as_tensor(r_bar)
    return torch.where(r_bar >= 1 + p.delta, up, torch.where(r_bar <= 1 - p.delta, down, torch.as_tensor(lam)))


@register_strategy
class SAMAR(Strategy):
    """SAMAR: d = (1−λ)g + λĝ with λ adapted from the smoothed gradient-norm ratio (reconstruction)."""

    name = "samar"
    reduces_to = Reduction({"adapt": False, "lambda0": 1.0}, to="sam")  # (1 − 1)·g + 1·ĝ = ĝ
    summary_doc = "SAMAR: adaptive weight of the SAM term (reconstruction)"
    Params = SAMARParams

    @classmethod
    def validate_params(cls, p, where):
        if not p.lambda_min <= p.lambda0 <= p.lambda_max:
            raise SpecError(f"{where}.lambda0: {p.lambda0} outside [lambda_min, lambda_max] = "
                            f"[{p.lambda_min}, {p.lambda_max}]; allowed: lambda_min <= lambda0 <= lambda_max")

    def setup(self, trainer):
        dev = trainer.device
        self.lam = torch.tensor(self.params.lambda0, dtype=torch.float64, device=dev)
        self.r = torch.tensor(1.0, dtype=torch.float64, device=dev)
        self.r_bar = torch.tensor(1.0, dtype=torch.float64, device=dev)
        self.prev_norm = None
        self.lam_used = self.lam

    def perturbation(self, ctx, g):
        norm = global_norm(g).double()
        if self.prev_norm is not None:
            self.r = norm / self.prev_norm
            self.r_bar = self.params.chi * self.r_bar + (1 - self.params.chi) * self.r
        self.prev_norm = norm
        return sam_direction(g, self.rho)

    def combine(self, ctx, g, g_hat):
        lam = self.lam
        self.lam_used = lam
        if self.params.adapt:
            self.lam = samar_lambda_update(lam, self.r_bar, self.params)
        lam = lam.to(g[0].dtype)
        return [(1 - lam) * gi + lam * gh for gi, gh in zip(g, g_hat)]

    def trace(self):
        return {"ratio_r": float(self.r), "ratio_r_bar": float(self.r_bar), "lambda": float(self.lam_used)}

    def summary(self):
        return {"rho_final": self.rho, "lambda_final": float(self.lam)}
