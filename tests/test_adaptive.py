"""AE-SAM, LookSAM and SAMAR: costs, policy recurrences, the λ rule (reductions: test_strategy_contract)."""
from __future__ import annotations

import math

import pytest
import torch

from hpo_bench.trainer import Trainer
from hpo_bench.strategy import create_strategy
from searchers.ae_sam import AEPolicy, AEPolicyParams
from searchers.samar import SAMARParams, samar_lambda_update
from tests.conftest import synthetic_bundle, train_cfg


def fit(strategy, rho=0.05, params=None, seed=0, epochs=3):
    tr = Trainer(synthetic_bundle(), "tiny_bn", train_cfg(epochs=epochs), create_strategy(strategy, rho, params), seed)
    res = tr.fit()
    return res, [p.detach().clone() for p in tr.params], tr


def test_ae_sam_auto_charges_one_plus_fraction():
    res, _, tr = fit("ae-sam")
    frac = res.summary["sam_fraction"]
    assert 0.0 < frac < 1.0
    assert res.ledger["grad_evals"] == round(tr.total_steps * (1 + frac))
    decisions = [t["sam_step"] for t in res.traces]
    assert sum(decisions) / len(decisions) == pytest.approx(frac)


def test_ae_policy_recurrences_match_direct_computation():
    torch.manual_seed(0)
    s = (torch.rand(50) * 3).tolist()
    p = AEPolicyParams(delta=0.9, lambda1=-1.0, lambda2=1.0)
    policy = AEPolicy(p, total_steps=50)
    mu, var = s[0], 0.0
    for t, st in enumerate(s):
        decision = policy.decide(st, t)
        if t > 0:
            mu = 0.9 * mu + 0.1 * st
            var = 0.9 * var + 0.1 * (st - mu) ** 2
        c = -1.0 * t / 50 + 1.0 * (1 - t / 50)
        assert policy.mu == pytest.approx(mu, rel=1e-12)
        assert policy.var == pytest.approx(var, rel=1e-12, abs=1e-15)
        assert policy.c == pytest.approx(c)
        assert decision == (st >= mu + c * math.sqrt(var))


def test_looksam_sam_every_k_steps_and_cost():
    res, _, tr = fit("looksam", params={"k": 3})
    n_sam = len(range(0, tr.total_steps, 3))
    assert res.ledger["grad_evals"] == tr.total_steps + n_sam
    assert res.summary["sam_fraction"] == pytest.approx(n_sam / tr.total_steps)


def test_samar_lambda_fixed_at_zero_moves_like_erm():
    res_samar, p_samar, _ = fit("samar", params={"adapt": False, "lambda0": 0.0, "lambda_min": 0.0})
    res_erm, p_erm, _ = fit("erm")
    for a, b in zip(p_samar, p_erm):  # (1-0)·g + 0·ĝ = g; BN stats identical since the 2nd pass is frozen
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_samar_lambda_rule_on_synthetic_ratios():
    p = SAMARParams(lambda0=1.0, lambda_min=0.5, lambda_max=2.0, gamma=1.5, delta=0.1, chi=0.0)
    lam = torch.tensor(1.0, dtype=torch.float64)
    seq = []
    for r_bar in [1.2, 1.2, 1.2, 1.05, 0.95, 0.8, 0.8, 0.8, 0.8]:
        lam = samar_lambda_update(lam, torch.tensor(r_bar, dtype=torch.float64), p)
        seq.append(float(lam))
    assert seq[:3] == pytest.approx([1.5, 2.0, 2.0])      # raised by γ, capped at λ_max
    assert seq[3:5] == pytest.approx([2.0, 2.0])          # inside the dead band: kept
    assert seq[5:] == pytest.approx([2.0 / 1.5, 2.0 / 1.5**2, 2.0 / 1.5**3, 0.5])  # lowered, floored at λ_min


def test_samar_trajectory_within_bounds_and_traced():
    res, _, _ = fit("samar", params={"lambda0": 1.0, "lambda_min": 0.5, "lambda_max": 2.0, "gamma": 1.2, "delta": 0.0,
                                     "z": 0.0})
    lams = [t["lambda"] for t in res.traces]
    assert all(0.5 <= x <= 2.0 for x in lams)
    assert len(set(lams)) > 1  # with a zero dead band and no t threshold, λ moves at every window pair
    ratios = [t["ratio_r"] for t in res.traces[1:]]
    assert all(r > 0 for r in ratios)


def test_looksam_reuse_step_matches_the_paper_formula():
    """On SAM steps g_v = ĝ − (ĝ·g/‖g‖²) g is stored; later steps use g + α(‖g‖/‖g_v‖) g_v (LookSAM Eq. 6–7)."""
    from types import SimpleNamespace

    from searchers.looksam import LookSAM, LookSAMParams

    torch.manual_seed(0)
    s = LookSAM(0.05, LookSAMParams(k=2, alpha=0.7))
    s.setup(None)
    g, g_hat, g2 = ([torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)] for _ in range(3))
    flat = lambda ts: torch.cat([t.flatten() for t in ts])
    ctx = SimpleNamespace(step=0)
    assert s.combine(ctx, g, g_hat) is g_hat  # SAM step: the update is ĝ
    G, Gh, G2 = flat(g), flat(g_hat), flat(g2)
    gv = Gh - (Gh @ G) / (G @ G) * G
    assert abs(float(gv @ G)) < 1e-12  # orthogonal to g
    expected = G2 + 0.7 * G2.norm() / gv.norm() * gv
    torch.testing.assert_close(flat(s.combine(SimpleNamespace(step=1), g2, None)), expected, rtol=1e-10, atol=1e-12)
