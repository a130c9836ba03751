"""The upper objective M of learning ρ, and LETS's diagonal-Hessian estimate of dM/dρ.

Shared by LETS (:mod:`searchers.lets`), the exact unrolled hypergradient (:mod:`hpo_bench.hypergrad`)
and the fidelity study (:mod:`hpo_bench.fidelity`), so all three optimize and compare the same M.
At θ_{t+1}, from the validation loss ℓ_vl and the training loss ℓ_tr (LETS paper Eq. 4, Table 6)::

    "sq_gap"  (default, the paper's)  M = ½(ℓ_vl − ℓ_tr)²,  g_a = ∇_θ M = (ℓ_vl − ℓ_tr)(ḡ_vl − ḡ_tr)
    "gap"                             M = ℓ_vl − ℓ_tr,      g_a = ḡ_vl − ḡ_tr
    "val_loss"                        M = ℓ_vl,             g_a = ḡ_vl

Validation batches come from the training set (``protocol = "paper"``, as the paper's §4.1 does:
"mini-batches of validation data are randomly sampled from the training set"; LETS's default) or
from the held-out split (``"clean"``, a labelled variant): :data:`PROTOCOL_SOURCE` names the
trainer's stream. The training side ℓ_tr is evaluated on B^tr_t, the batch step t has just trained
on (Algorithm 1, step 8), so under either protocol ℓ_tr is biased low against a fresh batch and the
gap ℓ_vl − ℓ_tr is biased high (see :mod:`searchers.lets`, "same-batch bias").

LETS's estimate (Algorithm 1 with Appendix A's chain rule; H = diag(ĝ²) stands in for the Hessian
at θ_t + ρ ε̂)::

    dM/dρ = −η_t g_aᵀ H d,   d = ε̂ (``gb = "appendix"``), or Algorithm 1 as printed (``"literal"``):
            ĝ/‖ĝ‖ for SAM (step 11), T²ḡ_tr/‖T ḡ_tr‖ with T = T_{θ_t} for ASAM (step 12)
"""
from __future__ import annotations

import torch

from hpo_bench.perturbation import asam_direction, sam_direction

METRICS = ("sq_gap", "gap", "val_loss")
PROTOCOL_SOURCE = {"clean": "val", "paper": "train"}


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r}; allowed: {', '.join(METRICS)}")


def upper_metric(metric: str, lv: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    """M from ℓ_vl and ℓ_tr, differentiably (the exact hypergradient differentiates through it)."""
    if metric == "sq_gap":
        return 0.5 * (lv - lt) ** 2
    if metric == "gap":
        return lv - lt
    return lv


def metric_and_grad(metric: str, lv: torch.Tensor, gv, lt: torch.Tensor | None, gt):
    """(M, g_a = ∇_θ M) from (ℓ_vl, ḡ_vl) and (ℓ_tr, ḡ_tr) at θ_{t+1}; M a float64 0-dim tensor."""
    if metric == "val_loss":
        return lv.detach().double(), list(gv)
    gap = (lv - lt).detach()
    diff = torch._foreach_sub(list(gv), list(gt))
    if metric == "gap":
        return gap.double(), diff
    if metric == "sq_gap":
        return 0.5 * gap.double() ** 2, list(torch._foreach_mul(diff, gap.to(diff[0].dtype)))
    check_metric(metric)


def lets_dM_drho(g_a, g_hat, direction, lr: float) -> torch.Tensor:
    """−η g_aᵀ H d with H = diag(ĝ²) (float64 0-dim tensor); ``direction`` d is the unit vector of g_b."""
    a, gh, d = (torch.cat([t.reshape(-1) for t in ts]).double() for ts in (g_a, g_hat, direction))
    return -lr * torch.dot(a * gh.square(), d)


def gb_direction(gb: str, kind: str, eps_hat, g_hat, g_tr_next, scales_t):
    """The unit vector d that H multiplies in g_b (see the module docstring)."""
    if gb == "appendix":
        return eps_hat
    if kind == "sam":
        return sam_direction(g_hat)  # ĝ/‖ĝ‖ (Algorithm 1, step 11)
    return asam_direction(g_tr_next, scales_t)  # T²ḡ_tr/‖Tḡ_tr‖ with T = T_{θ_t} (step 12)
