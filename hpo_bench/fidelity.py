"""Hypergradient fidelity: how well does LETS's dM/dν estimate track the exact hypergradient?

Along ONE SAM (or ASAM) training trajectory at a fixed ρ, run by the common trainer with a probe
strategy (the probe's perturbation is the plain SAM/ASAM one, and its extra passes freeze BN
statistics and draw batches from the auxiliary streams, so the trajectory is the fixed-ρ run's), at
every N-th step t and at the SAME state S_t = (θ_t, BN buffers, SGD momentum) it computes

* ``lets_appendix`` — LETS's estimate ρ·(−η_t g_aᵀ diag(ĝ²) ε̂) (Appendix A form, g_b = H ε̂),
* ``lets_literal``  — the same with Algorithm 1's printed g_b (H ĝ/‖ĝ‖ for SAM, H T²ḡ_tr/‖Tḡ_tr‖ for ASAM),
* ``exact_k1``      — the exact dM/dν through the real step t (K = 1: the quantity LETS approximates,
                      with the true Hessian and the exact SGD-with-momentum step),
* ``exact_kK``      — the exact dM/dν through K steps: the real batch B_t followed by K−1 training
                      batches from the auxiliary training stream, with the cosine lrs of steps t … t+K−1,

and the **same-batch decomposition** of ``lets_appendix`` (:meth:`FidelityProbe._same_batch_terms`;
summarized in the report by :func:`hpo_bench.report.probe.same_batch_summary`): its training term on the batch just trained on (``lets_train_same``) and on
a fresh training batch (``lets_train_fresh``, with the whole fresh-batch estimate ``lets_fresh``),

all for the same metric M, the same validation batch B^vl_t (drawn per ``protocol``: the training set
by default, as LETS's default; ``protocol = "clean"`` in the method's params: the held-out split) and
(for LETS and K = 1) the same training batch B_t; M is evaluated on the last unrolled training batch (LETS's convention). The LETS
estimates come from the real step t → t+1 (g_a at the trainer's θ_{t+1}); ``M_lets`` and ``M_k1``
(the M of the real θ_{t+1} and of the K = 1 unroll) agree up to rounding, a built-in consistency check.
Note: ``capture_state`` runs inside the step, after its first pass, so the BN running statistics in S_t
already include B_t; train-mode losses do not depend on them.

Summary per estimator (LETS's two, and exact_k1) against each exact reference (exact_k1, exact_kK):
sign agreement rate, Spearman rank correlation over the probed steps (scipy.stats.spearmanr), median
relative error |est − ref|/|ref|, and the median magnitude ratio |est|/|ref| (diag(ĝ²) is not on the
Hessian's scale, so LETS's magnitudes are expected to be off; its sign and ranking are what Adam uses).

CLI: ``hpo-bench fidelity SPEC [--out DIR] [--set k=v ...] [--every N] [--unroll K] [--metric M]`` uses
the spec's data/model/train config, its first seed and its first method's ρ (ASAM if that method's
strategy name contains "asam", else SAM), and writes ``fidelity.parquet`` + ``fidelity_summary.parquet``
into ``<out>/<spec name>-<digest>/``.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hpo_bench.config import load_spec, settings
from hpo_bench.data import load_data
from hpo_bench.errors import SpecError
from hpo_bench.hypergrad import capture_state, hypergrad_higher
from hpo_bench.perturbation import asam_direction, asam_scale, sam_direction
from hpo_bench.sgd import SGDConfig
from hpo_bench.store import atomic_write_parquet, check_out_dir, run_dir_for
from hpo_bench.strategy import Strategy
from hpo_bench.trainer import Trainer, lr_at, resolve_device
from hpo_bench.upper import (
    METRICS,
    PROTOCOL_SOURCE,
    gb_direction,
    lets_dM_drho,
    metric_and_grad,
)

ESTIMATORS = ("lets_appendix", "lets_literal", "exact_k1")
REFERENCES = ("exact_k1", "exact_kK")


class FidelityProbe(Strategy):
    """Plain SAM/ASAM at a fixed ρ that, every ``every`` steps, records LETS and exact hypergradients."""

    name = "fidelity-probe"  # not registered: only used by this module

    def __init__(self, rho: float, kind: str = "sam", every: int = 5, unroll: int = 5, metric: str = "sq_gap",
                 xi: float = 0.01, protocol: str = "paper"):
        super().__init__(rho)
        self.kind, self.every, self.unroll, self.metric, self.xi = kind, every, unroll, metric, xi
        self.source = PROTOCOL_SOURCE[protocol]
        self.rows: list[dict] = []

    def setup(self, trainer):
        self.trainer = trainer
        self.sgd = SGDConfig.from_optimizer(trainer.optimizer)

    def perturbation(self, ctx, g):
        if self.kind == "sam":
            self.scales = None
            self.eps_hat = sam_direction(g)
            eps = sam_direction(g, self.rho)
        else:
            self.scales = asam_scale(ctx.names, ctx.params, self.xi)
            self.eps_hat = asam_direction(g, self.scales)
            eps = [self.rho * d for d in self.eps_hat]
        self.probing = ctx.step % self.every == 0
        if self.probing:
            tr = self.trainer
            state = capture_state(ctx.model, tr.optimizer)  # S_t: before the optimizer step
            self.val = ctx.val_batch(self.source)
            batches = [(ctx.x, ctx.y)] + [ctx.val_batch("train") for _ in range(self.unroll - 1)]
            total = tr.total_steps
            lrs = [lr_at(min(ctx.step + k, total), total, tr.cfg.lr, tr.cfg.schedule) for k in range(self.unroll)]
            kw = dict(rho=self.rho, kind=self.kind, xi=self.xi, metric=self.metric, sgd=self.sgd)
            t0 = time.perf_counter()
            self.k1 = hypergrad_higher(ctx.model, state, batches[:1], self.val, lrs[:1], **kw)
            t1 = time.perf_counter()
            self.kK = hypergrad_higher(ctx.model, state, batches, self.val, lrs, **kw)
            self.times = (t1 - t0, time.perf_counter() - t1)
        return eps

    def combine(self, ctx, g, g_hat):
        self.g_hat = g_hat
        return g_hat

    def after_update(self, ctx):
        if not self.probing:
            return
        lv, gv = ctx.loss_grad(*self.val)
        lt, gt = ctx.loss_grad()
        M, g_a = metric_and_grad(self.metric, lv, gv, lt, gt)
        est = {}
        for gb in ("appendix", "literal"):
            d = gb_direction(gb, self.kind, self.eps_hat, self.g_hat, gt, self.scales)
            est[f"lets_{gb}"] = float(self.rho * lets_dM_drho(g_a, self.g_hat, d, ctx.lr))
        est.update(self._same_batch_terms(ctx, lv, gv, lt, gt, est["lets_appendix"]))
        self.rows.append({"step": ctx.step, "epoch": ctx.epoch, "lr": ctx.lr, "rho": self.rho, "K": self.unroll,
                          "M_lets": float(M), "M_k1": self.k1.M, "M_kK": self.kK.M, **est,
                          "exact_k1": self.k1.dM_dnu, "exact_kK": self.kK.dM_dnu,
                          "time_k1_s": self.times[0], "time_kK_s": self.times[1]})
        self.g_hat = self.val = None


    def _lets(self, ctx, lv, gv, lt, gt) -> float:
        """LETS's Appendix-A estimate of dM/dν from these validation and training losses and gradients."""
        _, g_a = metric_and_grad(self.metric, lv, gv, lt, gt)
        return float(self.rho * lets_dM_drho(g_a, self.g_hat, self.eps_hat, ctx.lr))

    def _same_batch_terms(self, ctx, lv, gv, lt, gt, lets_same: float) -> dict:
        """The estimate split into its validation and training terms, with the training batch the step has
        just trained on (Algorithm 1, step 8) and with a fresh one from the auxiliary training stream.

        g_a is linear in the training gradient (every metric of :data:`METRICS`), so the validation term is
        the estimate with the training gradient set to zero and the training term the rest:
        ``lets_train_same`` = ``lets_appendix`` − that validation term; ``lets_fresh`` is the whole estimate
        with the fresh batch's loss and gradient, ``lets_train_fresh`` its training term.
        """
        zero = [torch.zeros_like(t) for t in gt]
        x, y = ctx.val_batch("train")
        lf, gf = ctx.loss_grad(x, y)
        fresh = self._lets(ctx, lv, gv, lf, gf)
        return {"lets_train_same": lets_same - self._lets(ctx, lv, gv, lt, zero), "lets_fresh": fresh,
                "lets_train_fresh": fresh - self._lets(ctx, lv, gv, lf, zero)}


def fidelity_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (estimator, reference): n, sign agreement, Spearman ρ (and p), median relative error, median |est|/|ref|."""
    from scipy.stats import spearmanr

    rows = []
    for est in ESTIMATORS:
        for ref in REFERENCES:
            if est == ref or est not in table or ref not in table:
                continue
            e, r = table[est].to_numpy(float), table[ref].to_numpy(float)
            ok = np.isfinite(e) & np.isfinite(r)
            e, r = e[ok], r[ok]
            nz = r != 0
            if len(e) >= 2 and np.ptp(e) > 0 and np.ptp(r) > 0:
                sp = spearmanr(e, r)
                rho_s, p = float(sp.statistic), float(sp.pvalue)
            else:
                rho_s = p = math.nan
            rows.append({"estimator": est, "reference": ref, "n": int(len(e)),
                         "sign_agreement": float(np.mean(np.sign(e) == np.sign(r))) if len(e) else math.nan,
                         "spearman": rho_s, "spearman_p": p,
                         "median_rel_error": float(np.median(np.abs(e[nz] - r[nz]) / np.abs(r[nz]))) if nz.any() else math.nan,
                         "median_abs_ratio": float(np.median(np.abs(e[nz]) / np.abs(r[nz]))) if nz.any() else math.nan})
    return pd.DataFrame(rows)


def run_fidelity(data, model_name: str, train_cfg, rho: float, seed: int = 0, *, kind: str = "sam", every: int = 5,
                 unroll: int = 5, metric: str = "sq_gap", xi: float = 0.01, protocol: str = "paper",
                 device="cpu", progress=None):
    """Train once at fixed ρ with :class:`FidelityProbe`; return (table, summary, RunResult)."""
    if every < 1 or unroll < 1:
        raise ValueError(f"fidelity: every={every}, unroll={unroll}; allowed: integers >= 1")
    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r}; allowed: {', '.join(METRICS)}")
    probe = FidelityProbe(rho, kind, every, unroll, metric, xi, protocol)
    trainer = Trainer(data, model_name, train_cfg, probe, seed, device, progress=progress)
    result = trainer.fit()
    table = pd.DataFrame(probe.rows)
    return table, fidelity_summary(table) if len(table) else pd.DataFrame(), result


# ----------------------------------------------------------------------------- CLI
def cmd_fidelity(args) -> int:
    spec = load_spec(args.spec, list(args.set or []))
    if args.every < 1 or args.unroll < 1:
        raise SpecError(f"--every/--unroll: {args.every}/{args.unroll}; allowed: integers >= 1")
    out = Path(args.out)
    check_out_dir(out)
    _, sspec = settings(spec)[0]
    method = sspec.methods[0]
    rho = method.rho[0] if isinstance(method.rho, list) else method.rho
    kind = "asam" if "asam" in method.strategy else "sam"
    metric = args.metric or method.params.get("metric", "sq_gap")
    xi = float(method.params.get("xi", 0.01))
    protocol = method.params.get("protocol", "paper")  # LETS's default validation stream
    data = load_data(sspec.data)
    cfg = sspec.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed = sspec.seeds[0]
    run_dir = run_dir_for(spec, out)
    print(f"hpo-bench: fidelity of {spec.name!r}: {kind.upper()} rho={rho}, metric={metric}, every {args.every} steps, "
          f"K=1 and K={args.unroll}, seed {seed} -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    table, summary, result = run_fidelity(data, sspec.model.name, cfg, rho, seed, kind=kind, every=args.every,
                                          unroll=args.unroll, metric=metric, xi=xi, protocol=protocol,
                                          device=resolve_device(cfg.device))
    atomic_write_parquet(run_dir / "fidelity.parquet", table)
    atomic_write_parquet(run_dir / "fidelity_summary.parquet", summary)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(summary.to_string(index=False) if len(summary) else "(no probed steps)")
    status = "" if result.status == "ok" else f"; run status {result.status}: {result.reason}"
    print(f"\n{len(table)} probed steps; wall time {time.perf_counter() - t0:.1f} s{status}; "
          f"results in {run_dir}/ (fidelity.parquet, fidelity_summary.parquet)")
    return 0

