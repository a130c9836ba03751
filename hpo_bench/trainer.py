"""The one training loop every strategy runs on (METHODS.md §1).

Base optimizer: SGD (momentum 0.9, weight decay 5e-4 applied by the optimizer, never inside the
perturbation), per-step cosine learning rate. A step is (see :mod:`searchers.base`)::

    g  = ∇L(B^tr; θ_t)                                   # always
    ε  = strategy.perturbation(ctx, g)                   # None -> ERM step
    ĝ  = ∇L(B^tr; θ_t + ε)   (BN running stats frozen)   # only when ε is given
    d  = strategy.combine(ctx, g, ĝ);  θ_{t+1} = SGD(θ_t, d)
    strategy.after_update(ctx)

Data live as tensors on the device and are batched by indexing. Training batch order depends
only on the run seed; validation batches come from their own generator, so strategies that draw
them never disturb the training order. CPU runs are deterministic for a given seed.

With a :class:`~hpo_bench.checkpoint.Checkpointer` the run writes its full state every
``train.checkpoint_every`` epochs and, when it finds a checkpoint, continues from it with the
same bits as an uninterrupted run (:mod:`hpo_bench.checkpoint`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hpo_bench.checkpoint import Checkpointer
from hpo_bench.config import TrainConfig
from hpo_bench.data import DataBundle, to_device_async
from hpo_bench.ledger import Ledger
from hpo_bench.memory import keep_freed_memory
from hpo_bench.models import create_model
from hpo_bench.perturbation import bn_modules, frozen_bn_stats
from hpo_bench.seeds import (
    EXTRA_SOURCES,
    extra_augment,
    extra_order,
    train_augment,
    train_order,
)
from hpo_bench.strategy import Diverged, Strategy

MEM_CHECK_EVERY = 10  # steps between memory-budget checks
CUDA_SYNC_EVERY = 50  # steps between divergence checks on CUDA (each is a host sync)


def memory_in_use(cuda: bool) -> int:
    """Bytes in use: CUDA peak allocation on GPU; current resident set size of the process on CPU."""
    if cuda:
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # non-Linux: peak RSS (never decreases)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RunStopped(RuntimeError):
    """A run ended early with a status other than 'ok' (diverged, timeout, oom)."""

    def __init__(self, status: str, reason: str, step: int):
        super().__init__(f"{status} at step {step}: {reason}")
        self.status, self.reason, self.step = status, reason, step


def _upcast(out: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 for the loss (bf16 under autocast); float64 stays float64."""
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """Cosine: η_t = η₀·½(1 + cos(π t / T)); constant: η₀."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return base_lr


@dataclass
class RunResult:
    """What one run produced: summary fields, per-epoch metrics and per-step traces."""

    status: str = "ok"
    reason: str = ""
    stop_step: int = -1
    summary: dict = field(default_factory=dict)
    epochs: list = field(default_factory=list)  # dicts: epoch, step, metric values
    traces: list = field(default_factory=list)  # dicts: step, epoch, trace values
    ledger: dict = field(default_factory=dict)


class StepContext:
    """What a strategy sees at one step; every gradient obtained here is charged to the ledger."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.model = trainer.model
        self.params = trainer.params
        self.names = trainer.names
        self.ledger = trainer.ledger
        self.x = self.y = None
        self.first_loss = None  # L(B_t; θ_t) of the step's first pass
        self.step = 0
        self.epoch = 0
        self.total_steps = trainer.total_steps
        self.lr = trainer.cfg.lr

    # -- passes --------------------------------------------------------------------------------
    def loss(self, x, y, params=None) -> torch.Tensor:
        """Mean cross-entropy of the model on (x, y); ``params`` evaluates at other weights (functional)."""
        with self.trainer.autocast():
            if params is None:
                out = self.model(x)
            else:
                out = torch.func.functional_call(self.model, dict(zip(self.names, params)), (x,), strict=False)
        return F.cross_entropy(_upcast(out), y)

    def loss_grad(self, x=None, y=None, *, update_bn: bool = False, create_graph: bool = False):
        """(L, ∇_θ L) on (x, y) at the current θ; defaults to the step's training batch. One grad eval.

        BN running statistics are frozen unless ``update_bn`` (only the step's first pass updates them).
        """
        x, y = (self.x, self.y) if x is None else (x, y)
        if update_bn or not self.trainer.has_bn:
            loss = self.loss(x, y)
        else:
            with frozen_bn_stats(self.model):
                loss = self.loss(x, y)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph)
        self.ledger.charge_grad()
        return loss, list(grads)

    @torch.no_grad()
    def add_(self, delta, alpha: float = 1.0) -> None:
        torch._foreach_add_(self.params, delta, alpha=alpha)

    def perturbed_loss_grad(self, eps, x=None, y=None):
        """(L, ∇L) at θ + ε with BN stats frozen; θ is restored bit-exactly afterwards. One grad eval."""
        with torch.no_grad():
            saved = torch._foreach_mul(self.params, 1.0)  # a copy of θ in one fused op
        self.add_(eps)
        try:
            return self.loss_grad(x, y)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, saved)

    def val_batch(self, source: str = "val"):
        """A batch of size ``batch_size`` from the held-out validation split ('val') or training set ('train').

        Drawn from generators independent of the training order.
        """
        return self.trainer.extra_batch(source)


def train_dtype(train_cfg: TrainConfig) -> torch.dtype:
    """The torch dtype of weights and compute named by ``train.dtype``."""
    return getattr(torch, train_cfg.dtype)


class Trainer:
    """Train one model with one strategy; returns a :class:`RunResult`."""

    def __init__(self, data: DataBundle, model_name: str, train_cfg: TrainConfig, strategy: Strategy, seed: int,
                 device: torch.device | str = "cpu", on_epoch=None, progress=None, max_steps: int = 0,
                 checkpoint: Checkpointer | None = None):
        keep_freed_memory()
        self.cfg = train_cfg
        self.checkpoint = checkpoint  # writes / resumes mid-run checkpoints (None: neither)
        self.max_steps = max_steps  # > 0: stop (status 'stopped') after this many steps
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype = train_dtype(train_cfg)
        self.amp = bool(train_cfg.amp and self.cuda and self.dtype == torch.float32)
        self.data = data.to(self.device)
        self.seed = seed
        self.strategy = strategy
        self.on_epoch = on_epoch
        self.progress = progress
        torch.manual_seed(seed)
        self.model = create_model(model_name, data.num_classes, data.input_shape).to(self.device, self.dtype)
        if self.amp:
            self.model = self.model.to(memory_format=torch.channels_last) if len(data.input_shape) == 3 else self.model
        self.has_bn = bool(bn_modules(self.model))  # else passes need no BN freezing
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.optimizer = torch.optim.SGD(self.params, lr=train_cfg.lr, momentum=train_cfg.momentum,
                                         weight_decay=train_cfg.weight_decay)
        self.n_train = len(self.data.train_y)
        self.steps_per_epoch = max(1, math.ceil(self.n_train / train_cfg.batch_size))
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        self.ledger = Ledger(device=self.device.type)
        self.train_gen, self.aug_gen = train_order(seed), train_augment(seed)
        self.extra_gens = {source: extra_order(seed, source) for source in EXTRA_SOURCES}
        self.extra_aug_gen = extra_augment(seed)
        self.extra_perm = {"val": None, "train": None}
        self.extra_pos = {"val": 0, "train": 0}

    # -- helpers -------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp) if self.cuda else torch.autocast("cpu", enabled=False)

    def _prep(self, x, train: bool, gen=None):
        if train and self.data.augment is not None:
            x = self.data.augment(x, gen)
        x = self.data.normalize(x).to(self.dtype)
        if self.amp and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def extra_batch(self, source: str):
        """Next batch of an auxiliary stream (validation split or training set), epoch-wise reshuffled."""
        xs, ys = (self.data.val_x, self.data.val_y) if source == "val" else (self.data.train_x, self.data.train_y)
        n = len(ys)
        if n == 0:
            raise ValueError("data.val_fraction: the validation split is empty but the strategy needs validation batches; allowed: > 0")
        bs = min(self.cfg.batch_size, n)
        if self.extra_perm[source] is None or self.extra_pos[source] + bs > n:
            self.extra_perm[source] = to_device_async(torch.randperm(n, generator=self.extra_gens[source]), self.device)
            self.extra_pos[source] = 0
        idx = self.extra_perm[source][self.extra_pos[source]: self.extra_pos[source] + bs]
        self.extra_pos[source] += bs
        return self._prep(xs[idx], train=(source == "train"), gen=self.extra_aug_gen), ys[idx]

    @torch.no_grad()
    def evaluate(self, x_all, y_all) -> tuple[float, float]:
        """(mean loss, accuracy) over a whole split in eval mode; charged as forward passes."""
        if len(y_all) == 0:
            return float("nan"), float("nan")
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        bs = self.cfg.eval_batch_size
        for i in range(0, len(y_all), bs):
            x, y = self._prep(x_all[i:i + bs], train=False), y_all[i:i + bs]
            with self.autocast():
                out = _upcast(self.model(x))
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            self.ledger.charge_fwd()
        self.model.train()
        n = len(y_all)
        return float(loss_sum) / n, float(correct) / n

    def _check_limits(self, ctx: StepContext, loss: torch.Tensor) -> None:
        # On CUDA a finiteness check is a host sync: do it every CUDA_SYNC_EVERY steps (a NaN persists).
        if (not self.cuda or ctx.step % CUDA_SYNC_EVERY == 0) and not math.isfinite(value := loss.item()):
            raise RunStopped("diverged", f"non-finite training loss ({value})", ctx.step)
        if self.cfg.max_wall_s and self.ledger.elapsed() > self.cfg.max_wall_s:
            raise RunStopped("timeout", f"wall time over max_wall_s={self.cfg.max_wall_s}", ctx.step)
        if self.cfg.max_mem_mb and ctx.step % MEM_CHECK_EVERY == 0 and memory_in_use(self.cuda) > self.cfg.max_mem_mb * 2**20:
            where = "CUDA allocated memory" if self.cuda else "process resident memory"
            raise RunStopped("oom", f"{where} over max_mem_mb={self.cfg.max_mem_mb}", ctx.step)

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self, ctx: StepContext) -> torch.Tensor:
        strategy, opt = self.strategy, self.optimizer
        loss, g = ctx.loss_grad(update_bn=True)
        ctx.first_loss = loss
        eps = strategy.perturbation(ctx, g)
        g_hat = ctx.perturbed_loss_grad(eps)[1] if eps is not None else None
        update = strategy.combine(ctx, g, g_hat)
        for p, d in zip(self.params, update):
            p.grad = d
        opt.step()
        strategy.after_update(ctx)
        return loss

    def train_epoch(self, ctx: StepContext, epoch: int, traces: list) -> None:
        """One epoch of training steps (no evaluation); per-step strategy traces go to ``traces``."""
        cfg = self.cfg
        ctx.epoch = epoch
        perm = to_device_async(torch.randperm(self.n_train, generator=self.train_gen), self.device)
        for b in range(self.steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            ctx.x = self._prep(self.data.train_x[idx], train=True, gen=self.aug_gen)
            ctx.y = self.data.train_y[idx]
            ctx.lr = lr_at(ctx.step, self.total_steps, cfg.lr, cfg.schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = ctx.lr
            loss = self.train_step(ctx)
            self._check_limits(ctx, loss)
            if ctx.step % cfg.trace_every == 0:
                tr = self.strategy.trace()
                if tr:
                    traces.append({"step": ctx.step, "epoch": epoch, **tr})
            ctx.step += 1
            if self.progress is not None:
                self.progress.update(1)
            if ctx.step == self.max_steps:
                raise RunStopped("stopped", f"max_steps={self.max_steps} reached", ctx.step)

    def fit(self) -> RunResult:
        """Train (from the checkpoint, when there is one) to the end or to a stop; the run's result.

        Raises :class:`~hpo_bench.checkpoint.CheckpointError` before any step when the checkpoint
        does not fit this run (the caller sets it aside and trains a fresh trainer).
        """
        cfg, result, ckpt = self.cfg, RunResult(), self.checkpoint
        ctx = StepContext(self)
        self.strategy.setup(self)
        self.ledger.start()
        first = 0
        if ckpt is not None and (state := ckpt.load(self.device)) is not None:
            first = ckpt.restore(self, ctx, result, state)
        self.model.train()
        if self.progress is not None:
            self.progress.reset(total=self.total_steps)
            if ctx.step:
                self.progress.update(ctx.step)
        try:
            for epoch in range(first, cfg.epochs):
                self.train_epoch(ctx, epoch, result.traces)
                row = None
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    row = self._epoch_row(ctx, epoch)
                    result.epochs.append(row)
                    if self.progress is not None:
                        self.progress.set_postfix(val_acc=f"{row['val_acc']:.3f}", loss=f"{row['train_loss']:.3f}")
                if ckpt is not None and ckpt.due(epoch, cfg.epochs):  # before on_epoch, which may report it
                    ckpt.save(self, ctx, result, epoch)
                if row is not None and self.on_epoch is not None:
                    self.on_epoch(row)
        except RunStopped as stop:
            result.status, result.reason, result.stop_step = stop.status, stop.reason, stop.step
        except Diverged as err:
            result.status, result.reason, result.stop_step = "diverged", str(err), ctx.step
        except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
            result.status, result.reason, result.stop_step = "oom", str(err).splitlines()[0], ctx.step
            torch.cuda.empty_cache()
        self.ledger.stop()
        if ckpt is not None:
            ckpt.stopped(self.ledger)
        result.ledger = self.ledger.as_dict()
        result.summary = {"steps": ctx.step, **self.strategy.summary()}
        return result

    def _epoch_row(self, ctx: StepContext, epoch: int) -> dict:
        d = self.data
        train_loss, train_acc = self.evaluate(d.train_x, d.train_y)
        val_loss, val_acc = self.evaluate(d.val_x, d.val_y)
        test_loss, test_acc = self.evaluate(d.test_x, d.test_y)
        return {"epoch": epoch + 1, "step": ctx.step, "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
                "rho": self.strategy.rho, "grad_evals": self.ledger.grad_evals,
                "wall_s": self.ledger.elapsed()}
