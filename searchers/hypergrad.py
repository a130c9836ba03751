"""Online ρ learning from EXACT unrolled hypergradients (hypergrad-sam, hypergrad-asam).

The same upper objective and ν-learner as LETS (:mod:`searchers.lets`: ρ = exp(ν), metric M, Adam
with lr ``beta`` and its exponential schedule, validation ``protocol``, divergence check), but the
hypergradient is exact (METHODS.md §4) instead of LETS's one-step diagonal approximation:

* training steps are plain SAM (resp. ASAM) steps at the current ρ — 2 grad evals;
* every U = ``every`` steps, after the base-optimizer step, at the current state θ_{t+1} (parameters,
  BN buffers, SGD momentum buffers), one LOOKAHEAD unroll of K = ``unroll`` SAM + SGD steps on K
  training batches drawn with ``ctx.val_batch('train')`` (an auxiliary stream, so the real training
  order is untouched) with the cosine learning rates of steps t+1 … t+K, and M at the unrolled
  θ_{t+1+K} on one validation batch (``protocol``) and the last unrolled training batch;
  dM/dν by :func:`hpo_bench.hypergrad.hypergrad_higher` (``higher``, create_graph on both gradient
  calls; ``impl = "func"`` the independent ``torch.func`` version, ``impl = "recompute"`` the one
  with graph memory flat in K); one Adam step on ν.

The unroll works on clones: the model, its BN buffers and the optimizer state are untouched, and the
next training step continues from θ_{t+1} as if nothing had happened. Cost per unroll 4K + 2 grad
evals (6K + 2 with ``impl = "recompute"``; see :mod:`hpo_bench.hypergrad`), charged to the run's
ledger: on average 2 + (4K + 2)/U per step. Memory of the unroll grows O(K), except with "recompute". Our construction (not from a paper): a greedy, truncated
(K-step) hypergradient, evaluated online.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hpo_bench.config import spec_field
from hpo_bench.hypergrad import IMPLS, capture_state
from hpo_bench.perturbation import asam_direction, asam_scale, sam_direction
from hpo_bench.sgd import SGDConfig
from hpo_bench.strategy import Reduction, register_strategy
from hpo_bench.trainer import lr_at
from hpo_bench.upper import PROTOCOL_SOURCE
from searchers.lets import RhoLearner, RhoLearnerParams, RhoLearningStrategy


@dataclass
class HypergradParams(RhoLearnerParams):
    unroll: int = spec_field(5, lo=1, doc="K: SAM steps unrolled per exact hypergradient (memory O(K))")
    every: int = spec_field(10, lo=1, doc="U: one unroll and one Adam step on nu every U training steps")
    impl: str = spec_field("higher", choices=list(IMPLS),
                           doc="exact unroll through higher | torch.func | recompute (graph memory flat in K, 6K+2 evals)")


class _Hypergrad(RhoLearningStrategy):
    kind: str = "sam"
    Params = HypergradParams

    def setup(self, trainer):
        self.trainer = trainer
        self.sgd = SGDConfig.from_optimizer(trainer.optimizer)
        self.learner = RhoLearner(self.rho0, self.params, self.name)
        self.rho = self.rho_used = self.learner.rho
        self.metric_M = self.dM_dnu = math.nan
        self.n_unrolls = 0

    def perturbation(self, ctx, g):
        self.rho = self.rho_used = self.learner.rho
        if self.kind == "sam":
            return sam_direction(g, self.rho)
        return [self.rho * d for d in asam_direction(g, asam_scale(ctx.names, ctx.params, self.params.xi))]

    def after_update(self, ctx):
        p, tr = self.params, self.trainer
        if (ctx.step + 1) % p.every != 0:
            return
        batches = [ctx.val_batch("train") for _ in range(p.unroll)]
        val = ctx.val_batch(PROTOCOL_SOURCE[p.protocol])
        total = tr.total_steps
        lrs = [lr_at(min(ctx.step + 1 + k, total), total, tr.cfg.lr, tr.cfg.schedule) for k in range(p.unroll)]
        state = capture_state(ctx.model, tr.optimizer)
        res = IMPLS[p.impl](ctx.model, state, batches, val, lrs, nu=self.learner.nu, kind=self.kind,
                               xi=p.xi, metric=p.metric, sgd=self.sgd, ledger=ctx.ledger)
        self.metric_M, self.dM_dnu = res.M, res.dM_dnu
        self.n_unrolls += 1
        self.learner.update(res.dM_dnu, ctx.step, ctx.epoch)
        self.rho = self.learner.rho

    def trace(self):
        return {"rho": self.rho_used, "metric_M": self.metric_M, "dM_dnu": self.dM_dnu}

    def summary(self):
        return {"rho_final": self.learner.rho if hasattr(self, "learner") else self.rho,
                "n_unrolls": float(getattr(self, "n_unrolls", 0))}


@register_strategy
class HypergradSAM(_Hypergrad):
    """SAM with ρ = exp(ν) learned online from exact K-step unrolled hypergradients (``higher``)."""

    name = "hypergrad-sam"
    reduces_to = Reduction({"beta": 0.0, "every": 3, "unroll": 2}, to="sam")
    summary_doc = "SAM, rho learned from exact K-step unrolled hypergradients"
    kind = "sam"


@register_strategy
class HypergradASAM(_Hypergrad):
    """ASAM with ρ = exp(ν) learned online from exact K-step unrolled hypergradients (``higher``)."""

    name = "hypergrad-asam"
    reduces_to = Reduction({"beta": 0.0, "every": 3, "unroll": 2}, to="asam")
    summary_doc = "ASAM, rho learned from exact K-step unrolled hypergradients"
    kind = "asam"
