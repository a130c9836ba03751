"""Online ρ learning from EXACT unrolled hypergradients (hypergrad-sam, hypergrad-asam).

The same upper objective and ν-learner as LETS (:mod:`searchers.lets`: ρ = exp(ν), metric M, Adam
with lr ``beta``, its relative ε and exponential schedule, validation ``protocol`` — "paper" by
default, as LETS — and the divergence check), but the hypergradient is exact (METHODS.md §4)
instead of LETS's one-step diagonal approximation:

* training steps are plain SAM (resp. ASAM) steps at the current ρ — 2 grad evals;
* every U = ``every`` steps, after the base-optimizer step, at the current state θ_{t+1} (parameters,
  BN buffers, SGD momentum buffers), R = ``samples`` independent LOOKAHEAD unrolls, each of K =
  ``unroll`` SAM + SGD steps on K training batches drawn with ``ctx.val_batch('train')`` (an auxiliary
  stream, so the real training order is untouched) with the cosine learning rates of steps
  t+1 … t+K, and M at the unrolled θ_{t+1+K} on V = ``val_batches`` validation batches (``protocol``)
  evaluated as one batch of V·B samples (BN: batch statistics over all of them) and the last unrolled
  training batch; dM/dν of each unroll by :func:`hpo_bench.hypergrad.hypergrad_higher` (``higher``,
  create_graph on both gradient calls; ``impl = "func"`` the independent ``torch.func`` version,
  ``impl = "recompute"`` the one with graph memory flat in K); one Adam step on the mean of the R
  values. V > 1 and R > 1 lower the variance of the update (with K = 5 on MNIST-1D the sign of a
  single unroll is close to a coin flip: METHODS.md §4); they cost what they compute.

The same ν-update budget as LETS (``budget_match``, default true; our choice). LETS takes one Adam step
per training step, T in all, so ν can move at most ≈ β·T (the β·T rule, :mod:`searchers.lets`); this
strategy takes T/U. With ``budget_match`` its Adam learning rate is U·β, so U·β × T/U = β·T: at the
same ``beta`` both can move ν equally far, and a comparison at equal ``beta`` is not won or lost by
the number of updates. ``budget_match = false`` uses β per update (the earlier behaviour: at U = 10 it
could move ν a tenth as far, which is why it "barely moved ρ" in the reports of that version).

The unroll works on clones: the model, its BN buffers and the optimizer state are untouched, and the
next training step continues from θ_{t+1} as if nothing had happened. Cost per unroll 6K + m grad
evals (8K + m with ``impl = "recompute"``; m = V + 1, or V for ``metric = "val_loss"``; the reverse
pass is a double backward, charged 2 per gradient call: see :mod:`hpo_bench.hypergrad`), charged to
the run's ledger: on average 2 + R(6K + m)/U per step. Memory of an unroll grows O(K), except with
"recompute". Our construction (not from a paper): a greedy, truncated (K-step) hypergradient,
evaluated online.

Choosing β (an ablation protocol, not automated: a search varies ρ only). ``experiments/hypergrad-k.toml``
runs each K at a small β grid as separate methods; β is chosen per K on the best mean validation
accuracy (``best_val_acc`` of runs.parquet, never test), and the selection's cost is the sum of the
grad evals of that K's β methods (the report's cost table lists each).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hpo_bench.config import spec_field
import torch

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
                           doc="exact unroll through higher | torch.func | recompute (graph memory flat in K, 8K+m evals)")
    budget_match: bool = spec_field(True, doc="Adam lr = every * beta, so nu can move as far as LETS's per-step updates (beta*T)")
    samples: int = spec_field(1, lo=1, doc="R: independent unrolls per update, their dM/dnu averaged")
    val_batches: int = spec_field(1, lo=1, doc="V: validation batches M is evaluated on (one batch of V*B samples)")


class _Hypergrad(RhoLearningStrategy):
    kind: str = "sam"
    Params = HypergradParams

    def setup(self, trainer):
        self.trainer = trainer
        self.sgd = SGDConfig.from_optimizer(trainer.optimizer)
        scale = self.params.every if self.params.budget_match else 1
        self.learner = RhoLearner(self.rho0, self.params, self.name, lr_scale=scale)
        self.rho = self.rho_used = self.learner.rho
        self.metric_M = self.dM_dnu = math.nan
        self.n_unrolls, self.updated = 0, False

    def perturbation(self, ctx, g):
        self.rho = self.rho_used = self.learner.rho
        if self.kind == "sam":
            return sam_direction(g, self.rho)
        return [self.rho * d for d in asam_direction(g, asam_scale(ctx.names, ctx.params, self.params.xi))]

    def after_update(self, ctx):
        p, tr = self.params, self.trainer
        self.updated = False
        if (ctx.step + 1) % p.every != 0:
            return
        total, source = tr.total_steps, PROTOCOL_SOURCE[p.protocol]
        lrs = [lr_at(min(ctx.step + 1 + k, total), total, tr.cfg.lr, tr.cfg.schedule) for k in range(p.unroll)]
        state = capture_state(ctx.model, tr.optimizer)
        results = []
        for _ in range(p.samples):
            batches = [ctx.val_batch("train") for _ in range(p.unroll)]
            xs, ys = zip(*(ctx.val_batch(source) for _ in range(p.val_batches)))
            val = (xs[0], ys[0]) if p.val_batches == 1 else (torch.cat(xs), torch.cat(ys))
            results.append(IMPLS[p.impl](ctx.model, state, batches, val, lrs, nu=self.learner.nu, kind=self.kind,
                                         xi=p.xi, metric=p.metric, sgd=self.sgd, ledger=ctx.ledger))
        self.metric_M = math.fsum(r.M for r in results) / len(results)
        self.dM_dnu = math.fsum(r.dM_dnu for r in results) / len(results)
        self.n_unrolls += p.samples
        self.learner.update(self.dM_dnu, ctx.step, ctx.epoch)
        self.rho = self.learner.rho
        self.updated = True

    def trace(self):
        """ρ used by the step; M and dM/dν only at a step that updated ν (NaN at the U − 1 steps between)."""
        if not self.updated:
            return {"rho": self.rho_used, "metric_M": math.nan, "dM_dnu": math.nan}
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
