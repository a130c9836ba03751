"""The base optimizer's update rule (torch.optim.SGD semantics), written once, differentiably.

The trainer steps with ``torch.optim.SGD`` itself; the places that must reproduce that step on
their own tensors — the batched grid (P models at once) and the exact unrolled hypergradient
(inside an autograd graph) — call :func:`sgd_update`, which performs the same floating-point
operations as ``torch.optim.SGD``'s single-tensor path::

    d  = g + λ θ                                   (weight decay λ)
    b' = d  (first step)  or  μ b + (1 − τ) d       (momentum μ, dampening τ)
    d' = d + μ b'  (Nesterov)  or  b'
    θ' = θ − η d'
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SGDConfig:
    """The base optimizer's hyperparameters (torch.optim.SGD semantics)."""

    momentum: float = 0.9
    weight_decay: float = 5e-4
    dampening: float = 0.0
    nesterov: bool = False

    @classmethod
    def from_optimizer(cls, opt: torch.optim.SGD) -> "SGDConfig":
        g = opt.param_groups[0]
        return cls(g["momentum"], g["weight_decay"], g.get("dampening", 0.0), g.get("nesterov", False))


def sgd_update(theta: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None, lr, sgd: SGDConfig):
    """(θ', b') after one SGD step from θ with gradient ``grad`` and momentum buffer ``buf`` (None at first).

    Out of place, so it can run inside a differentiable unroll; ``lr`` may be a float or a tensor.
    """
    d = grad.add(theta, alpha=sgd.weight_decay) if sgd.weight_decay else grad
    if sgd.momentum:
        buf = d.clone() if buf is None else buf.mul(sgd.momentum).add(d, alpha=1 - sgd.dampening)
        d = d.add(buf, alpha=sgd.momentum) if sgd.nesterov else buf
    return theta.add(d, alpha=-lr), buf
