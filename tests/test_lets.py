"""LETS-SAM / LETS-ASAM: the hypergradient estimate against an independent autograd computation, metric
gradients, reduction to SAM/ASAM at beta = 0 (bit for bit), cost, ρ₀ range, divergence, the ν learner."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hpo_bench.config import SpecError, validate_spec
from hpo_bench.trainer import StepContext, Trainer, lr_at
from hpo_bench.strategy import create_strategy
from hpo_bench.strategy import Diverged
from hpo_bench.upper import metric_and_grad
from searchers.lets import RhoLearner, RhoLearnerParams
from tests.conftest import synthetic_bundle, train_cfg


def make_trainer(strategy, rho, params=None, dtype=torch.float32, model="tiny_bn", seed=0, **cfg):
    tr = Trainer(synthetic_bundle(dtype=dtype), model, train_cfg(**cfg), create_strategy(strategy, rho, params), seed=seed)
    if dtype == torch.float64:
        tr.model.double()
    return tr


def strip(res):
    return [{k: v for k, v in e.items() if k not in ("wall_s", "grad_evals")} for e in res.epochs]


def _frozen_copy(model, params=None):
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.momentum = 0.0
    if params is not None:
        with torch.no_grad():
            for p, v in zip(m.parameters(), params):
                p.copy_(v)
    return m


def _metric(metric, lv, lt):
    return {"sq_gap": 0.5 * (lv - lt) ** 2, "gap": lv - lt, "val_loss": lv}[metric]


@pytest.mark.parametrize("metric", ["sq_gap", "gap", "val_loss"])
@pytest.mark.parametrize("gb", ["appendix", "literal"])
@pytest.mark.parametrize("kind,rho", [("sam", 0.1), ("asam", 0.5)])
def test_lets_estimate_equals_direct_autograd_computation(kind, rho, gb, metric):
    """dM/dν of the strategy's trace after one step == −η ρ g_aᵀ diag(ĝ²) u, all recomputed here by hand."""
    tr = make_trainer(f"lets-{kind}", rho, {"beta": 0.0, "gb": gb, "metric": metric}, dtype=torch.float64)
    x, y = tr.data.train_x[:16], tr.data.train_y[:16]
    xv, yv = tr.data.val_x[:16], tr.data.val_y[:16]
    eta, wd, xi = lr_at(0, tr.total_steps, tr.cfg.lr, "cosine"), tr.cfg.weight_decay, 0.01
    ref = copy.deepcopy(tr.model)  # θ_0, before the step
    names = [n for n, _ in ref.named_parameters()]

    tr.strategy.setup(tr)
    ctx = StepContext(tr)
    ctx.x, ctx.y, ctx.lr = x, y, eta
    ctx.val_batch = lambda source: (xv, yv)  # a fixed validation batch for the comparison
    for grp in tr.optimizer.param_groups:
        grp["lr"] = eta
    tr.train_step(ctx)
    trace = tr.strategy.trace()

    # --- independent computation with plain autograd -------------------------------------------
    theta0 = [p.detach().clone() for p in ref.parameters()]
    g = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    if kind == "sam":
        T = [torch.ones_like(t) for t in theta0]
    else:
        T = [t.abs() + xi if "weight" in n else torch.ones_like(t) for n, t in zip(names, theta0)]
    tg_norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(T, g)))
    e_hat = [ti * ti * gi / (tg_norm + 1e-12) for ti, gi in zip(T, g)]
    pert = _frozen_copy(ref, [t + rho * e for t, e in zip(theta0, e_hat)])
    g_hat = torch.autograd.grad(F.cross_entropy(pert(x), y), list(pert.parameters()))
    theta1 = [t - eta * (gh + wd * t) for t, gh in zip(theta0, g_hat)]  # first SGD step: buffer = d
    for a, b in zip(theta1, tr.params):
        torch.testing.assert_close(b.detach(), a, rtol=1e-12, atol=1e-12)
    m1 = _frozen_copy(ref, theta1)
    p1 = list(m1.parameters())
    lv, lt = F.cross_entropy(m1(xv), yv), F.cross_entropy(m1(x), y)
    M = _metric(metric, lv, lt)
    g_a = torch.autograd.grad(M, p1, retain_graph=True)
    if gb == "appendix":
        u = e_hat
    elif kind == "sam":
        nrm = torch.sqrt(sum((gh ** 2).sum() for gh in g_hat))
        u = [gh / (nrm + 1e-12) for gh in g_hat]
    else:
        g_tr = torch.autograd.grad(lt, p1)
        nrm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(T, g_tr)))
        u = [ti * ti * gi / (nrm + 1e-12) for ti, gi in zip(T, g_tr)]
    expected = -eta * rho * sum((a * gh ** 2 * ui).sum() for a, gh, ui in zip(g_a, g_hat, u))
    assert trace["dM_dnu"] == pytest.approx(float(expected), rel=1e-9)
    assert trace["metric_M"] == pytest.approx(float(M.detach()), rel=1e-10)
    assert trace["rho"] == rho
    if gb == "literal":  # the two variants really differ
        other = -eta * rho * sum((a * gh ** 2 * e).sum() for a, gh, e in zip(g_a, g_hat, e_hat))
        assert float(other) != pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("metric", ["sq_gap", "gap", "val_loss"])
def test_metric_gradient_matches_autograd_of_M(metric):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    params = list(model.parameters())
    xv, yv = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    xt, yt = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    lv, lt = F.cross_entropy(model(xv), yv), F.cross_entropy(model(xt), yt)
    gv, gt = torch.autograd.grad(lv, params, retain_graph=True), torch.autograd.grad(lt, params, retain_graph=True)
    M, g_a = metric_and_grad(metric, lv, gv, lt, gt)
    M_ref = _metric(metric, lv, lt)
    for a, b in zip(g_a, torch.autograd.grad(M_ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert float(M) == pytest.approx(float(M_ref.detach()), rel=1e-14)


@pytest.mark.parametrize("lets,base,rho,protocol", [("lets-sam", "sam", 0.05, "clean"), ("lets-asam", "asam", 0.5, "clean")])
def test_clean_protocol_with_beta_zero_is_sam_and_costs_four_per_step(lets, base, rho, protocol):
    """The contract test checks the default (paper) protocol's reduction; this one the held-out validation stream."""
    a = make_trainer(base, rho, epochs=3)
    ra = a.fit()
    b = make_trainer(lets, rho, {"beta": 0.0, "protocol": protocol}, epochs=3)
    rb = b.fit()
    assert ra.status == rb.status == "ok"
    assert strip(ra) == strip(rb)
    assert all(torch.equal(p, q) for p, q in zip(a.params, b.params))
    bufs_a, bufs_b = dict(a.model.named_buffers()), dict(b.model.named_buffers())
    for k in bufs_a:  # running stats identical; num_batches_tracked counts passes and is unused
        if "num_batches_tracked" not in k:
            assert torch.equal(bufs_a[k], bufs_b[k])
    assert rb.ledger["grad_evals"] == 4 * b.total_steps
    assert rb.summary["rho_final"] == rho
    assert len(rb.traces) == b.total_steps and all(t["rho"] == rho for t in rb.traces)
    assert all(math.isfinite(t["dM_dnu"]) for t in rb.traces)


def test_val_loss_metric_skips_the_training_pass():
    tr = make_trainer("lets-sam", 0.05, {"beta": 0.0, "metric": "val_loss"}, epochs=1)
    assert tr.fit().ledger["grad_evals"] == 3 * tr.total_steps


@pytest.mark.parametrize("strategy", ["lets-sam", "lets-asam"])
@pytest.mark.parametrize("rho0", [1e-3, 0.05, 1.0, 5.0])
def test_rho0_range_runs(strategy, rho0):
    res = make_trainer(strategy, rho0, {"beta": 0.05}, epochs=2).fit()
    assert res.status == "ok", res.reason
    assert 0 < res.summary["rho_final"] < math.inf and res.summary["rho_final"] != rho0


@pytest.mark.parametrize("strategy", ["lets-sam", "lets-asam"])
def test_huge_beta_ends_as_diverged_with_reason(strategy):
    res = make_trainer(strategy, 0.05, {"beta": 1e300}, epochs=2).fit()
    assert res.status == "diverged" and "rho" in res.reason and res.stop_step == 0
    assert math.isnan(res.epochs[0]["val_acc"]) if res.epochs else True


def test_rho_learner_adam_step_schedule_and_divergence():
    p = RhoLearnerParams(beta=0.01, gamma=0.5, decay="epoch")
    lrn = RhoLearner(0.05, p)
    assert lrn.rho == 0.05  # exactly rho0 until nu moves
    lrn.update(3e-7, step=0, epoch=0)  # first bias-corrected Adam step, relative ε: Δν = −lr·g/(|g|(1 + eps))
    assert lrn.nu == pytest.approx(math.log(0.05) - 0.01 / (1 + 1e-8), rel=1e-12)
    old = RhoLearner(0.05, RhoLearnerParams(beta=0.01, adam_eps_mode="absolute"))
    old.update(3e-7, step=0, epoch=0)  # the absolute ε (torch.optim.Adam's): Δν = −lr·g/(|g| + eps)
    assert old.nu == pytest.approx(math.log(0.05) - 0.01 * 3e-7 / (3e-7 + 1e-8), rel=1e-12)
    assert lrn.rho == pytest.approx(math.exp(lrn.nu), rel=1e-15) and lrn.rho < 0.05  # dM/dν > 0 shrinks ρ
    assert lrn.lr(step=100, epoch=3) == pytest.approx(0.01 * 0.5 ** 3)
    assert RhoLearner(0.05, RhoLearnerParams(beta=0.01, gamma=0.5, decay="step")).lr(step=4, epoch=0) == pytest.approx(0.01 / 16)
    frozen = RhoLearner(0.05, RhoLearnerParams(beta=0.0))
    frozen.update(float("nan"), 0, 0)
    assert frozen.rho == 0.05
    with pytest.raises(Diverged, match="non-finite hypergradient"):
        RhoLearner(0.05, p).update(float("inf"), 0, 0)
    with pytest.raises(Diverged, match="rho"):
        RhoLearner(0.05, RhoLearnerParams(beta=1e10)).update(-1.0, 0, 0)  # exp(1e10) overflows


def test_relative_adam_eps_makes_nu_invariant_to_the_hypergradient_scale():
    """Relative ε: the ν trajectory is the same for dM/dν and 1e-12·dM/dν (LETS's late-training magnitudes
    fall below 1e-8); the absolute ε shrinks the steps of the tiny ones instead."""
    g = torch.Generator().manual_seed(0)
    grads = (torch.randn(300, generator=g, dtype=torch.float64) + 0.3).tolist()
    p = RhoLearnerParams(beta=0.01)
    big, tiny = RhoLearner(0.05, p), RhoLearner(0.05, p)
    for t, x in enumerate(grads):
        big.update(x, t, 0)
        tiny.update(1e-12 * x, t, 0)
        assert tiny.nu == pytest.approx(big.nu, rel=1e-9, abs=1e-12)
    old_big, old_tiny = (RhoLearner(0.05, RhoLearnerParams(beta=0.01, adam_eps_mode="absolute")) for _ in range(2))
    for t, x in enumerate(grads):
        old_big.update(x, t, 0)
        old_tiny.update(1e-12 * x, t, 0)
    drift = lambda lrn: abs(lrn.nu - math.log(0.05))
    assert drift(old_tiny) < 1e-3 * drift(old_big)  # the absolute ε stalls ν
    assert drift(big) <= 0.01 * len(grads) * 0.1 / math.sqrt(0.001)  # |Δν| ≤ β(1 − β₁)/√(1 − β₂) per update
    steady = RhoLearner(0.05, p)
    for t in range(100):
        steady.update(1e-12, t, 0)  # constant sign and scale: |Δν| = β per update, ν moves β·T
    assert math.log(0.05) - steady.nu == pytest.approx(0.01 * 100, rel=1e-6)
    zero = RhoLearner(0.05, p)
    zero.update(0.0, 0, 0)
    assert zero.rho == 0.05  # v̂ = 0: no step, no 0/0


def test_spec_validation_of_lets_params():
    raw = {"name": "x", "methods": [{"strategy": "lets-sam", "rho": 0.05, "params": {"gb": "literal", "metric": "gap"}}]}
    spec = validate_spec(raw)
    assert spec.methods[0].params["gb"] == "literal" and spec.methods[0].params["beta"] == 1e-4
    assert spec.methods[0].params["protocol"] == "paper" and spec.methods[0].params["adam_eps_mode"] == "relative"
    for bad in ({"metric": "loss"}, {"beta": -1.0}, {"gamma": 0.0}, {"protocol": "test"}, {"gb": "x"},
                {"adam_eps_mode": "none"}):
        raw["methods"][0]["params"] = bad
        with pytest.raises(SpecError, match="methods\\[0\\].params"):
            validate_spec(raw)


def test_reuse_next_grad_variant_costs_three_passes_and_uses_the_next_first_gradient():
    from hpo_bench.trainer import Trainer
    from hpo_bench.strategy import create_strategy
    from tests.conftest import synthetic_bundle, train_cfg

    tr = Trainer(synthetic_bundle(), "tiny_bn", train_cfg(epochs=2),
                 create_strategy("lets-sam", 0.05, {"beta": 0.05, "reuse_next_grad": True}), seed=0)
    res = tr.fit()
    assert res.status == "ok"
    assert res.ledger["grad_evals"] == 3 * tr.total_steps
    rhos = [t["rho"] for t in res.traces]
    assert rhos[0] == 0.05 and rhos[1] != 0.05 and len(set(rhos)) > 2  # step 0 update applied at step 1 start, as in LETS
    # with beta = 0 it is still SAM bit for bit
    frozen = Trainer(synthetic_bundle(), "tiny_bn", train_cfg(epochs=2),
                     create_strategy("lets-sam", 0.05, {"beta": 0.0, "reuse_next_grad": True}), seed=0).fit()
    sam = Trainer(synthetic_bundle(), "tiny_bn", train_cfg(epochs=2), create_strategy("sam", 0.05), seed=0).fit()
    strip = lambda r: [{k: v for k, v in e.items() if k not in ("wall_s", "grad_evals")} for e in r.epochs]
    assert strip(frozen) == strip(sam)
