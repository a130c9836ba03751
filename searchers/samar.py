"""SAMAR: SAM with an adaptive regularization weight λ (Zou, Deng & Sun 2024) — RECONSTRUCTION.

The paper text is not available here; this follows its summary and METHODS.md §6. Update direction

    d_k = (1 − λ_k) g(θ_k) + λ_k ∇L(θ_k + ε_k),   ε_k = ρ g/‖g‖

(λ ≡ 1 is SAM, λ ≡ 0 is ERM; both gradients are the ones SAM computes, so the cost is SAM's).
The summary's sharpness signal is the ratio of successive stochastic gradient norms,
r_k ≃ ‖g(θ_k)‖/‖g(θ_{k−1})‖: sharper (r up) → raise λ, flatter (r down) → lower it. With
s_k = ‖g(θ_k)‖, the λ rule (``ratio``):

``"window"`` (default; our reconstruction). The steps are cut into windows of W = ``window`` steps
(0: one epoch). At the end of window j ≥ 1, with x_k = log s_k, x̄_j its mean over window j and v_j
its sample variance there,

    log r̄_j = x̄_j − x̄_{j−1}                       (log of the ratio of the windows' geometric-mean norms)
    t_j     = log r̄_j / √(v_j/n_j + v_{j−1}/n_{j−1})  (Welch's statistic of the difference)
    λ ← min(λ_max, γλ)   if r̄_j ≥ 1 + δ and t_j ≥ z    (significantly sharper)
    λ ← max(λ_min, λ/γ)  if r̄_j ≤ 1 − δ and t_j ≤ −z   (significantly flatter)
    else λ is kept; the new λ applies from the next step on.

Why (the reasoning behind this reconstruction): the per-step ratio of two noisy norms is useless as
it stands. On mnist1d-main the successive ratios ‖g_k‖/‖g_{k−1}‖ have mean 1.097 but median 1.0009
(coefficient of variation of ‖g‖ ≈ 0.33): for i.i.d. norms E[s_k/s_{k−1}] = E[s]·E[1/s] > 1 (Jensen),
so the earlier rule (``"ratio_ema"``: an EMA of r_k against 1 ± δ) saw "sharper" at almost every
step and pinned λ at λ_max in every seed. Taking logs removes the bias (E[log s_k − log s_{k−1}] = 0
for i.i.d. norms), but a per-step log ratio has standard deviation ≈ √2·0.33 ≈ 0.47, and a rule that
moves λ on it still performs a random walk: an EMA of log r_k (χ = 0.9) against ±δ moved λ at about
half of the steps and left it at a bound in 1.5–5.8 % (lognormal norms) and 5–14 % (gamma norms) of
2000 i.i.d. steps (10 seeds each), where the window rule below moved it 0–6 times and never to a
bound. Comparing successive windows averages
the noise (per window of n = 36 steps, the standard deviation of log r̄ is ≈ √2·0.33/6 ≈ 0.08, still
larger than δ = 0.02), and the t threshold makes a chance move rare: two-sided ≈ 4.6 % of window
pairs at z = 2, about 2 moves in a 40-epoch run, symmetric, so λ stays off its bounds
(``tests/test_samar.py``: i.i.d. lognormal and gamma norms with CV 0.33 over 2000 steps), while a
genuine trend of sharpness gives |t| ≫ z in every window and moves λ by γ per window. δ keeps the
summary's dead band as a minimum effect size: a 2 % change of the typical norm between successive
windows. W = one epoch makes the windows see the same data. Defaults (all ours): λ₀ = 1 (start as
SAM), [λ_min, λ_max] = [0.5, 2], γ = 1.1 (λ crosses its range in ≈ 7 windows of one-sided evidence),
δ = 0.02, z = 2, W = one epoch.

``"ratio_ema"`` (the earlier rule, kept to reproduce earlier reports; degenerate, see above):
r̄_k = χ r̄_{k−1} + (1−χ) r_k with r̄_0 = 1, compared with 1 ± δ at every step.

``adapt = false`` keeps λ = λ₀: the fixed-λ control (λ₀ = 1 is SAM bit for bit). State stays on the
device (no host sync per step).
"""
from __future__ import annotations

import math
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
    delta: float = spec_field(0.02, lo=0.0, hi=1.0, hi_open=True, doc="dead band around r̄ = 1 (minimum effect size)")
    ratio: str = spec_field("window", choices=["window", "ratio_ema"],
                            doc="window: log-ratio of successive windows' mean log-norms with a t test; ratio_ema: the earlier (biased) EMA of raw ratios")
    window: int = spec_field(0, lo=0, doc="W: steps per window (0 = one epoch); >= 2")
    z: float = spec_field(2.0, lo=0.0, doc="|t| of the window difference needed to move λ")
    chi: float = spec_field(0.9, lo=0.0, hi=1.0, hi_open=True, doc="smoothing of the ratio (ratio_ema only)")
    adapt: bool = spec_field(True, doc="false keeps λ = λ₀ (λ₀ = 1 is SAM)")


def samar_lambda_update(lam, r_bar, p: SAMARParams, t=None):
    """λ_{k+1} from λ_k, the ratio r̄ and (window rule) its t statistic; floats or tensors.

    Raise by γ (capped at λ_max) if r̄ ≥ 1+δ and t ≥ z, lower by γ (floored at λ_min) if r̄ ≤ 1−δ and
    t ≤ −z, else keep; ``t = None`` applies the δ band alone (the ``ratio_ema`` rule).
    """
    lam = torch.as_tensor(lam)
    up = torch.clamp(lam * p.gamma, max=p.lambda_max)
    down = torch.clamp(lam / p.gamma, min=p.lambda_min)
    r_bar = torch.as_tensor(r_bar)
    rise, fall = r_bar >= 1 + p.delta, r_bar <= 1 - p.delta
    if t is not None:
        t = torch.as_tensor(t)
        rise, fall = rise & (t >= p.z), fall & (t <= -p.z)
    return torch.where(rise, up, torch.where(fall, down, lam))


class WindowRatio:
    """The ``"window"`` rule's statistics on a stream of gradient norms (see the module docstring).

    :meth:`observe` takes s_k (a 0-dim tensor, kept on its device) and returns True when a window
    pair was just compared; ``r_bar`` and ``t`` then hold r̄_j and t_j.
    """

    def __init__(self, window: int, like: torch.Tensor):
        self.W = window
        zero = torch.zeros((), dtype=torch.float64, device=like.device)
        self.n = 0
        self.sum = self.sumsq = self.shift = zero
        self.prev = None  # (mean, variance / n) of the last complete window
        self.r_bar, self.t = zero + 1.0, zero + math.nan

    def observe(self, s: torch.Tensor) -> bool:
        x = torch.log(s.double())
        if self.n == 0:
            self.shift = x  # sums of x − shift: no cancellation in the variance
        d = x - self.shift
        self.sum, self.sumsq, self.n = self.sum + d, self.sumsq + d * d, self.n + 1
        if self.n < self.W:
            return False
        mean = self.shift + self.sum / self.n
        var_n = (self.sumsq - self.sum * self.sum / self.n) / (self.n - 1) / self.n
        compared = self.prev is not None
        if compared:
            log_r = mean - self.prev[0]
            self.r_bar = torch.exp(log_r)
            self.t = log_r / torch.sqrt(var_n + self.prev[1])
        self.prev, self.n = (mean, var_n), 0
        self.sum = self.sumsq = torch.zeros_like(self.sum)
        return compared


@register_strategy
class SAMAR(Strategy):
    """SAMAR: d = (1−λ)g + λĝ with λ adapted from the ratio of successive sharpness (reconstruction)."""

    name = "samar"
    reduces_to = Reduction({"adapt": False, "lambda0": 1.0}, to="sam")  # (1 − 1)·g + 1·ĝ = ĝ
    summary_doc = "SAMAR: adaptive weight of the SAM term (reconstruction)"
    Params = SAMARParams

    @classmethod
    def validate_params(cls, p, where):
        if not p.lambda_min <= p.lambda0 <= p.lambda_max:
            raise SpecError(f"{where}.lambda0: {p.lambda0} outside [lambda_min, lambda_max] = "
                            f"[{p.lambda_min}, {p.lambda_max}]; allowed: lambda_min <= lambda0 <= lambda_max")
        if p.window == 1:
            raise SpecError(f"{where}.window: 1; allowed: 0 (one epoch) or >= 2 (a window needs a variance)")

    def setup(self, trainer):
        dev = trainer.device
        self.lam = torch.tensor(self.params.lambda0, dtype=torch.float64, device=dev)
        self.r = torch.tensor(1.0, dtype=torch.float64, device=dev)
        self.r_bar = torch.tensor(1.0, dtype=torch.float64, device=dev)
        self.t = torch.tensor(math.nan, dtype=torch.float64, device=dev)
        self.window = max(2, self.params.window or trainer.steps_per_epoch)
        self.stats = None
        self.compared = False
        self.prev_norm = None
        self.lam_used = self.lam

    def perturbation(self, ctx, g):
        norm = global_norm(g).double()
        if self.prev_norm is not None:
            self.r = norm / self.prev_norm
            if self.params.ratio == "ratio_ema":
                self.r_bar = self.params.chi * self.r_bar + (1 - self.params.chi) * self.r
        self.prev_norm = norm
        if self.params.ratio == "window":
            if self.stats is None:
                self.stats = WindowRatio(self.window, norm)
            self.compared = self.stats.observe(norm)
            self.r_bar, self.t = self.stats.r_bar, self.stats.t
        return sam_direction(g, self.rho)

    def combine(self, ctx, g, g_hat):
        lam = self.lam
        self.lam_used = lam
        if self.params.adapt:
            if self.params.ratio == "ratio_ema":
                self.lam = samar_lambda_update(lam, self.r_bar, self.params)
            elif self.compared:
                self.lam = samar_lambda_update(lam, self.r_bar, self.params, self.t)
        lam = lam.to(g[0].dtype)
        return [(1 - lam) * gi + lam * gh for gi, gh in zip(g, g_hat)]

    def trace(self):
        t = float(self.t)
        return {"ratio_r": float(self.r), "ratio_r_bar": float(self.r_bar), "ratio_t": t if math.isfinite(t) else math.nan,
                "lambda": float(self.lam_used)}

    def summary(self):
        return {"rho_final": self.rho, "lambda_final": float(self.lam)}
