"""SAMAR's λ rule on synthetic gradient-norm streams: no drift under i.i.d. norms, a real trend moves λ.

The norms go through the strategy's own hooks (``perturbation`` sees g with ‖g‖ = s_k, ``combine``
updates λ), so what is tested is the code a training run executes.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hpo_bench.config import SpecError, validate_spec
from hpo_bench.strategy import create_strategy
from searchers.samar import SAMAR, WindowRatio

CV = 0.33  # coefficient of variation of ‖g‖ measured on mnist1d-main
STEPS_PER_EPOCH = 36  # MNIST-1D: 3600 training samples, batch 100


def iid_norms(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "lognormal":
        sigma = math.sqrt(math.log(1 + CV ** 2))
        return rng.lognormal(mean=0.0, sigma=sigma, size=n)
    shape = 1 / CV ** 2
    return rng.gamma(shape, 1 / shape, size=n)


def lambdas(norms, params=None) -> np.ndarray:
    """λ used at each step when the first gradients have norms ``norms`` (one-element g, ĝ = g)."""
    s = create_strategy("samar", 0.05, params)
    s.setup(SimpleNamespace(device=torch.device("cpu"), steps_per_epoch=STEPS_PER_EPOCH))
    ctx = SimpleNamespace()
    out = []
    for x in norms:
        g = [torch.tensor([float(x)])]
        s.perturbation(ctx, g)  # reads ‖g‖ = x
        s.combine(ctx, g, g)  # updates λ (ĝ = g: the direction does not matter here)
        out.append(float(s.lam_used))
    return np.array(out)


def at_bound(lams, p) -> float:
    return float(np.mean(np.isclose(lams, p["lambda_min"]) | np.isclose(lams, p["lambda_max"])))


BOUNDS = {"lambda_min": 0.5, "lambda_max": 2.0}


@pytest.mark.parametrize("kind", ["lognormal", "gamma"])
@pytest.mark.parametrize("seed", range(5))
def test_iid_norms_do_not_drive_lambda_to_a_bound(kind, seed):
    """2000 steps of i.i.d. norms (CV 0.33): λ is at λ_min or λ_max in < 5 % of the steps."""
    lams = lambdas(iid_norms(kind, 2000, seed))
    assert at_bound(lams, BOUNDS) < 0.05, (at_bound(lams, BOUNDS), lams[::100])
    assert 0.5 <= lams.min() and lams.max() <= 2.0


@pytest.mark.parametrize("kind", ["lognormal", "gamma"])
def test_the_earlier_raw_ratio_rule_is_pinned_at_lambda_max_by_jensen(kind):
    """E[s_k/s_{k−1}] > 1 for i.i.d. norms: the EMA of raw ratios sees 'sharper' nearly always."""
    norms = iid_norms(kind, 2000, 0)
    ratios = norms[1:] / norms[:-1]
    assert ratios.mean() > 1.05 and abs(np.median(ratios) - 1) < 0.02
    lams = lambdas(norms, {"ratio": "ratio_ema"})
    assert np.mean(np.isclose(lams, 2.0)) > 0.9


@pytest.mark.parametrize("seed", range(3))
def test_rising_sharpness_raises_lambda_and_falling_lowers_it(seed):
    """A 0.5 %-per-step trend (about 20 % per epoch) under the same noise moves λ by γ per epoch."""
    noise = iid_norms("lognormal", 20 * STEPS_PER_EPOCH, seed)
    trend = np.exp(0.005 * np.arange(len(noise)))
    up = lambdas(noise * trend)
    assert up[-1] == pytest.approx(2.0) and np.all(np.diff(up) >= 0)
    first_move = int(np.argmax(up > 1.0))
    assert 2 * STEPS_PER_EPOCH <= first_move <= 4 * STEPS_PER_EPOCH  # after the first window pair(s)
    down = lambdas(noise / trend)
    assert down[-1] == pytest.approx(0.5) and np.all(np.diff(down) <= 0)


def test_fixed_lambda_control_does_not_move():
    lams = lambdas(np.exp(0.01 * np.arange(300)), {"adapt": False, "lambda0": 1.5})
    assert np.all(lams == 1.5)


def test_window_statistics_are_welchs_t_of_successive_log_means():
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 0.3, 10), rng.lognormal(0.2, 0.3, 10)
    stats = WindowRatio(10, torch.zeros(()))
    flags = [stats.observe(torch.tensor(x, dtype=torch.float64)) for x in np.concatenate([a, b])]
    assert flags == [False] * 19 + [True]
    la, lb = np.log(a), np.log(b)
    log_r = lb.mean() - la.mean()
    t = log_r / math.sqrt(lb.var(ddof=1) / 10 + la.var(ddof=1) / 10)
    assert float(stats.r_bar) == pytest.approx(math.exp(log_r), rel=1e-12)
    assert float(stats.t) == pytest.approx(t, rel=1e-10)


def test_window_param_validation():
    raw = {"name": "x", "methods": [{"strategy": "samar", "rho": 0.05, "params": {"window": 1}}]}
    with pytest.raises(SpecError, match="window"):
        validate_spec(raw)
    raw["methods"][0]["params"] = {"window": 12, "z": 1.5}
    assert validate_spec(raw).methods[0].params["ratio"] == "window"
    assert SAMAR.reduces_to.params == {"adapt": False, "lambda0": 1.0}
