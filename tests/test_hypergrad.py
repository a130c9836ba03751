"""Exact unrolled hypergradients: finite differences, higher vs torch.func, the K = 1 Hessian identity,
the online hypergrad-sam strategy (unroll leaves the run untouched), and the fidelity analysis."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from hpo_bench.hypergrad import capture_state, hypergrad_func, hypergrad_higher, hypergrad_recompute
from hpo_bench.sgd import SGDConfig
from hpo_bench.models import create_model
from hpo_bench.trainer import StepContext, Trainer, lr_at
from hpo_bench.strategy import create_strategy
from tests.conftest import ROOT, synthetic_bundle, train_cfg

D = torch.float64


def setup_problem(K, seed=0, with_momentum=True, n=16, dim=6, classes=3):
    """tiny_bn (BatchNorm) in float64 at a random state with non-trivial BN stats and momentum buffers."""
    torch.manual_seed(seed)
    model = create_model("tiny_bn", classes, (dim,)).to(D)
    model.train()
    with torch.no_grad():  # non-default running stats, so buffers matter if they were (wrongly) used
        model(torch.randn(32, dim, dtype=D) * 2 + 1)
    state = capture_state(model)
    if with_momentum:
        state.momentum = [0.05 * torch.randn_like(p) for p in state.params]
    g = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randn(n, dim, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g)) for _ in range(K)]
    val = (torch.randn(n, dim, generator=g, dtype=D), torch.randint(0, classes, (n,), generator=g))
    lrs = [0.2 * (1 - 0.1 * k) for k in range(K)]
    return model, state, batches, val, lrs


def central_fd(model, state, batches, val, lrs, rho, h=1e-5, **kw):
    nu = math.log(rho)
    mp = hypergrad_higher(model, state, batches, val, lrs, nu=nu + h, differentiate=False, **kw)
    mm = hypergrad_higher(model, state, batches, val, lrs, nu=nu - h, differentiate=False, **kw)
    return float((mp - mm) / (2 * h))


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("kind,rho", [("sam", 0.3), ("asam", 1.0)])
def test_exact_hypergrad_matches_finite_differences_and_torch_func(K, kind, rho):
    model, state, batches, val, lrs = setup_problem(K)
    kw = dict(kind=kind, metric="sq_gap", sgd=SGDConfig(momentum=0.9, weight_decay=5e-4))
    res = hypergrad_higher(model, state, batches, val, lrs, rho=rho, **kw)
    fd = central_fd(model, state, batches, val, lrs, rho, **kw)
    assert res.dM_dnu != 0.0
    assert abs(res.dM_dnu - fd) / abs(fd) < 1e-4, (res.dM_dnu, fd)
    ref = hypergrad_func(model, state, batches, val, lrs, rho=rho, **kw)
    assert ref.dM_dnu == pytest.approx(res.dM_dnu, rel=1e-8, abs=0)
    assert ref.M == pytest.approx(res.M, rel=1e-12)
    assert res.dM_drho == pytest.approx(res.dM_dnu / rho, rel=1e-12)


def test_every_impl_agrees_with_finite_differences_on_the_mnist1d_cnn():
    """The CNN computes through submodules that ``higher`` and ``torch.func`` patch (its weights must
    reach every pass); K = 2 SAM steps in float64."""
    torch.manual_seed(0)
    model = create_model("mnist1d_cnn", 10, (40,)).to(D)
    state = capture_state(model)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 40, generator=g, dtype=D), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    val = (torch.randn(8, 40, generator=g, dtype=D), torch.randint(0, 10, (8,), generator=g))
    lrs, kw = [0.1, 0.1], dict(kind="sam", sgd=SGDConfig(momentum=0.9, weight_decay=5e-4))
    fd = central_fd(model, state, batches, val, lrs, 0.2, **kw)
    assert fd != 0.0
    for impl in (hypergrad_higher, hypergrad_func, hypergrad_recompute):
        assert impl(model, state, batches, val, lrs, rho=0.2, **kw).dM_dnu == pytest.approx(fd, rel=1e-4)


@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("kind,with_momentum,metric", [("sam", True, "sq_gap"), ("asam", True, "gap"),
                                                        ("sam", False, "val_loss")])
def test_recompute_mode_equals_the_full_unroll(K, kind, with_momentum, metric):
    """One-step-at-a-time reverse sweep = the full graph (float64, BN model, with/without momentum)."""
    from hpo_bench.ledger import Ledger

    model, state, batches, val, lrs = setup_problem(K, with_momentum=with_momentum)
    kw = dict(kind=kind, metric=metric, sgd=SGDConfig(momentum=0.9, weight_decay=5e-4))
    ref = hypergrad_func(model, state, batches, val, lrs, rho=0.3, **kw)
    ledger = Ledger()
    res = hypergrad_recompute(model, state, batches, val, lrs, rho=0.3, ledger=ledger, **kw)
    assert ref.dM_dnu != 0.0
    assert res.dM_dnu == pytest.approx(ref.dM_dnu, rel=1e-10, abs=1e-14)
    assert res.M == pytest.approx(ref.M, rel=1e-12)
    assert ledger.grad_evals == 8 * K + (1 if metric == "val_loss" else 2)  # a double backward is charged 2


@pytest.mark.parametrize("metric", ["gap", "val_loss"])
def test_other_metrics_match_finite_differences(metric):
    model, state, batches, val, lrs = setup_problem(2)
    kw = dict(kind="sam", metric=metric)
    res = hypergrad_higher(model, state, batches, val, lrs, rho=0.2, **kw)
    fd = central_fd(model, state, batches, val, lrs, 0.2, **kw)
    assert abs(res.dM_dnu - fd) / abs(fd) < 1e-4
    assert hypergrad_func(model, state, batches, val, lrs, rho=0.2, **kw).dM_dnu == pytest.approx(res.dM_dnu, rel=1e-8)


def _loss(model, params, x, y):
    names = [n for n, _ in model.named_parameters()]
    return F.cross_entropy(torch.func.functional_call(model, dict(zip(names, params)), (x,)), y)


@pytest.mark.parametrize("sgd", [SGDConfig(momentum=0.0, weight_decay=0.0), SGDConfig(momentum=0.9, weight_decay=5e-4)],
                         ids=["plain-sgd", "momentum-wd"])
def test_k1_equals_explicit_hessian_vector_product(sgd):
    """K = 1: dM/dν = ρ·(−η g_aᵀ ∇²L(θ_t + ρε̂) ε̂) — Appendix A without the diagonal approximation.

    θ_t and the momentum buffer do not depend on ρ, so the identity holds with momentum and weight decay too.
    """
    model, state, batches, val, lrs = setup_problem(1, with_momentum=sgd.momentum != 0)
    (x, y), eta, rho = batches[0], lrs[0], 0.3
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.momentum = 0.0  # train-mode losses do not depend on running stats anyway
    theta0 = [p.clone().requires_grad_(True) for p in state.params]
    g = torch.autograd.grad(_loss(m, theta0, x, y), theta0)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    e_hat = [gi / (norm + 1e-12) for gi in g]
    theta_p = [(t + rho * e).detach().requires_grad_(True) for t, e in zip(theta0, e_hat)]
    g_hat = torch.autograd.grad(_loss(m, theta_p, x, y), theta_p, create_graph=True)
    hvp = torch.autograd.grad(sum((gh * e).sum() for gh, e in zip(g_hat, e_hat)), theta_p)  # ∇²L(θ+ρε̂) ε̂
    with torch.no_grad():
        theta1 = []
        for t, gh, b in zip(theta0, g_hat, state.momentum):
            d = gh + sgd.weight_decay * t
            if sgd.momentum:
                d = sgd.momentum * b + d
            theta1.append((t - eta * d).detach().requires_grad_(True))
    M = 0.5 * (_loss(m, theta1, *val) - _loss(m, theta1, x, y)) ** 2
    g_a = torch.autograd.grad(M, theta1)
    expected = rho * (-eta * sum((a * h).sum() for a, h in zip(g_a, hvp)))
    res = hypergrad_higher(model, state, batches, val, lrs, rho=rho, kind="sam", metric="sq_gap", sgd=sgd)
    assert res.dM_dnu == pytest.approx(float(expected), rel=1e-8)
    assert res.M == pytest.approx(float(M.detach()), rel=1e-10)


def test_unroll_does_not_touch_model_and_charges_ledger():
    from hpo_bench.ledger import Ledger

    model, state, batches, val, lrs = setup_problem(3)
    snap = copy.deepcopy(model.state_dict())
    ledger = Ledger(device="cpu")
    for impl in (hypergrad_higher, hypergrad_func):
        impl(model, state, batches, val, lrs, rho=0.1, ledger=ledger)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in snap.items())
    assert ledger.grad_evals == 2 * (6 * 3 + 2)  # 2K forward + 2 (M) + 4K: the double backward, 2 per gradient call


# ----------------------------------------------------------------------------- the online strategy
def make_trainer(strategy, rho, params=None, **cfg):
    return Trainer(synthetic_bundle(), "tiny_bn", train_cfg(**cfg), create_strategy(strategy, rho, params), seed=0)


def test_hypergrad_sam_unroll_leaves_params_bn_and_momentum_untouched():
    tr = make_trainer("hypergrad-sam", 0.05, {"beta": 0.1, "every": 1, "unroll": 3})
    tr.strategy.setup(tr)
    ctx = StepContext(tr)
    for step in range(2):  # two real steps: momentum buffers exist, BN stats moved
        ctx.step = step
        ctx.x, ctx.y = tr.data.train_x[16 * step:16 * (step + 1)], tr.data.train_y[16 * step:16 * (step + 1)]
        ctx.lr = lr_at(step, tr.total_steps, tr.cfg.lr, "cosine")
        rho_before = tr.strategy.learner.rho
        evals = tr.ledger.grad_evals
        # run the step up to the optimizer, then snapshot everything right before after_update
        _, g = ctx.loss_grad(update_bn=True)
        eps = tr.strategy.perturbation(ctx, g)
        g_hat = ctx.perturbed_loss_grad(eps)[1]
        for p, d in zip(tr.params, tr.strategy.combine(ctx, g, g_hat)):
            p.grad = d
        tr.optimizer.step()
        params = [p.detach().clone() for p in tr.params]
        buffers = {k: b.clone() for k, b in tr.model.named_buffers()}
        mom = [tr.optimizer.state[p]["momentum_buffer"].clone() for p in tr.params]
        tr.strategy.after_update(ctx)
        assert all(torch.equal(a, p) for a, p in zip(params, tr.params))
        assert all(torch.equal(b, dict(tr.model.named_buffers())[k]) for k, b in buffers.items())
        assert all(torch.equal(m, tr.optimizer.state[p]["momentum_buffer"]) for m, p in zip(mom, tr.params))
        assert tr.ledger.grad_evals - evals == 2 + (6 * 3 + 2)
        assert tr.strategy.learner.rho != rho_before and math.isfinite(tr.strategy.dM_dnu)


def test_hypergrad_sam_charges_two_per_step_plus_6k_plus_2_per_unroll():
    b = make_trainer("hypergrad-sam", 0.05, {"beta": 0.0, "every": 3, "unroll": 2})
    rb = b.fit()
    assert rb.status == "ok"
    n_unrolls = b.total_steps // 3
    assert rb.ledger["grad_evals"] == 2 * b.total_steps + n_unrolls * (6 * 2 + 2)
    assert rb.summary["n_unrolls"] == n_unrolls


def test_hypergrad_sam_learns_rho_and_huge_beta_diverges():
    res = make_trainer("hypergrad-asam", 0.5, {"beta": 0.05, "every": 2, "unroll": 2}).fit()
    assert res.status == "ok" and res.summary["rho_final"] != 0.5
    assert {"rho", "metric_M", "dM_dnu"} <= set(res.traces[-1])
    updated = [t for t in res.traces if (t["step"] + 1) % 2 == 0]  # every = 2: the steps that update nu
    between = [t for t in res.traces if (t["step"] + 1) % 2]
    assert updated and all(math.isfinite(t["dM_dnu"]) and math.isfinite(t["metric_M"]) for t in updated)
    assert between and all(math.isnan(t["dM_dnu"]) and math.isnan(t["metric_M"]) for t in between)
    res = make_trainer("hypergrad-sam", 0.05, {"beta": 1e300, "every": 1, "unroll": 1}).fit()
    assert res.status == "diverged" and "rho" in res.reason


def test_hypergrad_sam_impls_learn_the_same_rho_and_recompute_is_charged_8k_plus_2():
    params = {"beta": 0.05, "every": 2, "unroll": 3}
    runs = {impl: make_trainer("hypergrad-sam", 0.05, {**params, "impl": impl}, dtype="float64").fit() for impl in ("higher", "recompute")}
    a, b = runs["higher"], runs["recompute"]
    assert a.status == b.status == "ok" and a.summary["n_unrolls"] == b.summary["n_unrolls"] > 0
    assert b.summary["rho_final"] == pytest.approx(a.summary["rho_final"], rel=1e-9) and a.summary["rho_final"] != 0.05
    assert b.ledger["grad_evals"] - a.ledger["grad_evals"] == a.summary["n_unrolls"] * 2 * 3


def test_double_backward_is_charged_at_least_what_it_computes(monkeypatch):
    """Each impl's charge covers the calls it makes, a backward through create_graph graphs counting 2 per call."""
    from hpo_bench.ledger import Ledger
    from tests.test_strategy_contract import CountingAutograd

    model, state, batches, val, lrs = setup_problem(3)
    for impl in (hypergrad_higher, hypergrad_func, hypergrad_recompute):
        ledger = Ledger()
        counter = CountingAutograd(monkeypatch)
        impl(model, state, batches, val, lrs, rho=0.1, ledger=ledger)
        assert counter.calls > counter.n_calls  # the reverse pass is second order
        assert ledger.grad_evals >= counter.calls, (impl.__name__, ledger.grad_evals, counter.calls)
        monkeypatch.undo()


def test_budget_match_scales_the_nu_learning_rate_by_every():
    """One update every U steps at U·β: ν can move β·T over a run, as LETS's T updates at β."""
    matched = make_trainer("hypergrad-sam", 0.05, {"beta": 0.01, "every": 4, "unroll": 1})
    matched.strategy.setup(matched)
    assert matched.strategy.learner.lr(step=0, epoch=0) == pytest.approx(0.04)
    plain = make_trainer("hypergrad-sam", 0.05, {"beta": 0.01, "every": 4, "unroll": 1, "budget_match": False})
    plain.strategy.setup(plain)
    assert plain.strategy.learner.lr(step=0, epoch=0) == pytest.approx(0.01)
    # each Adam update moves ν by at most lr·(1 − β₁)/√(1 − β₂) (Kingma & Ba §2.1), lr = U·β here
    res = make_trainer("hypergrad-sam", 0.05, {"beta": 0.01, "every": 4, "unroll": 1}).fit()
    n_updates = res.summary["n_unrolls"]
    assert 0 < abs(math.log(res.summary["rho_final"] / 0.05)) <= 4 * 0.01 * n_updates * 0.1 / math.sqrt(0.001)


def test_samples_and_validation_batches_are_averaged_and_charged():
    b = make_trainer("hypergrad-sam", 0.05, {"beta": 0.0, "every": 4, "unroll": 2, "samples": 3, "val_batches": 2})
    rb = b.fit()
    assert rb.status == "ok"
    n_updates = b.total_steps // 4
    assert rb.summary["n_unrolls"] == 3 * n_updates
    # per unroll 6K + m with m = 2 (validation batch of 2B) + 1 (training batch)
    assert rb.ledger["grad_evals"] == 2 * b.total_steps + 3 * n_updates * (6 * 2 + 3)


# ----------------------------------------------------------------------------- fidelity
def test_fidelity_table_and_summary():
    from hpo_bench.fidelity import run_fidelity

    data = synthetic_bundle()
    cfg = train_cfg(epochs=2)
    table, summary, result = run_fidelity(data, "tiny_bn", cfg, 0.1, seed=0, every=2, unroll=3)
    assert result.status == "ok"
    assert {"step", "lets_appendix", "lets_literal", "exact_k1", "exact_kK"} <= set(table.columns)
    assert list(table["step"]) == list(range(0, 8, 2))
    # the LETS pass at the trainer's θ_{t+1} and the K = 1 unroll see the same M (float32 rounding only)
    assert ((table["M_lets"] - table["M_k1"]).abs() <= 1e-4 * table["M_k1"].abs() + 1e-9).all()
    assert set(zip(summary["estimator"], summary["reference"])) == {
        ("lets_appendix", "exact_k1"), ("lets_appendix", "exact_kK"), ("lets_literal", "exact_k1"),
        ("lets_literal", "exact_kK"), ("exact_k1", "exact_kK")}
    assert summary["sign_agreement"].between(0, 1).all()
    # the same-batch decomposition: validation term + training term = the estimate, for either batch
    from hpo_bench.report.probe import same_batch_summary

    assert {"lets_train_same", "lets_train_fresh", "lets_fresh"} <= set(table.columns)
    assert (table["lets_train_same"] != table["lets_train_fresh"]).all()  # another batch, another term
    sb = same_batch_summary(table)
    assert list(sb["n"]) == [len(table)] * 2 and sb["train_term_positive"].between(0, 1).all()
    assert sb["median_abs_train_term_vs_fresh"].iloc[1] == pytest.approx(1.0)
    # M = validation loss has no training term: both terms vanish and the batch does not matter
    vl, _, _ = run_fidelity(data, "tiny_bn", cfg, 0.1, seed=0, every=2, unroll=1, metric="val_loss")
    assert (vl["lets_train_same"] == 0).all() and (vl["lets_train_fresh"] == 0).all()
    assert vl["lets_fresh"].to_numpy() == pytest.approx(vl["lets_appendix"].to_numpy(), rel=1e-12, abs=0)
    assert (vl["lets_appendix"] != 0).all()
    # the probe's trajectory is the plain SAM run's
    ref = Trainer(data, "tiny_bn", cfg, create_strategy("sam", 0.1), seed=0).fit()
    strip = lambda res: [{k: v for k, v in e.items() if k not in ("wall_s", "grad_evals")} for e in res.epochs]
    assert strip(ref) == strip(result)


def test_fidelity_cli_writes_parquet(tmp_path, capsys):
    from hpo_bench.cli import main

    code = main(["fidelity", str(ROOT / "experiments" / "tiny.toml"), "--out", str(tmp_path), "--set", "train.epochs=1",
                 "--every", "4", "--unroll", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "sign_agreement" in out
    run_dir = [d for d in tmp_path.iterdir() if d.is_dir()][0]
    table = pd.read_parquet(run_dir / "fidelity.parquet")
    summary = pd.read_parquet(run_dir / "fidelity_summary.parquet")
    assert len(table) >= 2 and (table["step"] % 4 == 0).all() and len(summary) == 5
    assert main(["fidelity", str(ROOT / "experiments" / "tiny.toml"), "--out", str(tmp_path), "--every", "0"]) == 2
