"""Fixed-ρ baselines: ERM, SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021)."""
from __future__ import annotations

from dataclasses import dataclass

from hpo_bench.perturbation import asam_direction, asam_scale, sam_direction
from hpo_bench.strategy import Reduction, Strategy, register_strategy


@register_strategy
class ERM(Strategy):
    """Plain SGD: θ_{t+1} = θ_t − η g (SAM with the second pass skipped; ρ is ignored)."""

    name = "erm"
    summary_doc = "empirical risk minimization (no perturbation)"
    reduces_to = Reduction(to="ae-sam", to_params={"force": "never"})

    def perturbation(self, ctx, g):
        return None

    def summary(self):
        return {"rho_final": float("nan")}


@register_strategy
class SAM(Strategy):
    """SAM: ĝ = ∇L(B; θ + ρ g/‖g‖), θ_{t+1} = θ_t − η ĝ (Foret et al. 2021, Eq. 2–3)."""

    name = "sam"
    summary_doc = "SAM at a fixed rho"
    reduces_to = Reduction(to="erm", rho=0.0)  # ε = 0·ε̂ = 0: ĝ = g bit for bit

    def perturbation(self, ctx, g):
        return sam_direction(g, self.rho)


@dataclass
class ASAMParams:
    xi: float = 0.01


@register_strategy
class ASAM(Strategy):
    """ASAM: ε = ρ T²g/‖Tg‖ with T = |θ| + ξ on weights (Kwon et al. 2021, Eq. 11; ξ = 0.01)."""

    name = "asam"
    summary_doc = "adaptive SAM at a fixed rho"
    reduces_to = Reduction(to="erm", rho=0.0)
    Params = ASAMParams

    def perturbation(self, ctx, g):
        scales = asam_scale(ctx.names, ctx.params, self.params.xi)
        return [self.rho * d for d in asam_direction(g, scales)]
