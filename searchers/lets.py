"""LETS: learning the perturbation radius ρ of SAM / ASAM (Wang, Jiang, Fu and Zhang, 2024; arXiv 2408.08222).

Algorithm 1 of the paper, per iteration t (METHODS.md §3), on the common trainer::

    g      = ∇L(B^tr_t; θ_t)                                   (trainer, 1 grad eval)
    ε̂      = g/‖g‖ (LETS-SAM)  or  T²g/‖Tg‖, T = |θ_t| + ξ (LETS-ASAM)
    ĝ      = ∇L(B^tr_t; θ_t + ρ_t ε̂)                          (trainer, 1 grad eval)
    θ_{t+1} = base-optimizer step with ĝ                        (SGD, momentum, weight decay)
    at θ_{t+1}:  ℓ_vl, ḡ_vl on B^vl_t  and  ℓ_tr, ḡ_tr on B^tr_t (the SAME training batch; 2 grad evals)
    M, g_a = ∇_θ M (``metric``):
        "sq_gap"  (default, the paper's)  M = ½(ℓ_vl − ℓ_tr)²,  g_a = (ℓ_vl − ℓ_tr)(ḡ_vl − ḡ_tr)
        "gap"                             M = ℓ_vl − ℓ_tr,      g_a = ḡ_vl − ḡ_tr
        "val_loss"                        M = ℓ_vl,             g_a = ḡ_vl
    H      = diag(ĝ²)                 (diagonal empirical-Fisher stand-in for ∇²L at θ_t + ρ_t ε̂)
    g_b    (``gb``):
        "appendix" (default)  g_b = H ε̂, ε̂ the unit direction actually used (SAM or ASAM) —
                              Appendix A's chain rule, dθ_{t+1}/dρ = −η ∇²L(θ_t + ρε̂) ε̂
        "literal"             Algorithm 1 as printed: step 11 (SAM) g_b = H ĝ/‖ĝ‖;
                              step 12 (ASAM) g_b = H T²ḡ_tr/‖T ḡ_tr‖ with T = T_{θ_t} and ḡ_tr at θ_{t+1}
    dM/dρ  = −η_t g_aᵀ g_b            (η_t = the base lr of step t; momentum and weight decay are
                                       ignored, as in Appendix A: θ_{t+1} = θ_t − η ĝ)
    ρ = exp(ν),  dM/dν = ρ dM/dρ,  one Adam step on ν (β₁ 0.9, β₂ 0.999, lr ``beta``).

Choices and reconstructions (labelled as such):

* Step 13 of Algorithm 1 is garbled ("g_ρ = −g_aᵀ g_b g_ρ") and step 14 is plain SGD on ρ while
  Table 10 says Adam with an exponential schedule; we follow Table 10 and METHODS.md §3: Adam on
  ν = log ρ (natural log; keeps ρ > 0, §4.1: "ρ = exp(ν)"), bias-corrected, written out explicitly
  in float64 (deterministic).
* Adam learning rate: ``beta`` (Table 10: 1e-4) times ``gamma``^k with k the epoch index
  (``decay = "epoch"``, default) or the step index (``decay = "step"``). The paper names an
  "Exponential" schedule without a rate; our default ``gamma = 1.0`` (no decay) leaves ``beta`` the
  only knob — set e.g. ``gamma = 0.97`` for a per-epoch exponential decay. ``beta = 0`` freezes ν.
* Adam's ε (``adam_eps_mode``; a **reconstruction** choice, the paper gives no ε for ρ's Adam).
  ``"relative"`` (default): ν ← ν − lr m̂/(√v̂ (1 + ε)), i.e. ε = ``adam_eps``·√v̂ scales with the
  hypergradient (no step while v̂ = 0). ``"absolute"`` (the earlier behaviour, and torch.optim.Adam's):
  ν ← ν − lr m̂/(√v̂ + ε) with ε = ``adam_eps`` = 1e-8. Why: Adam's step is meant to be invariant to the
  scale of its gradient, and only an absolute ε breaks that, once |dM/dν| ≲ ε. LETS's dM/dν =
  −η_t ρ g_aᵀ diag(ĝ²) ε̂ has no natural unit: it shrinks with η_t (cosine → 0), ρ, ‖ĝ‖² and the gap;
  on mnist1d-main (5 seeds) 23–43 % of |dM/dν| fell below 1e-8 late in training, so the absolute ε
  silently became an extra, data-dependent decay of ν's step. The relative ε keeps ε's role (a
  guard, now relative: 1e-8 of the running RMS), makes ν's trajectory exactly invariant to a
  rescaling of every hypergradient, and, unlike feeding sign(dM/dν), keeps the magnitudes relative
  to their running RMS.
* How far ν can move (the β·T rule). With Adam every step moves ν by |Δν_t| = lr_t |m̂_t|/√v̂_t,
  which is ≤ lr_t when the hypergradient keeps its sign and scale, and in general ≤ lr_t
  (1 − β₁)/√(1 − β₂) ≈ 3.16 lr_t (Kingma & Ba 2015, §2.1). Over T updates, |ν_T − ν_0| ≲ Σ_t lr_t =
  β·T without decay (β·Σ_k γ^k·steps-per-epoch with it), so ρ_T/ρ_0 ∈ [e^{−βT}, e^{βT}] in the typical
  case, and only a hypergradient of constant sign reaches the ends. Pick β so that β·T spans the ρ range
  to be searched: Table 10's β = 1e-4 over mnist1d-main's T = 1440 steps gives β·T = 0.14 (ρ within
  ×/÷ 1.15 of ρ₀: it cannot move); β = 0.01 gives 14.4 (ample); the paper's ResNet-18 setup
  (200 epochs × 391 steps) gives β·T ≈ 7.8 at 1e-4.
* Validation batches (``protocol``): "paper" (default) draws B^vl from the training set, as the
  paper does for every experiment (§4.1: "mini-batches of validation data are randomly sampled
  from the training set"); "clean" draws it from the held-out split (a labelled variant). Either way
  from a generator independent of the training order, so the training batches are the SAM run's.
* Same-batch bias (a property of Algorithm 1, kept as published). Write Δ = ℓ_vl − ℓ_tr; then
  dM/dρ = −η Δ ḡ_vlᵀ H ε̂ (validation term) + η Δ ḡ_trᵀ H ε̂ (train term), and step 8 evaluates ḡ_tr,
  ℓ_tr on B^tr_t, the batch the step has just trained on: ḡ_tr is still aligned with ĝ and ε̂, and
  ℓ_tr is low, so Δ > 0 and the train term is positive. Measured on mnist1d-main (5 seeds): the train
  term is positive in 98 % of steps and 3.4× larger than the same term on a fresh training batch;
  with the clean protocol the squared-gap hypergradient pushes ρ down in ~78 % of steps, whatever ρ₀
  is, consistent with the falling ρ of LETS-SAM in the reports. ``reuse_next_grad`` below takes
  the train side on the next, fresh batch, which removes this bias (its ρ rose instead).
* ``reuse_next_grad`` (our 3-pass variant, not in the paper): ℓ_tr and ḡ_tr at θ_{t+1} are taken on
  the NEXT training batch B^tr_{t+1} — its first-pass gradient, which the trainer computes anyway —
  so step t's ρ update is applied at the start of step t+1 (before its perturbation) and the last
  step's update is dropped. 3 grad evals per step instead of 4.
* Cost: 4 grad evals per step (2 SAM + 2 at θ_{t+1}). With ``metric = "val_loss"`` and a g_b that
  does not need ḡ_tr (everything but literal-ASAM) the training pass at θ_{t+1} is skipped: 3. No
  pass is differentiated twice (no ``create_graph``): each is one grad eval.
* The extra passes freeze BN running statistics, ρ stays the float ρ₀ until ν first moves (exp(log ρ₀)
  may differ from ρ₀ in the last bit), so ``beta = 0`` reproduces SAM/ASAM at ρ₀ bit for bit on CPU.
* ν non-finite, or exp(ν) overflowing to inf / underflowing to 0, raises :class:`Diverged`
  (the run is recorded with status 'diverged').

:class:`RhoLearner` (ν, Adam, schedule, divergence check) is shared with the exact-hypergradient
strategy in :mod:`searchers.hypergrad`; M, g_a and the estimate −η g_aᵀ H d live in :mod:`hpo_bench.upper`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hpo_bench.config import spec_field
from hpo_bench.perturbation import (
    asam_direction,
    asam_scale,
    global_norm,
    sam_direction,
)
from hpo_bench.strategy import Diverged, Reduction, Strategy, register_strategy
from hpo_bench.upper import (
    METRICS,
    PROTOCOL_SOURCE,
    gb_direction,
    lets_dM_drho,
    metric_and_grad,
)


# ----------------------------------------------------------------------------- shared pieces
@dataclass
class RhoLearnerParams:
    """Hyperparameters of learning ν = log ρ with Adam (shared by LETS and the exact hypergradient)."""

    beta: float = spec_field(1e-4, lo=0.0, doc="Adam learning rate on nu = log rho (Table 10: 1e-4; 0 freezes rho)")
    gamma: float = spec_field(1.0, lo=0.0, lo_open=True, hi=1.0, doc="exponential decay factor of beta per `decay` unit (1 = none)")
    decay: str = spec_field("epoch", choices=["epoch", "step"], doc="beta_k = beta * gamma**k, k = epoch or step index")
    beta1: float = spec_field(0.9, lo=0.0, hi=1.0, hi_open=True, doc="Adam beta1")
    beta2: float = spec_field(0.999, lo=0.0, hi=1.0, hi_open=True, doc="Adam beta2")
    adam_eps: float = spec_field(1e-8, lo=0.0, lo_open=True, doc="Adam epsilon (relative to sqrt(v_hat) or absolute: adam_eps_mode)")
    adam_eps_mode: str = spec_field("relative", choices=["relative", "absolute"],
                                    doc="relative: nu -= lr*m/(sqrt(v)*(1+eps)), scale-free; absolute: nu -= lr*m/(sqrt(v)+eps)")
    metric: str = spec_field("sq_gap", choices=list(METRICS), doc="upper objective M (Table 6 ablation)")
    protocol: str = spec_field("paper", choices=list(PROTOCOL_SOURCE), doc="validation batches: paper = training set (LETS §4.1), clean = held-out split")
    xi: float = spec_field(0.01, lo=0.0, doc="ASAM's xi in T = |theta| + xi (ASAM variants only)")


class RhoLearner:
    """ν = log ρ updated by bias-corrected Adam on dM/dν; ρ kept as a Python float.

    ``rho`` is exactly ρ₀ until ν first changes (so a frozen learner perturbs with ρ₀ bit for bit).
    ``lr_scale`` multiplies the learning rate (the exact hypergradient's budget matching: one update
    every U steps at U·β moves ν as far as LETS's U updates at β).
    """

    def __init__(self, rho0: float, p: RhoLearnerParams, who: str = "rho", lr_scale: float = 1.0):
        self.p, self.who, self.lr_scale = p, who, float(lr_scale)
        self.rho = float(rho0)
        self.nu = math.log(self.rho)
        self.m = self.v = 0.0
        self.k = 0  # Adam updates taken

    def lr(self, step: int, epoch: int) -> float:
        return self.lr_scale * self.p.beta * self.p.gamma ** (epoch if self.p.decay == "epoch" else step)

    def update(self, dM_dnu: float, step: int, epoch: int) -> None:
        """One Adam step ν ← ν − lr m̂/(√v̂ (1 + ε)) (relative ε) or ν − lr m̂/(√v̂ + ε) (absolute);
        raises Diverged when ν or ρ stops being usable."""
        lr = self.lr(step, epoch)
        if lr == 0.0:  # frozen: ρ stays exactly what it is
            return
        if not math.isfinite(dM_dnu):
            raise Diverged(f"{self.who}: non-finite hypergradient dM/dnu = {dM_dnu} at step {step}")
        p = self.p
        self.k += 1
        self.m = p.beta1 * self.m + (1 - p.beta1) * dM_dnu
        self.v = p.beta2 * self.v + (1 - p.beta2) * dM_dnu * dM_dnu
        m_hat = self.m / (1 - p.beta1 ** self.k)
        v_hat = self.v / (1 - p.beta2 ** self.k)
        if p.adam_eps_mode == "relative":
            denom = math.sqrt(v_hat) * (1.0 + p.adam_eps)
            step_nu = lr * m_hat / denom if denom > 0.0 else 0.0  # v̂ = 0: every dM/dν so far was 0
        else:
            step_nu = lr * m_hat / (math.sqrt(v_hat) + p.adam_eps)
        nu = self.nu - step_nu
        if not math.isfinite(nu):
            raise Diverged(f"{self.who}: nu = log(rho) became non-finite ({nu}) at step {step}")
        if nu != self.nu:
            try:
                rho = math.exp(nu)
            except OverflowError:
                raise Diverged(f"{self.who}: rho = exp({nu:.6g}) overflows at step {step}") from None
            if rho == 0.0 or not math.isfinite(rho):
                raise Diverged(f"{self.who}: rho = exp({nu:.6g}) = {rho} at step {step}")
            self.nu, self.rho = nu, rho


# ----------------------------------------------------------------------------- the strategies
@dataclass
class LETSParams(RhoLearnerParams):
    gb: str = spec_field("appendix", choices=["appendix", "literal"],
                         doc="g_b = H eps_hat (Appendix A) or Algorithm 1 steps 11/12 as printed")
    reuse_next_grad: bool = spec_field(False, doc="3-pass variant: the next step's first gradient is the train side")


class RhoLearningStrategy(Strategy):
    """A strategy that learns ρ from validation batches drawn per ``params.protocol`` (LETS, hypergradient)."""

    @classmethod
    def uses_validation_split(cls, params) -> bool:
        return PROTOCOL_SOURCE[params.protocol] == "val"


class _LETS(RhoLearningStrategy):
    """LETS-SAM / LETS-ASAM (Algorithm 1; see the module docstring for every choice)."""

    kind: str = "sam"
    Params = LETSParams

    def setup(self, trainer):
        self.learner = RhoLearner(self.rho0, self.params, self.name)
        self.rho = self.learner.rho
        self.rho_used = self.rho
        self.metric_M = self.dM_dnu = math.nan
        self.need_train_pass = self.params.metric != "val_loss" or (self.params.gb == "literal" and self.kind == "asam")
        self.pending = None

    def perturbation(self, ctx, g):
        if self.pending is not None:  # reuse variant: finish step t-1's update with (L, g) at θ_t
            self._update_rho(ctx, *self.pending, ctx.first_loss, g)
            self.pending = None
        self.rho = self.rho_used = self.learner.rho
        if self.kind == "sam":
            norm = global_norm(g)
            self.eps_hat = sam_direction(g, 1.0, norm)
            self.scales = None
            return sam_direction(g, self.rho, norm)  # the same ops as the plain SAM strategy
        self.scales = asam_scale(ctx.names, ctx.params, self.params.xi)  # T at θ_t
        self.eps_hat = asam_direction(g, self.scales)
        return [self.rho * d for d in self.eps_hat]  # the same ops as the plain ASAM strategy

    def combine(self, ctx, g, g_hat):
        self.g_hat = g_hat
        return g_hat

    def after_update(self, ctx):
        p = self.params
        xv, yv = ctx.val_batch(PROTOCOL_SOURCE[p.protocol])
        lv, gv = ctx.loss_grad(xv, yv)
        saved = (lv, gv, self.g_hat, self.eps_hat, self.scales, self.rho_used, ctx.lr, ctx.step, ctx.epoch)
        self.g_hat = self.eps_hat = self.scales = None
        if p.reuse_next_grad and self.need_train_pass:
            self.pending = saved  # ℓ_tr, ḡ_tr at θ_{t+1} come from the next step's first pass
            return
        lt, gt = ctx.loss_grad() if self.need_train_pass else (None, None)
        self._update_rho(ctx, *saved, lt, gt)

    def _update_rho(self, ctx, lv, gv, g_hat, eps_hat, scales, rho_used, lr, step, epoch, lt, gt):
        p = self.params
        M, g_a = metric_and_grad(p.metric, lv, gv, lt, gt)
        d = gb_direction(p.gb, self.kind, eps_hat, g_hat, gt, scales)
        dM_dnu = float(rho_used * lets_dM_drho(g_a, g_hat, d, lr))
        self.metric_M, self.dM_dnu = float(M), dM_dnu
        self.learner.update(dM_dnu, step, epoch)
        self.rho = self.learner.rho

    def trace(self):
        return {"rho": self.rho_used, "metric_M": self.metric_M, "dM_dnu": self.dM_dnu}

    def summary(self):
        return {"rho_final": self.learner.rho if hasattr(self, "learner") else self.rho}


@register_strategy
class LETSSAM(_LETS):
    """LETS-SAM: SAM whose ρ = exp(ν) is learned online by Adam on the LETS hypergradient (Algorithm 1)."""

    name = "lets-sam"
    reduces_to = Reduction({"beta": 0.0}, to="sam")  # ν frozen: ρ stays ρ₀ bit for bit
    summary_doc = "LETS-SAM: rho learned from a validation-gap hypergradient (Algorithm 1)"
    kind = "sam"


@register_strategy
class LETSASAM(_LETS):
    """LETS-ASAM: ASAM (T = |θ| + ξ) whose ρ = exp(ν) is learned online (Algorithm 1)."""

    name = "lets-asam"
    reduces_to = Reduction({"beta": 0.0}, to="asam")
    summary_doc = "LETS-ASAM: adaptive-SAM radius learned online (Algorithm 1)"
    kind = "asam"


__all__ = ["LETSParams", "RhoLearner", "RhoLearnerParams", "RhoLearningStrategy"]
