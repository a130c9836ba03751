"""Batched grid search: every ρ of a grid (same seed, same batches) trained in one vectorized pass.

The P grid points share the initial weights (same seed) and the batch sequence, so their P
weight vectors can be stacked (``torch.func.stack_module_state``) and every pass run once for all
of them: through the model's registered stacked forward (:func:`hpo_bench.models.stacked_forward`;
the MNIST-1D CNN has one, as batched matmuls) with plain autograd on Σ_p L_p, or else with ``vmap``
over the module. Per point p the math is exactly the trainer's (METHODS.md §1):
g_p = ∇L(B; θ_p); ε_p = ρ_p g_p/(‖g_p‖+1e-12) (SAM) or ρ_p T²g_p/‖T g_p‖ (ASAM);
ĝ_p = ∇L(B; θ_p + ε_p); then torch.optim.SGD's update (momentum μ, weight decay λ, dampening 0):
d = ĝ_p + λθ_p, b ← d (first step) or μb + d, θ_p ← θ_p − η_t b.

Scope: fixed-ρ ``sam`` and ``asam`` on models without BatchNorm (running statistics cannot be
stacked); other cases fall back to one run after another. Results equal separate runs of the one
trainer: the CNN runs the same matmul kernels in both (its forward is the stacked one with P = 1)
and ‖g_p‖ is computed as the trainer computes it, so float32 runs agree to ~3e-7 in the final
losses after 108 steps (evaluation sums in another order); ``vmap`` models round differently in
the last bit, which SGD amplifies; in float64 both agree to ~1e-15 (the tests check both dtypes).
Cost: each point is charged the grad evals it computed (2 per step); the wall and device seconds of
the shared pass are split evenly among the points (``batched_group`` = P).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from hpo_bench.config import TrainConfig
from hpo_bench.data import to_device_async
from hpo_bench.execute import execute_trial, result_curves, result_row, trial_data
from hpo_bench.ledger import Ledger
from hpo_bench.models import create_model, stacked_forward
from hpo_bench.perturbation import EPS, asam_T, bn_modules, global_norm
from hpo_bench.seeds import train_augment, train_order
from hpo_bench.sgd import SGDConfig, sgd_update
from hpo_bench.trainer import RunResult, lr_at, resolve_device, train_dtype
from hpo_bench.trial import Trial

SUPPORTED = ("sam", "asam")


def can_batch(trials: list[Trial]) -> bool:
    """True if these trials differ only in ρ and use a supported strategy on a BN-free model."""
    if len(trials) < 2 or trials[0].strategy not in SUPPORTED:
        return False
    key = lambda t: (t.strategy, t.seed, repr(t.params), repr(t.data), repr(t.model), repr(t.train), repr(t.setting))
    if len({key(t) for t in trials}) != 1:
        return False
    t0 = trials[0]
    probe = create_model(t0.model["name"], trial_data(t0).num_classes, trial_data(t0).input_shape)
    return not bn_modules(probe)


def _per_model_norm(tensors: dict, p: int) -> torch.Tensor:
    """‖·‖₂ over all tensors, separately for each of the P stacked models: shape (P,).

    Computed per model exactly as the trainer does (:func:`hpo_bench.perturbation.global_norm`), so
    the SAM direction rounds the same way as in a separate run.
    """
    return torch.stack([global_norm([t[i] for t in tensors.values()]) for i in range(p)])


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _stacked_passes(model_name: str, meta, P: int):
    """(forward(params, x) -> (P, B, C), grads(params, x, y) -> ({name: (P, ...)}, losses (P,))).

    With the model's registered stacked forward (:func:`hpo_bench.models.stacked_forward`): plain
    autograd on Σ_p L_p, whose gradient w.r.t. θ_p is ∇L_p since the P losses share no parameters.
    Otherwise ``vmap`` of ``torch.func.grad_and_value`` over the module.
    """
    stacked = stacked_forward(model_name)
    if stacked is None:
        loss_fn = lambda p, x, y: F.cross_entropy(functional_call(meta, p, (x,)), y)
        return (vmap(lambda p, x: functional_call(meta, p, (x,)), in_dims=(0, None)),
                vmap(grad_and_value(loss_fn), in_dims=(0, None, None)))

    def grads(params, x, y):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        out = stacked(leaves, x)
        losses = F.cross_entropy(out.flatten(0, 1), y.repeat(P), reduction="none").view(P, -1).mean(1)
        return dict(zip(leaves, torch.autograd.grad(losses.sum(), list(leaves.values())))), losses.detach()

    return stacked, grads


def train_batched(trials: list[Trial], device=None) -> list[tuple[dict, "object"]]:
    """Train the grid ``trials`` (see :func:`can_batch`) together; return [(row, curves)] in order."""
    t0 = trials[0]
    cfg = TrainConfig(**t0.train)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = resolve_device(device or cfg.device)
    data = trial_data(t0).to(dev)
    P = len(trials)
    torch.manual_seed(t0.seed)  # the same initial weights as the trainer gives every point
    dtype = train_dtype(cfg)
    base = create_model(t0.model["name"], data.num_classes, data.input_shape).to(dev, dtype)
    params, _ = stack_module_state([base] * P)
    params = {k: v.detach().clone() for k, v in params.items()}
    names = list(params)
    meta = base.to("meta")
    rho = torch.tensor([t.rho for t in trials], device=dev, dtype=next(iter(params.values())).dtype)
    asam = t0.strategy == "asam"
    xi = float(t0.params.get("xi", 0.01))

    fwd, grad_fn = _stacked_passes(t0.model["name"], meta, P)
    n = len(data.train_y)
    spe = max(1, math.ceil(n / cfg.batch_size))
    total = spe * cfg.epochs
    gen, aug_gen = train_order(t0.seed), train_augment(t0.seed)
    sgd = SGDConfig(momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    momentum = {}
    results = [RunResult() for _ in trials]
    alive = torch.ones(P, dtype=torch.bool)
    ledger = Ledger(device=dev.type)
    ledger.start()
    step = 0

    def evaluate(xs, ys):
        if len(ys) == 0:
            return [math.nan] * P, [math.nan] * P
        loss_sum = torch.zeros(P, dtype=torch.float64, device=dev)
        correct = torch.zeros(P, dtype=torch.int64, device=dev)
        with torch.no_grad():
            for i in range(0, len(ys), cfg.eval_batch_size):
                x, y = data.normalize(xs[i:i + cfg.eval_batch_size]).to(dtype), ys[i:i + cfg.eval_batch_size]
                out = fwd(params, x)  # (P, B, C)
                loss_sum += F.cross_entropy(out.flatten(0, 1), y.repeat(P), reduction="none").view(P, -1).sum(1).double()
                correct += (out.argmax(-1) == y).sum(1)
                ledger.charge_fwd()
        return (loss_sum / len(ys)).tolist(), (correct.double() / len(ys)).tolist()

    for epoch in range(cfg.epochs):
        perm = to_device_async(torch.randperm(n, generator=gen), dev)
        for b in range(spe):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = data.train_x[idx]
            if data.augment is not None:
                x = data.augment(x, aug_gen)
            x, y = data.normalize(x).to(dtype), data.train_y[idx]
            lr = lr_at(step, total, cfg.lr, cfg.schedule)
            g, loss = grad_fn(params, x, y)
            if asam:
                scale = {k: asam_T(k, params[k], xi) for k in names}
                tg = {k: g[k] if scale[k] is None else scale[k] * g[k] for k in names}
                inv = rho / (_per_model_norm(tg, P) + EPS)
                eps = {k: _bcast(inv, g[k]) * (tg[k] if scale[k] is None else scale[k] * tg[k]) for k in names}
            else:
                inv = rho / (_per_model_norm(g, P) + EPS)
                eps = {k: _bcast(inv, g[k]) * g[k] for k in names}
            g_hat, _ = grad_fn({k: params[k] + eps[k] for k in names}, x, y)
            with torch.no_grad():
                for k in names:
                    params[k], momentum[k] = sgd_update(params[k], g_hat[k], momentum.get(k), lr, sgd)
            bad = ~torch.isfinite(loss.detach()).cpu() & alive
            for i in torch.nonzero(bad).flatten().tolist():
                results[i].status, results[i].reason, results[i].stop_step = "diverged", f"non-finite training loss ({float(loss[i])})", step
            alive &= ~bad
            ledger.charge_grad(2)
            step += 1
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            splits = [evaluate(data.train_x, data.train_y), evaluate(data.val_x, data.val_y), evaluate(data.test_x, data.test_y)]
            for i in range(P):
                if alive[i]:
                    (trl, tra), (vl, va), (tel, tea) = [(s[0][i], s[1][i]) for s in splits]
                    results[i].epochs.append({"epoch": epoch + 1, "step": step, "train_loss": trl, "train_acc": tra,
                                              "val_loss": vl, "val_acc": va, "test_loss": tel, "test_acc": tea,
                                              "rho": trials[i].rho, "grad_evals": ledger.grad_evals, "wall_s": ledger.elapsed() / P})
    ledger.stop()
    out = []
    for i, (trial, res) in enumerate(zip(trials, results)):
        res.ledger = {"grad_evals": ledger.grad_evals if alive[i] else 2 * (res.stop_step + 1),
                      "fwd_evals": ledger.fwd_evals, "wall_s": ledger.wall_s / P, "device_s": ledger.device_s / P,
                      "peak_mem_bytes": ledger.peak_mem_bytes}
        res.summary = {"steps": step if alive[i] else res.stop_step + 1, "rho_final": trial.rho, "batched_group": P}
        out.append((result_row(trial, res, dev), result_curves(trial.run_id, res)))
    return out


def run_batched(trials: list[Trial], store, device=None, progress=None) -> list[dict]:
    """Run not-yet-done ``trials`` grouped by seed, batched where possible; return all rows in order."""
    todo = [t for t in trials if not store.has(t.run_id)]
    groups: dict[int, list[Trial]] = {}
    for t in todo:
        groups.setdefault(t.seed, []).append(t)
    for group in groups.values():
        if can_batch(group):
            for row, curves in train_batched(group, device):
                row["finished_at"] = time.time()
                store.write_run(row, curves)
                if progress is not None:
                    progress.finish(row)
        else:
            for t in group:
                row = execute_trial(t, store, device=device)
                if progress is not None:
                    progress.finish(row)
        store.consolidate()
    return [store.load_row(t.run_id) for t in trials]
