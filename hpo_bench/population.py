"""Population training: P models that differ in seed and/or ρ, trained in one vectorized pass.

Member m is a trial (seed s_m, ρ_m; data, model, train config, strategy and params shared) and
follows its separate run on :class:`hpo_bench.trainer.Trainer` (METHODS.md §1): θ_m⁰ from
``torch.manual_seed(s_m)`` + ``create_model``; its own batch order, augmentation and auxiliary
streams (:mod:`hpo_bench.seeds`); per step, on its own batch B_m, with its own Strategy S_m::

    g_m = ∇L(B_m; θ_m)                BN: batch statistics; running r_m ← (1−μ) r_m + μ·(mean, unbiased var)
    ε_m = S_m.perturbation(g_m)       SAM ρ_m g/(‖g‖₂ + 1e-12); ASAM ρ_m T²g/(‖Tg‖₂ + 1e-12), T = |θ_m| + ξ
    ĝ_m = ∇L(B_m; θ_m + ε_m)          BN: batch statistics, running statistics untouched
    θ_m, b_m ← SGD(θ_m, b_m, S_m.combine(g_m, ĝ_m), η_t)        (:func:`hpo_bench.sgd.sgd_update`)
    S_m.after_update(…)               LETS: ∇L at θ_{t+1} on its batch of ``extra_order(s_m, source)``

Each pass runs once for all members: weights stacked along a leading dim (``stack_module_state``),
batches as (P, B, …), and Σ_m L_m differentiated by plain autograd (∂Σ_k L_k/∂θ_m = ∇L_m: members
share no parameter). The forward is compiled from the module tree: ``nn.Linear`` as
``torch.baddbmm``, the MNIST-1D CNNs' convolutions as their batched matmul
(:func:`hpo_bench.models.conv1d_stacked`), BatchNorm of P members × C channels as one
``F.batch_norm`` over P·C channels (member m's channel c is channel m·C + c: statistics, affine
maps and running statistics stay per member); other BN-free models run through ``vmap``. SAM/ASAM
perturb all members at once with their hooks' elementwise ops; other strategies' hooks run per
member on views of the stacked gradients; loss values they read are ``nll_loss`` of the member's
``log_softmax`` rows, as ``F.cross_entropy`` computes them. On CPU a population saves per-operation
overhead (MNIST-1D models: 2.5× at P = 8); for compute-bound ``fmnist_cnn`` it took 1.09× its runs.

Parity (tests/test_population.py; benchmarks/RESULTS.md "Population training"): in float64 every
member's metrics, status, ledger counts and curves equal its separate run to ≤ 1e-10 (measured ≤ 2e-15).
In float32 batched matmuls and BN sums over P·C channels round a few last bits unlike the single-model
kernels: measured ≤ 4e-7 in the final losses after 2–8 epochs (mnist1d_cnn, mnist1d_mlp, tiny_bn; ≤
1.2e-6 with LETS); training the BN CNN amplifies such bits to ~1e-3 after 4–8 epochs at lr 0.1, as much
as its own separate runs differ between 1 and 2 threads. A member whose training loss turns non-finite,
or whose strategy raises ``Diverged``, is recorded ``diverged`` at that step and leaves the population;
the others go on. ``max_wall_s`` applies to a member's share of the wall time. Cost: each member is
charged what its separate run is (grad and forward evals as computed); wall and device seconds of the
shared pass are split evenly among the members alive at each step (Σ_m wall_m = the pass's wall time);
rows carry ``batched_group`` = P.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hpo_bench import models, seeds, trainer
from hpo_bench.config import TrainConfig
from hpo_bench.data import to_device_async
from hpo_bench.execute import result_curves, result_row, trial_data
from hpo_bench.ledger import Ledger
from hpo_bench.memory import keep_freed_memory
from hpo_bench.perturbation import EPS, asam_T, bn_modules
from hpo_bench.sgd import SGDConfig, sgd_update
from hpo_bench.strategy import Diverged, Strategy, create_strategy, get_strategy_class
from hpo_bench.trial import Trial
from hpo_bench.upper import PROTOCOL_SOURCE

SUPPORTED = ("erm", "sam", "asam", "samar", "lets-sam", "lets-asam")
MAX_POPULATION = 32  # members per vectorized pass in units.run_batched (larger groups are split)
EVAL_ROWS = 1000  # evaluation: rows (members × eval batch) per stacked forward; more is slower on CPU


class Unsupported(ValueError):
    """A module the stacked forward cannot run."""


# ----------------------------------------------------------------------------- stacked forward
def _bn(h, st, prefix, mod, mode):
    """BatchNorm of P members on channel-last h (P, …, C) as one ``F.batch_norm`` over P·C channels.

    mode 'train': batch statistics, running statistics updated in place; 'frozen': batch
    statistics, running statistics untouched; 'eval': running statistics.
    """
    P, C = h.shape[0], h.shape[-1]
    rows = h.movedim(0, -2).reshape(-1, P * C)
    track = mod.running_mean is not None
    run = [st[prefix + n].view(-1) if track and mode != "frozen" else None for n in ("running_mean", "running_var")]
    aff = [st[prefix + n].reshape(-1) if mod.affine else None for n in ("weight", "bias")]
    out = F.batch_norm(rows, *run, *aff, mode != "eval" or not track, mod.momentum, mod.eps)
    return out.view(*h.shape[1:-1], P, C).movedim(-2, 0)


def _compile(module: nn.Module, prefix: str = ""):
    """``f(state, h, mode)``: ``module`` applied to P stacked members (state: stacked params and
    buffers by state_dict name; h: (P, B, …)). Raises :class:`Unsupported`."""
    kind = type(module)
    if kind in (models.MNIST1DCNN, models.MNIST1DCNNBN):
        bns = getattr(module, "bn", None)

        def cnn(st, x, mode):
            def conv(layer, h):
                _, stride, padding = models.CNN_CONVS[layer]
                h = models.conv1d_stacked(h, st[f"{prefix}{layer}.weight"], st[f"{prefix}{layer}.bias"], stride, padding)
                return h if bns is None else _bn(h, st, f"{prefix}bn.{layer}.", bns[layer], mode)

            lin = lambda h: models.linear_stacked(h, st[f"{prefix}linear.weight"], st[f"{prefix}linear.bias"])
            return models._cnn_forward(x.unsqueeze(-2) if x.dim() == 3 else x, conv, lin)  # (P,B,L) → (P,B,1,L)
        return cnn
    if kind is nn.Sequential:
        fns = [_compile(child, f"{prefix}{name}.") for name, child in module.named_children()]

        def seq(st, h, mode):
            for f in fns:
                h = f(st, h, mode)
            return h
        return seq
    if kind is nn.Linear:
        w, b = prefix + "weight", prefix + "bias"
        if module.bias is None:
            return lambda st, h, mode: torch.bmm(h, st[w].transpose(1, 2))
        return lambda st, h, mode: models.linear_stacked(h, st[w], st[b])
    if kind is nn.ReLU:
        return lambda st, h, mode: torch.relu(h)
    if kind is nn.Identity:
        return lambda st, h, mode: h
    if kind is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return lambda st, h, mode: h.flatten(2)
    if kind is nn.BatchNorm1d and module.momentum is not None:
        return lambda st, h, mode: _bn(h.movedim(2, -1), st, prefix, module, mode).movedim(-1, 2)
    raise Unsupported(f"{prefix or 'model'}: {kind.__name__}")


def stacked_program(model: nn.Module):
    """The stacked forward of ``model`` (see :func:`_compile`), ``vmap`` over the module for other
    BN-free, dropout-free models, or None when the population cannot run it."""
    try:
        return _compile(model)
    except Unsupported:
        if bn_modules(model) or any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
            return None
    call = vmap(lambda st, x: functional_call(model, st, (x,)), in_dims=(0, 0))
    return lambda st, h, mode: call(st, h)


# ----------------------------------------------------------------------------- grouping
def train_key(t: Trial) -> str:
    return json.dumps([t.strategy, t.params, t.data, t.model, t.train], sort_keys=True, default=str)


def can_train_together(trials: list[Trial]) -> bool:
    """True if ``trials`` share model, data, train config, strategy and params (differing only in ρ
    and/or seed), the strategy is in :data:`SUPPORTED`, no per-run memory budget or checkpoint is set (they
    cannot be attributed to one member of a shared pass: such runs train one by one) and the population can run the model."""
    if not trials or trials[0].strategy not in SUPPORTED or len({train_key(t) for t in trials}) != 1:
        return False
    t0, data = trials[0], trial_data(trials[0])
    if (cfg := TrainConfig(**t0.train)).max_mem_mb or cfg.checkpoint_every:
        return False  # budgets and mid-run checkpoints are per run: a population has neither
    cls = get_strategy_class(t0.strategy)
    if cls.uses_validation_split(cls.Params(**t0.params)) and len(data.val_y) == 0:
        return False  # the separate runs report this error
    with torch.device("meta"):
        probe = models.create_model(t0.model["name"], data.num_classes, data.input_shape)
    return stacked_program(probe) is not None


# ----------------------------------------------------------------------------- members
class _Streams:
    """A member's random streams (:mod:`hpo_bench.seeds`), advanced as its trainer advances them."""

    def __init__(self, seed: int):
        self.order, self.aug = seeds.train_order(seed), seeds.train_augment(seed)
        self.extra = {s: seeds.extra_order(seed, s) for s in seeds.EXTRA_SOURCES}
        self.extra_aug = seeds.extra_augment(seed)
        self.perm, self.pos = dict.fromkeys(seeds.EXTRA_SOURCES), dict.fromkeys(seeds.EXTRA_SOURCES, 0)

    def extra_indices(self, source: str, n: int, bs: int, dev):
        """Next ``bs`` indices of the auxiliary stream ``source`` (reshuffled when exhausted)."""
        if self.perm[source] is None or self.pos[source] + bs > n:
            self.perm[source] = to_device_async(torch.randperm(n, generator=self.extra[source]), dev)
            self.pos[source] = 0
        self.pos[source] += bs
        return self.perm[source][self.pos[source] - bs: self.pos[source]]


class _MemberContext:
    """What member m's strategy sees: the :class:`~hpo_bench.trainer.StepContext` interface on its
    views of the stacked state. Passes it asks for in ``after_update`` are served from the vectorized
    passes the population ran for it (:meth:`Population.serve_after_update`), in the order planned."""

    def __init__(self, pop: "Population", j: int):
        self.pop, self.j, self.trainer = pop, j, pop.facade
        self.names, self.ledger, self.total_steps = pop.names, pop.ledgers[j], pop.total_steps
        self.params = self.x = self.y = self.logp = None
        self.step = self.epoch = 0
        self.lr = pop.cfg.lr
        self.served: list = []

    @property
    def first_loss(self) -> torch.Tensor:
        """L(B_t; θ_t) of the step's first pass, as the trainer's ``F.cross_entropy`` computes it."""
        return F.nll_loss(self.logp, self.y)

    def _take(self, kind, what):
        """The next planned answer, which must be of ``kind`` (for a pass: on the batch ``what``)."""
        got, answer = self.served.pop(0) if self.served else (None, (None,))
        if got != kind or (kind == "grad" and answer[0] is not what):
            raise RuntimeError(f"population: {self.pop.strategy_name} asked for a pass the population did not plan")
        return answer

    def val_batch(self, source: str = "val"):
        return self._take(("batch", source), source)

    def loss_grad(self, x=None, y=None, *, update_bn: bool = False, create_graph: bool = False):
        _, loss, grads = self._take("grad" if not (update_bn or create_graph) else "other", x)
        self.ledger.charge_grad()
        return loss, grads


def _stack(per_member: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(ts) for ts in zip(*per_member)]


class Population:
    """P trials trained together (see the module docstring); :meth:`fit` returns [(row, curves)]."""

    def __init__(self, trials: list[Trial], device=None):
        keep_freed_memory()
        t0 = trials[0]
        self.trials, self.cfg = trials, TrainConfig(**t0.train)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.dev = trainer.resolve_device(device or self.cfg.device)
        self.cuda, self.dtype = self.dev.type == "cuda", trainer.train_dtype(self.cfg)
        self.amp = bool(self.cfg.amp and self.cuda and self.dtype == torch.float32)
        self.data = trial_data(t0).to(self.dev)
        nets = []
        for t in trials:  # each member's initial weights, as its trainer draws them
            torch.manual_seed(t.seed)
            nets.append(models.create_model(t0.model["name"], self.data.num_classes, self.data.input_shape).to(self.dev, self.dtype))
        self.names = [n for n, p in nets[0].named_parameters() if p.requires_grad]
        params, buffers = stack_module_state(nets)
        self.params = [params[k].detach().clone() for k in self.names]
        self.buffers = {k: v.clone() for k, v in buffers.items()}
        self.program = stacked_program(nets[0])
        if self.program is None:
            raise ValueError(f"model.name: {t0.model['name']!r} cannot be trained as a population")
        self.momentum = [None] * len(self.names)
        self.n_train = len(self.data.train_y)
        self.steps_per_epoch = max(1, math.ceil(self.n_train / self.cfg.batch_size))
        self.total_steps = self.steps_per_epoch * self.cfg.epochs
        self.strategy_name = t0.strategy
        self.facade = SimpleNamespace(device=self.dev, cfg=self.cfg, data=self.data, dtype=self.dtype,
                                      total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
        self.strategies: list[Strategy] = [create_strategy(t.strategy, t.rho, t.params) for t in trials]
        self.ledgers = [Ledger(device=self.dev.type) for _ in trials]
        self.wall = [0.0] * len(trials)
        self.streams = [_Streams(t.seed) for t in trials]
        self.results = [trainer.RunResult() for _ in trials]
        self.ctxs = [_MemberContext(self, j) for j in range(len(trials))]
        self.alive = list(range(len(trials)))  # trial indices of the members still training
        self.combines = type(self.strategies[0]).combine is not Strategy.combine
        self.after = type(self.strategies[0]).after_update is not Strategy.after_update

    # -- passes --------------------------------------------------------------------------------
    def logits(self, params, x, mode: str, part: slice = slice(None)) -> torch.Tensor:
        """(P, B, classes) of the alive members (those in ``part``) on x (P, B, …), in ≥ float32."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp) if self.cuda else nullcontext():
            out = self.program({**dict(zip(self.names, params)), **{k: v[part] for k, v in self.buffers.items()}}, x, mode)
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out

    def loss_grad(self, params, x, y, mode: str = "frozen"):
        """(L_m (P,), ∇L_m stacked per tensor, log-probabilities); one grad eval charged per member.
        ∇L_m is bit for bit ``F.cross_entropy``'s on the member alone; L_m may differ in the last bit."""
        leaves = [p.detach().requires_grad_(True) for p in params]
        logp = F.log_softmax(self.logits(leaves, x, mode), -1)
        losses = F.nll_loss(logp.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        grads = torch.autograd.grad(losses.sum(), leaves)
        for j in self.alive:
            self.ledgers[j].charge_grad()
        return losses.detach(), list(grads), logp.detach()

    def prep(self, x, train: bool, gens=None):
        """The trainer's ``_prep`` for stacked (P, B, …) batches; augmentation per member."""
        if train and self.data.augment is not None:
            x = torch.stack([self.data.augment(xm, g) for xm, g in zip(x.unbind(0), gens)])
        return self.data.normalize(x).to(self.dtype)

    def train_batch(self, perms, b: int):
        bs = self.cfg.batch_size
        idx = torch.stack([perm[b * bs:(b + 1) * bs] for perm in perms])
        gens = [self.streams[j].aug for j in self.alive]
        return self.prep(self.data.train_x[idx], True, gens), self.data.train_y[idx]

    def serve_after_update(self, x, y) -> None:
        """Run, vectorized, the passes every member's ``after_update`` asks for and queue the answers
        in order (LETS: its validation batch, then the step's batch at θ_{t+1} unless reused next step)."""
        s, sources = self.strategies[self.alive[0]], []
        if s.name in ("lets-sam", "lets-asam"):
            sources = [PROTOCOL_SOURCE[s.params.protocol]] + (["step"] if s.need_train_pass and not s.params.reuse_next_grad else [])
        for ctx in (self.ctxs[j] for j in self.alive):
            ctx.served = []
        for source in sources:
            if source == "step":
                bx, by = x, y
                batches = [(None, None)] * len(self.alive)
            else:
                xs, ys = (self.data.val_x, self.data.val_y) if source == "val" else (self.data.train_x, self.data.train_y)
                bs = min(self.cfg.batch_size, len(ys))
                idx = [self.streams[j].extra_indices(source, len(ys), bs, self.dev) for j in self.alive]
                gens = [self.streams[j].extra_aug for j in self.alive]
                bx, by = self.prep(xs[torch.stack(idx)], source == "train", gens), ys[torch.stack(idx)]
                batches = list(zip(bx.unbind(0), by.unbind(0)))
            _, grads, logp = self.loss_grad(self.params, bx, by)
            for j in self.alive:  # charged when the strategy asks for it
                self.ledgers[j].grad_evals -= 1
            for i, (j, batch) in enumerate(zip(self.alive, batches)):
                if source != "step":
                    self.ctxs[j].served.append((("batch", source), batch))
                key = None if source == "step" else batch[0]  # the step's batch is asked for as loss_grad()
                self.ctxs[j].served.append(("grad", (key, F.nll_loss(logp[i], by[i]), [g[i] for g in grads])))

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self, x, y, lr: float, step: int, epoch: int) -> tuple[torch.Tensor, dict]:
        """One step of every alive member; returns (first-pass losses, {trial index: Diverged})."""
        alive = self.alive
        loss, g, logp = self.loss_grad(self.params, x, y, mode="train")
        if self.strategy_name in ("sam", "asam") and not self.combines and not self.after:
            eps = self.fixed_eps(g)  # the ops of the strategies' own perturbation, for all members at once
        else:
            views, g_rows = ([list(ts) for ts in zip(*(t.unbind(0) for t in ts_))] for ts_ in (self.params, g))
            eps = []
            for i, j in enumerate(alive):
                ctx = self.ctxs[j]
                ctx.params, ctx.x, ctx.y, ctx.logp, ctx.step, ctx.epoch, ctx.lr = views[i], x[i], y[i], logp[i], step, epoch, lr
                eps.append(self.strategies[j].perturbation(ctx, g_rows[i]))
            eps = None if eps[0] is None else _stack(eps)  # a supported strategy perturbs every member or none
        g_hat = None if eps is None else self.loss_grad([p + d for p, d in zip(self.params, eps)], x, y)[1]
        if self.combines:
            g_hat_rows = [None] * len(alive) if g_hat is None else [list(ts) for ts in zip(*(t.unbind(0) for t in g_hat))]
            update = _stack([self.strategies[j].combine(self.ctxs[j], g_rows[i], g_hat_rows[i]) for i, j in enumerate(alive)])
        else:
            update = g if g_hat is None else g_hat
        sgd = SGDConfig(self.cfg.momentum, self.cfg.weight_decay)
        with torch.no_grad():
            for k, (p, d) in enumerate(zip(self.params, update)):
                self.params[k], self.momentum[k] = sgd_update(p, d, self.momentum[k], lr, sgd)
        failed = {}
        if self.after:
            self.serve_after_update(x, y)
            views = [list(ts) for ts in zip(*(p.unbind(0) for p in self.params))]
            for i, j in enumerate(alive):
                self.ctxs[j].params = views[i]
                try:
                    self.strategies[j].after_update(self.ctxs[j])
                except Diverged as err:
                    failed[j] = err
        return loss, failed

    def fixed_eps(self, g: list) -> list:
        """SAM ε_m = ρ_m g_m/(‖g_m‖ + 1e-12), ASAM ε_m = ρ_m T(T g_m)/(‖T g_m‖ + 1e-12), T = |θ_m| + ξ on
        weights: the elementwise ops of :func:`sam_direction` / :func:`asam_direction` with per-member
        scalars broadcast; ‖·‖ per member as norm-of-per-tensor-norms, which rounds as ``global_norm``."""
        s0 = self.strategies[self.alive[0]]
        rho = torch.tensor([self.strategies[j].rho for j in self.alive], dtype=g[0].dtype, device=self.dev)
        b = lambda v, t: v.view(-1, *([1] * (t.dim() - 1)))
        T = [asam_T(n, p, s0.params.xi) if s0.name == "asam" else None for n, p in zip(self.names, self.params)]
        tg = [t if T_ is None else T_ * t for t, T_ in zip(g, T)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.flatten(1), dim=1) for t in tg], 1), dim=1)
        inv = (norm + EPS).reciprocal()  # rho / x is evaluated as x.reciprocal() * rho
        if s0.name == "sam":
            return [t * b(inv * rho, t) for t in g]
        return [((t if T_ is None else T_ * t) * b(inv, t)) * b(rho, t) for t, T_ in zip(tg, T)]

    def stop(self, j: int, status: str, reason: str, step: int) -> None:
        res = self.results[j]
        res.status, res.reason, res.stop_step = status, reason, step
        res.summary = {"steps": step, **self.strategies[j].summary()}

    def keep(self, perms: list) -> list:
        """Drop the members stopped at this step from the stacked state (and their batch orders)."""
        pos = [i for i, j in enumerate(self.alive) if self.results[j].status == "ok"]
        if len(pos) < len(self.alive):
            idx = torch.tensor(pos, device=self.dev, dtype=torch.long)
            self.params = [p[idx] for p in self.params]
            self.momentum = [None if b is None else b[idx] for b in self.momentum]
            self.buffers = {k: v[idx] for k, v in self.buffers.items()}
            self.alive = [self.alive[i] for i in pos]
        return [perms[i] for i in pos]

    def tick(self) -> None:
        """Split the wall time since the last tick evenly among the alive members."""
        now = time.perf_counter()
        for j in self.alive:
            self.wall[j] += (now - self._t) / len(self.alive)
        self._t = now

    @torch.no_grad()
    def evaluate(self, xs, ys) -> list[tuple[float, float]]:
        """Per alive member (mean loss, accuracy) over a split in eval mode, summed as the trainer sums."""
        n, P = len(ys), len(self.alive)
        if n == 0:
            return [(math.nan, math.nan)] * P
        sums, correct, bs = [torch.zeros((), device=self.dev, dtype=torch.float64)] * P, [0] * P, self.cfg.eval_batch_size
        chunk = max(1, EVAL_ROWS // bs)  # members per forward: the population's tensors stay near a run's size
        for i in range(0, n, bs):
            x, y = self.prep(xs[i:i + bs], False), ys[i:i + bs]
            for c in range(0, P, chunk):
                part = slice(c, min(c + chunk, P))
                out = self.logits([p[part] for p in self.params], x.expand(part.stop - c, *x.shape), "eval", part)
                for m, (lp, o) in enumerate(zip(F.log_softmax(out, -1).unbind(0), out.unbind(0)), start=c):
                    sums[m] = sums[m] + F.nll_loss(lp, y, reduction="sum").double()
                    correct[m] += int((o.argmax(1) == y).sum())
            for j in self.alive:
                self.ledgers[j].charge_fwd()
        return [(float(s) / n, c / n) for s, c in zip(sums, correct)]

    def epoch_rows(self, epoch: int, step: int) -> None:
        d = self.data
        splits = [self.evaluate(d.train_x, d.train_y), self.evaluate(d.val_x, d.val_y), self.evaluate(d.test_x, d.test_y)]
        self.tick()
        for i, j in enumerate(self.alive):
            (trl, tra), (vl, va), (tel, tea) = (s[i] for s in splits)
            self.results[j].epochs.append({"epoch": epoch + 1, "step": step, "train_loss": trl, "train_acc": tra,
                                           "val_loss": vl, "val_acc": va, "test_loss": tel, "test_acc": tea,
                                           "rho": self.strategies[j].rho, "grad_evals": self.ledgers[j].grad_evals,
                                           "wall_s": self.wall[j]})

    def fit(self) -> list[tuple[dict, object]]:
        cfg, P = self.cfg, len(self.trials)
        for s in self.strategies:
            s.setup(self.facade)
        shared = Ledger(device=self.dev.type)
        shared.start()
        self._t, step = time.perf_counter(), 0
        for epoch in range(cfg.epochs):
            if not self.alive:
                break
            perms = [to_device_async(torch.randperm(self.n_train, generator=self.streams[j].order), self.dev) for j in self.alive]
            for b in range(self.steps_per_epoch):
                x, y = self.train_batch(perms, b)
                loss, failed = self.train_step(x, y, trainer.lr_at(step, self.total_steps, cfg.lr, cfg.schedule), step, epoch)
                for j, err in failed.items():
                    self.stop(j, "diverged", str(err), step)
                if not self.cuda or step % trainer.CUDA_SYNC_EVERY == 0:
                    for j, value in zip(self.alive, loss.tolist()):
                        if self.results[j].status == "ok" and not math.isfinite(value):
                            self.stop(j, "diverged", f"non-finite training loss ({value})", step)
                self.tick()
                for j in self.alive if cfg.max_wall_s and self.wall[self.alive[0]] > cfg.max_wall_s else ():
                    if self.results[j].status == "ok":
                        self.stop(j, "timeout", f"wall time over max_wall_s={cfg.max_wall_s}", step)
                perms = self.keep(perms)
                if step % cfg.trace_every == 0:
                    for j in self.alive:
                        tr = self.strategies[j].trace()
                        if tr:
                            self.results[j].traces.append({"step": step, "epoch": epoch, **tr})
                step += 1
                if not self.alive:
                    break
            if self.alive and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                self.epoch_rows(epoch, step)
        for j in self.alive:
            self.results[j].summary = {"steps": step, **self.strategies[j].summary()}
        self.tick()
        shared.stop()
        total = sum(self.wall) or 1.0
        out = []
        for j, (trial, res) in enumerate(zip(self.trials, self.results)):
            lg = self.ledgers[j]
            res.ledger = {"grad_evals": lg.grad_evals, "fwd_evals": lg.fwd_evals, "wall_s": self.wall[j],
                          "device_s": shared.device_s * self.wall[j] / total, "peak_mem_bytes": shared.peak_mem_bytes}
            res.summary["batched_group"] = P
            out.append((result_row(trial, res, self.dev), result_curves(trial.run_id, res)))
        return out


def train_population(trials: list[Trial], device=None) -> list[tuple[dict, object]]:
    """Train ``trials`` (see :func:`can_train_together`) as one population; [(row, curves)] in trial order."""
    return Population(trials, device).fit()
