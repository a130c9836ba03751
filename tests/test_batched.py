"""Batched grid search equals separate runs of the one trainer (to 1e-5)."""
from __future__ import annotations

import pandas as pd
import pytest

from hpo_bench.batched import can_batch, run_batched
from hpo_bench.config import validate_spec
from hpo_bench.execute import execute_trial
from hpo_bench.trial import grid_trials
from hpo_bench.store import ResultsStore

COLS = ["best_val_acc", "test_acc", "last_val_acc", "last_test_acc", "last_train_loss", "last_val_loss", "last_test_loss"]


def spec_for(strategy, model="mnist1d_cnn", grid=(0.01, 0.05, 0.2), **train):
    raw = {"name": "b", "seeds": [0, 1], "data": {"num_samples": 500}, "model": {"name": model},
           "train": {"epochs": 2, "batch_size": 50, **train},
           "methods": [{"label": "G", "strategy": strategy,
                        "search": {"kind": "grid", "engine": "local", "grid": list(grid), "batched": True}}]}
    return validate_spec(raw)


@pytest.mark.parametrize("strategy, model", [("sam", "mnist1d_cnn"), ("asam", "mnist1d_cnn"), ("sam", "mnist1d_mlp")])
def test_batched_grid_equals_separate_runs(tmp_path, strategy, model):
    """float32, 8 epochs (64 SGD steps): the CNN's stacked forward runs the separate runs' kernels;
    the MLP goes through the vmap fallback."""
    spec = spec_for(strategy, model=model, epochs=8)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/local")
    assert can_batch([t for t in trials if t.seed == 0])
    batched = pd.DataFrame(run_batched(trials, ResultsStore(tmp_path / "batched"))).set_index("run_id")
    sep_store = ResultsStore(tmp_path / "separate")
    separate = pd.DataFrame([execute_trial(t, sep_store) for t in trials]).set_index("run_id")
    assert (batched["batched_group"] == 3).all()
    assert list(batched["grad_evals"]) == list(separate.loc[batched.index, "grad_evals"])
    pd.testing.assert_frame_equal(batched[COLS], separate.loc[batched.index, COLS], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["sam", "asam"])
def test_batched_grid_equals_separate_runs_in_float64_over_many_steps(tmp_path, strategy):
    """In float64 the batched grid is the separate runs' arithmetic up to rounding (1e-10 after 64
    SGD steps): the float32 differences are the last-bit summation-order noise, amplified by training."""
    spec = spec_for(strategy, grid=(0.02, 0.3), epochs=8, dtype="float64")
    trials = [t for t in grid_trials(spec, spec.methods[0], {}, "grid/local") if t.seed == 0]
    batched = pd.DataFrame(run_batched(trials, ResultsStore(tmp_path / "batched"))).set_index("run_id")
    sep_store = ResultsStore(tmp_path / "separate")
    separate = pd.DataFrame([execute_trial(t, sep_store) for t in trials]).set_index("run_id")
    assert (batched["epochs_done"] == 8).all() and (batched["grad_evals"] == 2 * 64).all()
    pd.testing.assert_frame_equal(batched[COLS], separate.loc[batched.index, COLS], rtol=1e-10, atol=1e-10)


def test_models_with_batchnorm_fall_back_to_separate_runs(tmp_path):
    spec = spec_for("sam", model="tiny_bn")
    trials = grid_trials(spec, spec.methods[0], {}, "grid/local")
    assert not can_batch(trials[:3])
    rows = run_batched(trials, ResultsStore(tmp_path))
    assert len(rows) == 6 and all("batched_group" not in r for r in rows)
