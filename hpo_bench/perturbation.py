"""SAM and ASAM perturbation directions, and BatchNorm handling for perturbed passes.

Conventions (METHODS.md §1): the perturbation is ε = ρ·ε̂ with

* SAM  (Foret et al. 2021, Eq. 2):   ε̂ = g / (‖g‖₂ + 1e-12), the global L2 norm over all trainable tensors;
* ASAM (Kwon et al. 2021, Eq. 11):   ε̂ = T²g / (‖Tg‖₂ + 1e-12), T = |θ| + ξ element-wise for tensors whose
  name contains "weight", T = 1 for biases and other tensors (LETS paper Eq. 7 with the element-wise operator).

Weight decay is never part of g here: the base optimizer applies it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

EPS = 1e-12


def global_norm(tensors) -> torch.Tensor:
    """‖(t₁, …, tₙ)‖₂ over all tensors, as a 0-dim tensor (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def sam_direction(grads: list[torch.Tensor], rho: float = 1.0, norm: torch.Tensor | None = None) -> list[torch.Tensor]:
    """ρ·ε̂ = ρ·g / (‖g‖ + 1e-12) (ρ = 1: the unit direction ε̂); ``norm`` = ‖g‖ if already computed."""
    scale = rho / ((global_norm(grads) if norm is None else norm) + EPS)
    return list(torch._foreach_mul(grads, scale))


def asam_T(name: str, theta: torch.Tensor, xi: float) -> torch.Tensor | None:
    """ASAM's T for one tensor: |θ| + ξ if its name contains "weight", else None (T = 1).

    The one place that decides which tensors ASAM scales; differentiable in θ (the exact
    hypergradient differentiates through it).
    """
    return theta.abs() + xi if "weight" in name else None


def asam_scale(names: list[str], params: list[torch.Tensor], xi: float) -> list[torch.Tensor | None]:
    """T for each tensor at the current (detached) weights: |θ| + ξ for weights, None (= 1) for others."""
    return [asam_T(n, p.detach(), xi) for n, p in zip(names, params)]


def asam_direction(grads: list[torch.Tensor], scales: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """ε̂ = T²g / (‖Tg‖ + 1e-12) with T from :func:`asam_scale`."""
    tg = [g if t is None else t * g for g, t in zip(grads, scales)]
    inv = 1.0 / (global_norm(tg) + EPS)
    return [(x if t is None else t * x) * inv for x, t in zip(tg, scales)]


def direction(kind: str, grads, names, params, xi: float = 0.01) -> list[torch.Tensor]:
    """The unit perturbation direction ε̂ of ``kind`` ('sam' or 'asam')."""
    if kind == "sam":
        return sam_direction(grads)
    if kind == "asam":
        return asam_direction(grads, asam_scale(names, params, xi))
    raise ValueError(f"perturbation kind: {kind!r}; allowed: sam, asam")


def bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def frozen_bn_stats(model: nn.Module):
    """Run a pass without changing BN running statistics: momentum = 0 around it (METHODS.md §1).

    running ← (1−0)·running + 0·batch_stat leaves the buffers bit-identical; unlike restoring
    buffers with ``copy_``, this is safe inside a differentiable unroll. The integer counter
    ``num_batches_tracked`` (not differentiated) is reset to its value before the pass.
    """
    mods = bn_modules(model)
    saved = [m.momentum for m in mods]
    counts = [None if m.num_batches_tracked is None else int(m.num_batches_tracked) for m in mods]
    for m in mods:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom, n in zip(mods, saved, counts):
            m.momentum = mom
            if n is not None:  # an integer counter outside any graph: resetting it is safe
                m.num_batches_tracked.fill_(n)
