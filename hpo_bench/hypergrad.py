"""Exact hypergradients of the LETS upper objective w.r.t. ν = log ρ through K unrolled SAM steps.

Starting from a given state S_t = (θ_t, BN buffers, SGD momentum buffers b_t) and K training batches
B_0 … B_{K−1} with per-step learning rates η_0 … η_{K−1}, with ρ = exp(ν) the unroll is, for k < K::

    g_k   = ∇_θ L(B_k; θ_k)                                 (BN in train mode; running stats updated)
    ε̂_k   = g_k/(‖g_k‖ + 1e-12)                 (SAM)    or  T²g_k/(‖T g_k‖ + 1e-12), T = |θ_k| + ξ on
                                                             "weight" tensors, 1 elsewhere (ASAM)
    ĝ_k   = ∇L(B_k; θ_k + ρ ε̂_k)                            (running stats frozen: BN momentum 0)
    d_k   = ĝ_k + λ θ_k                                     (weight decay, as torch.optim.SGD)
    b_{k+1} = d_k if b_k is None else μ b_k + (1 − τ) d_k   (momentum μ, dampening τ)
    θ_{k+1} = θ_k − η_k (d_k + μ b_{k+1} if nesterov else b_{k+1})

and the upper objective is the LETS metric at θ_K on the validation batch B^vl and the LAST training
batch B_{K−1} (LETS's convention: the batch of the step that produced θ_K; BN train mode, stats frozen):

    M = ½(ℓ_vl − ℓ_tr)²  ("sq_gap")  |  ℓ_vl − ℓ_tr  ("gap")  |  ℓ_vl  ("val_loss").

Both gradient calls use ``create_graph=True`` (g_k depends on θ_k, so Hessian-vector products at θ_k
and at θ_k + ρε̂_k both appear in the reverse pass; for ASAM also the dependence of T on θ_k), ν is a
float64 leaf tensor, and dM/dν = ``torch.autograd.grad(M, ν)``. Nothing is approximated: K = 1 is
LETS's step without the diagonal Hessian approximation and with the exact base optimizer.

Memory: the graph of all K steps (two gradient graphs per step) is kept until the reverse pass, so
memory grows O(K) (≈ a few activations-and-gradient copies per step); time is O(K).
:func:`hypergrad_recompute` keeps one step's graph at a time instead (K parameter-sized copies of
the step inputs), recomputing each step in the reverse sweep: graph memory flat in K, 1.2–2.6× the time.

Two independent implementations of the same unroll:

* :func:`hypergrad_higher` — ``higher.monkeypatch(model, copy_initial_weights=True,
  track_higher_grads=True)``; the SAM step and SGD are written on the fast-weight list (never
  ``diffopt.step`` on the perturbed loss, which would update the perturbed weights). The functional
  model owns clones of the BN buffers (assigned, never ``copy_``-ed), runs in train mode, and its BN
  momentum is set to 0 around the perturbed and the M passes.
* :func:`hypergrad_func` — ``torch.func.functional_call`` on a dict of tensors, with cloned buffers.

and a memory-saving variant of (b), :func:`hypergrad_recompute`, which runs the same step function
but differentiates one recomputed step at a time (checked against (b)).

Neither changes the model, its buffers or any optimizer state. The passes run in the parameters'
dtype without autocast (bf16 double backward is not meaningful).

Cost accounting (``ledger``, in grad evals; :mod:`hpo_bench.ledger`): the forward unroll is 2K
gradient calls; M costs m = ⌈|B^vl|/|B_{K−1}|⌉ (the validation pass, in training-batch units: more
than 1 when M is evaluated on several validation batches at once) + 1 (ℓ_tr; 0 for "val_loss"),
forward and its backward; the reverse pass from M through the unroll differentiates each of the 2K
gradient calls once more — a double backward (backward through a graph built with
``create_graph=True``), charged 2 grad evals per gradient call it passes through (it runs the
backward of a backward plus the backward of the forward graph under it): 4K. Total charged
6K + m (6K + 2 with one validation batch of the training batch's size). :func:`hypergrad_recompute`
adds the K recomputed steps (2K) and charges 8K + m.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hpo_bench.perturbation import EPS, asam_T, frozen_bn_stats
from hpo_bench.sgd import SGDConfig, sgd_update
from hpo_bench.upper import check_metric, upper_metric


@dataclass
class UnrollState:
    """θ_t (trainable tensors in ``model.named_parameters()`` order), named buffers, momentum buffers."""

    params: list
    buffers: dict
    momentum: list  # Tensor or None per parameter


@dataclass
class HypergradResult:
    dM_dnu: float
    dM_drho: float
    M: float
    rho: float
    K: int


def capture_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> UnrollState:
    """Detached clones of the model's trainable parameters, buffers and (if given) SGD momentum buffers."""
    params = [p for p in model.parameters() if p.requires_grad]
    mom = [None] * len(params)
    if optimizer is not None:
        mom = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
    return UnrollState(params=[p.detach().clone() for p in params],
                       buffers={k: b.detach().clone() for k, b in model.named_buffers()},
                       momentum=[None if m is None else m.detach().clone() for m in mom])


def _check(model, state, batches, lrs, metric, kind):
    names = [n for n, p in model.named_parameters()]
    if any(not p.requires_grad for p in model.parameters()):
        raise ValueError("hypergrad: every model parameter must require grad (the unroll differentiates them all)")
    if len(state.params) != len(names):
        raise ValueError(f"hypergrad: state has {len(state.params)} tensors, model has {len(names)}")
    if len(batches) != len(lrs) or not batches:
        raise ValueError(f"hypergrad: {len(batches)} batches but {len(lrs)} learning rates; allowed: K >= 1 of each")
    check_metric(metric)
    if kind not in ("sam", "asam"):
        raise ValueError(f"kind: {kind!r}; allowed: sam, asam")
    return names


def _as_nu(rho=None, nu=None) -> torch.Tensor:
    if nu is None:
        nu = torch.tensor(math.log(float(rho)), dtype=torch.float64)
    if not torch.is_tensor(nu):
        nu = torch.tensor(float(nu), dtype=torch.float64)
    return nu.detach().clone().requires_grad_(True)


DOUBLE_BACKWARD_EVALS = 2  # grad evals charged per gradient call a reverse pass differentiates through


def m_cost(val_batch, last_batch, metric: str) -> int:
    """Grad evals of M's passes and their backward: ⌈|B^vl|/|B_{K−1}|⌉ + (1 unless metric = "val_loss")."""
    n_val, n_tr = len(val_batch[1]), max(1, len(last_batch[1]))
    return -(-n_val // n_tr) + (metric != "val_loss")


def unroll_cost(K: int, val_batch, last_batch, metric: str, impl: str = "higher") -> int:
    """Grad evals charged for one exact hypergradient (see the module docstring): 6K + m, recompute 8K + m."""
    forward = 2 * K * (2 if impl == "recompute" else 1)
    return forward + DOUBLE_BACKWARD_EVALS * 2 * K + m_cost(val_batch, last_batch, metric)


def _finish(M, nu, batches, val_batch, metric, ledger, differentiate: bool) -> HypergradResult | torch.Tensor:
    if not differentiate:
        return M.detach()
    K = len(batches)
    (d_nu,) = torch.autograd.grad(M, nu)
    if ledger is not None:
        ledger.charge_grad(unroll_cost(K, val_batch, batches[-1], metric))
    rho = float(torch.exp(nu.detach()))
    return HypergradResult(dM_dnu=float(d_nu), dM_drho=float(d_nu) / rho, M=float(M.detach()), rho=rho, K=K)


# ----------------------------------------------------------------------------- (a) higher
def hypergrad_higher(model, state: UnrollState, batches, val_batch, lrs, *, rho=None, nu=None, kind="sam",
                     xi=0.01, metric="sq_gap", sgd: SGDConfig | None = None, ledger=None,
                     differentiate: bool = True):
    """dM/dν through K unrolled SAM/ASAM + SGD steps, with ``higher`` (see the module docstring).

    ``batches``: K (x, y) training batches; ``val_batch``: (x, y); ``lrs``: K learning rates; ρ given as
    ``rho`` (float) or ``nu`` (= log ρ). ``differentiate=False`` returns the M tensor (for finite
    differences). Returns :class:`HypergradResult`.
    """
    import higher

    names = _check(model, state, batches, lrs, metric, kind)
    sgd = sgd or SGDConfig()
    nu = _as_nu(rho, nu)
    fmodel = higher.monkeypatch(model, copy_initial_weights=True, track_higher_grads=True)
    for key, buf in state.buffers.items():  # the functional model's own buffers: assign clones
        path, _, leaf = key.rpartition(".")
        (fmodel.get_submodule(path) if path else fmodel)._buffers[leaf] = buf.detach().clone()
    fmodel.train()

    def loss(theta, x, y, frozen):
        if frozen:
            with frozen_bn_stats(fmodel):
                return F.cross_entropy(fmodel(x, params=theta), y)
        return F.cross_entropy(fmodel(x, params=theta), y)

    with torch.enable_grad():
        theta = [p.detach().clone().requires_grad_(True) for p in state.params]
        bufs = [None if m is None else m.detach().clone() for m in state.momentum]
        rho_t = torch.exp(nu)
        for (x, y), lr in zip(batches, lrs):
            g = torch.autograd.grad(loss(theta, x, y, False), theta, create_graph=True)
            if kind == "sam":
                norm = torch.sqrt(sum((gi * gi).sum() for gi in g))
                e_hat = [gi / (norm + EPS) for gi in g]
            else:
                T = [asam_T(n, th, xi) for n, th in zip(names, theta)]
                tg = [gi if t is None else t * gi for t, gi in zip(T, g)]
                norm = torch.sqrt(sum((v * v).sum() for v in tg))
                e_hat = [(v if t is None else t * v) / (norm + EPS) for t, v in zip(T, tg)]
            pert = [th + rho_t.to(th.dtype) * e for th, e in zip(theta, e_hat)]
            g_hat = torch.autograd.grad(loss(pert, x, y, True), pert, create_graph=True)
            new_theta, new_bufs = [], []
            for th, gh, b in zip(theta, g_hat, bufs):
                th, b = sgd_update(th, gh, b, lr, sgd)
                new_theta.append(th)
                new_bufs.append(b)
            theta, bufs = new_theta, new_bufs
        (xv, yv), (xt, yt) = val_batch, batches[-1]
        lv = loss(theta, xv, yv, True)
        lt = loss(theta, xt, yt, True) if metric != "val_loss" else lv.detach()
        M = upper_metric(metric, lv, lt)
        return _finish(M, nu, batches, val_batch, metric, ledger, differentiate)


# ----------------------------------------------------------------------------- (b) torch.func
def _func_loss(model, buffers):
    def loss(theta: dict, x, y):
        return F.cross_entropy(torch.func.functional_call(model, (theta, buffers), (x,)), y)
    return loss


def _func_step(model, loss, theta: dict, mom: dict, rho_t, x, y, lr, kind, xi, sgd: SGDConfig):
    """One SAM/ASAM + SGD step of the unroll on tensor dicts (see the module docstring); differentiable."""
    names = list(theta)
    grads = dict(zip(names, torch.autograd.grad(loss(theta, x, y), list(theta.values()), create_graph=True)))
    T = {n: None if kind == "sam" else asam_T(n, theta[n], xi) for n in names}
    scaled = {n: grads[n] if T[n] is None else T[n] * grads[n] for n in names}
    denom = torch.sqrt(torch.stack([(v ** 2).sum() for v in scaled.values()]).sum()) + EPS
    unit = {n: (scaled[n] if T[n] is None else T[n] * scaled[n]) / denom for n in names}
    pert = {n: theta[n] + rho_t.to(theta[n].dtype) * unit[n] for n in names}
    with frozen_bn_stats(model):
        lp = loss(pert, x, y)
    ghat = dict(zip(names, torch.autograd.grad(lp, list(pert.values()), create_graph=True)))
    step, new_mom = {}, {}
    for n in names:
        step[n], new_mom[n] = sgd_update(theta[n], ghat[n], mom[n], lr, sgd)
    return step, new_mom


def _func_metric(model, loss, theta, val_batch, last_batch, metric):
    with frozen_bn_stats(model):
        lv = loss(theta, *val_batch)
        return upper_metric(metric, lv, loss(theta, *last_batch) if metric != "val_loss" else lv.detach())


def hypergrad_func(model, state: UnrollState, batches, val_batch, lrs, *, rho=None, nu=None, kind="sam",
                   xi=0.01, metric="sq_gap", sgd: SGDConfig | None = None, ledger=None,
                   differentiate: bool = True):
    """The same dM/dν as :func:`hypergrad_higher`, written independently with ``torch.func.functional_call``."""
    names = _check(model, state, batches, lrs, metric, kind)
    sgd = sgd or SGDConfig()
    nu = _as_nu(rho, nu)
    buffers = {k: b.detach().clone() for k, b in state.buffers.items()}  # BN updates these clones in place
    loss = _func_loss(model, buffers)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            theta = {n: p.detach().clone().requires_grad_(True) for n, p in zip(names, state.params)}
            mom = {n: (None if m is None else m.detach().clone()) for n, m in zip(names, state.momentum)}
            rho_t = torch.exp(nu)
            for (x, y), lr in zip(batches, lrs):
                theta, mom = _func_step(model, loss, theta, mom, rho_t, x, y, lr, kind, xi, sgd)
            M = _func_metric(model, loss, theta, val_batch, batches[-1], metric)
            return _finish(M, nu, batches, val_batch, metric, ledger, differentiate)
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- (c) recompute
def hypergrad_recompute(model, state: UnrollState, batches, val_batch, lrs, *, rho=None, nu=None, kind="sam",
                        xi=0.01, metric="sq_gap", sgd: SGDConfig | None = None, ledger=None):
    """:func:`hypergrad_func`'s dM/dν with an autograd graph of one step at a time (memory flat in K).

    Forward: the K steps run without a graph, keeping each step's input (θ_k, b_k, BN buffers): K
    parameter-sized copies, not K graphs. Reverse (reverse-mode accumulation by hand): with
    λ_K = ∂M/∂θ_K and μ_K = 0, for k = K−1 … 0 the step k is recomputed from its stored input with a
    graph and one vector-Jacobian product gives λ_k = (∂θ_{k+1}/∂θ_k)ᵀλ_{k+1} + (∂b_{k+1}/∂θ_k)ᵀμ_{k+1},
    μ_k likewise through b_k, and adds (∂(θ_{k+1}, b_{k+1})/∂ν)ᵀ(λ_{k+1}, μ_{k+1}) to dM/dν.
    The same arithmetic as the full unroll, in another order (tests: equal to 1e-10 in float64).
    Cost charged: 2K (forward) + m (M) + 2K (recomputed steps) + 4K (their reverse: a double backward
    through each of the 2K recomputed gradient calls, 2 each) = 8K + m.
    """
    names = _check(model, state, batches, lrs, metric, kind)
    sgd = sgd or SGDConfig()
    nu = _as_nu(rho, nu)
    buffers = {k: b.detach().clone() for k, b in state.buffers.items()}
    loss = _func_loss(model, buffers)
    was_training = model.training
    model.train()
    try:
        with torch.enable_grad():
            theta = {n: p.detach().clone() for n, p in zip(names, state.params)}
            mom = {n: (None if m is None else m.detach().clone()) for n, m in zip(names, state.momentum)}
            rho_t = torch.exp(nu.detach())
            inputs = []
            for (x, y), lr in zip(batches, lrs):  # θ_k, b_k are never written in place; BN buffers are
                inputs.append((theta, mom, {k: b.clone() for k, b in buffers.items()}))
                theta = {n: t.detach().requires_grad_(True) for n, t in theta.items()}
                theta, mom = _func_step(model, loss, theta, mom, rho_t, x, y, lr, kind, xi, sgd)
                theta = {n: t.detach() for n, t in theta.items()}
                mom = {n: (None if m is None else m.detach()) for n, m in mom.items()}
            theta = {n: t.requires_grad_(True) for n, t in theta.items()}
            M = _func_metric(model, loss, theta, val_batch, batches[-1], metric)
            lam = dict(zip(names, torch.autograd.grad(M, list(theta.values()))))
            mu = {n: None for n in names}
            d_nu = torch.zeros((), dtype=torch.float64)
            for k in reversed(range(len(batches))):
                theta_k, mom_k, buf_k = inputs[k]
                for key, b in buf_k.items():  # the BN state this step started from
                    buffers[key] = b.clone()
                theta_k = {n: t.detach().requires_grad_(True) for n, t in theta_k.items()}
                mom_k = {n: (None if m is None else m.detach().requires_grad_(True)) for n, m in mom_k.items()}
                nu_k = nu.detach().requires_grad_(True)
                (x, y), lr = batches[k], lrs[k]
                out_theta, out_mom = _func_step(model, loss, theta_k, mom_k, torch.exp(nu_k), x, y, lr, kind, xi, sgd)
                outs, cot = list(out_theta.values()), list(lam.values())
                for n in names:
                    if mu[n] is not None:
                        outs.append(out_mom[n])
                        cot.append(mu[n])
                wrt = list(theta_k.values()) + [m for m in mom_k.values() if m is not None] + [nu_k]
                g = torch.autograd.grad(outs, wrt, cot, allow_unused=True)
                lam = dict(zip(names, g[:len(names)]))
                g_mom = iter(g[len(names):-1])
                mu = {n: (None if mom_k[n] is None else next(g_mom)) for n in names}
                if g[-1] is not None:
                    d_nu = d_nu + g[-1]
        if ledger is not None:
            ledger.charge_grad(unroll_cost(len(batches), val_batch, batches[-1], metric, "recompute"))
        d_nu = float(d_nu)
        r = float(torch.exp(nu.detach()))
        return HypergradResult(dM_dnu=d_nu, dM_drho=d_nu / r, M=float(M.detach()), rho=r, K=len(batches))
    finally:
        model.train(was_training)


IMPLS = {"higher": hypergrad_higher, "func": hypergrad_func, "recompute": hypergrad_recompute}


def exact_hypergrad(model, state, batches, val_batch, lrs, *, impl: str = "higher", **kw) -> HypergradResult:
    """Dispatch to :func:`hypergrad_higher` (default), :func:`hypergrad_func` or :func:`hypergrad_recompute`."""
    if impl not in IMPLS:
        raise ValueError(f"impl: {impl!r}; allowed: {', '.join(IMPLS)}")
    return IMPLS[impl](model, state, batches, val_batch, lrs, **kw)


__all__ = ["DOUBLE_BACKWARD_EVALS", "HypergradResult", "UnrollState", "capture_state", "exact_hypergrad",
           "hypergrad_func", "hypergrad_higher", "hypergrad_recompute", "m_cost", "unroll_cost"]
