"""Population training (P models differing in seed and/or ρ in one pass) equals separate runs."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext

import pandas as pd
import pytest
import torch
from torch.func import stack_module_state

from hpo_bench.config import validate_spec
from hpo_bench.execute import execute_trial, run_trial
from hpo_bench.models import create_model
from hpo_bench.perturbation import frozen_bn_stats
from hpo_bench.population import can_train_together, stacked_program, train_population
from hpo_bench.store import ResultsStore
from hpo_bench.trial import grid_trials, make_trial
from hpo_bench.units import run_batched

COLS = ["best_val_acc", "test_acc", "last_val_acc", "last_test_acc", "last_train_loss", "last_val_loss", "last_test_loss"]
EXACT = ["status", "reason", "stop_step", "epochs_done", "best_epoch", "grad_evals", "fwd_evals", "steps"]
TIMING = {"wall_s", "device_s", "peak_mem_bytes", "batched_group", "finished_at"}
PAIRS = [(0, 0.05), (1, 0.2), (2, 0.05), (1, 0.5)]  # (seed, rho): members differ in both
LETS = {"beta": 0.05}


def make_trials(strategy, model="tiny_bn", pairs=PAIRS, params=None, **train):
    raw = {"name": "p", "seeds": [0], "data": {"num_samples": 500}, "model": {"name": model},
           "train": {"epochs": 2, "batch_size": 50, "dtype": "float64", **train},
           "methods": [{"label": "M", "strategy": strategy, "params": params or {}}]}
    spec = validate_spec(raw)
    return [make_trial(spec, spec.methods[0], rho, seed, {}) for seed, rho in pairs]


def assert_matches_separate_runs(trials, tol=1e-10):
    """Rows (metrics, status, ledger counts, summary) and curves of the population vs separate runs."""
    population = train_population(trials)
    for trial, (row, curves) in zip(trials, population):
        ref_row, ref_curves = run_trial(trial)
        assert row["batched_group"] == len(trials)
        assert {k for k in ref_row if k not in TIMING} <= set(row)
        for key in EXACT:
            assert row[key] == ref_row[key], (key, row[key], ref_row[key])
        for key, ref in ref_row.items():
            if key in TIMING or not isinstance(ref, float):
                continue
            assert math.isnan(row[key]) if math.isnan(ref) else row[key] == pytest.approx(ref, rel=tol, abs=tol), key
        ids = ["run_id", "scope", "epoch", "step", "metric"]
        both = curves.merge(ref_curves, on=ids, how="outer", suffixes=("", "_ref"), indicator=True)
        assert (both["_merge"] == "both").all() and len(both) == len(ref_curves)
        both = both[both["metric"] != "wall_s"]
        assert ((both["value"] - both["value_ref"]).abs().fillna(0) <= tol * (1 + both["value_ref"].abs().fillna(0))).all()
    return [row for row, _ in population]


# ----------------------------------------------------------------------------- float64 parity
@pytest.mark.parametrize("model", ["tiny_bn", "mnist1d_mlp"])
@pytest.mark.parametrize("strategy, params", [("erm", {}), ("sam", {}), ("asam", {"xi": 0.02}), ("samar", {}),
                                              ("lets-sam", LETS), ("lets-asam", LETS)])
def test_population_equals_separate_runs_in_float64(strategy, params, model):
    """Members differing in seed and ρ, with BatchNorm (tiny_bn) and without (mnist1d_mlp): ≤ 1e-10."""
    rows = assert_matches_separate_runs(make_trials(strategy, model, params=params))
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize("params", [{**LETS, "reuse_next_grad": True}, {**LETS, "metric": "val_loss"},
                                    {**LETS, "gb": "literal", "protocol": "paper"}])
def test_lets_variants_in_a_population_equal_separate_runs(params):
    """Each LETS variant asks for its own post-update passes (validation / training stream, next-step reuse)."""
    assert_matches_separate_runs(make_trials("lets-asam", "tiny_bn", PAIRS[:3], params=params))


@pytest.mark.parametrize("model", ["mnist1d_cnn", "mnist1d_cnn_bn"])
def test_cnn_populations_equal_separate_runs_in_float64(model):
    assert_matches_separate_runs(make_trials("sam", model, PAIRS[:3]))


# ----------------------------------------------------------------------------- float32 drift
@pytest.mark.parametrize("strategy, model", [("sam", "mnist1d_cnn"), ("asam", "mnist1d_cnn"), ("sam", "mnist1d_mlp"),
                                             ("sam", "tiny_bn"), ("asam", "tiny_bn")])
def test_population_equals_separate_runs_in_float32(strategy, model):
    """float32, 4 epochs (32 SGD steps): the stacked kernels round like the separate runs' up to the
    last bit of some sums (measured ≤ 4e-7 in the final losses). Not the BN CNN: its training
    amplifies last-bit differences to ~1e-3, as between its own runs at 1 and 2 threads."""
    trials = make_trials(strategy, model, PAIRS[:3], dtype="float32", epochs=4)
    population = pd.DataFrame([row for row, _ in train_population(trials)]).set_index("run_id")
    separate = pd.DataFrame([run_trial(t)[0] for t in trials]).set_index("run_id")
    assert list(population["grad_evals"]) == list(separate["grad_evals"])
    pd.testing.assert_frame_equal(population[COLS], separate[COLS], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- divergence, ledger
@pytest.mark.parametrize("model", ["tiny_bn", "mnist1d_mlp"])
def test_a_diverging_member_is_recorded_diverged_and_the_others_go_on(model):
    """ρ = 1e200 overflows member 1's perturbed gradient: it stops as its separate run does."""
    rows = assert_matches_separate_runs(make_trials("sam", model, [(0, 0.05), (1, 1e200), (2, 0.1)]))
    assert [r["status"] for r in rows] == ["ok", "diverged", "ok"]
    assert rows[1]["reason"].startswith("non-finite training loss") and rows[1]["grad_evals"] == 2 * (rows[1]["stop_step"] + 1)


def test_a_member_whose_strategy_raises_diverged_stops_alone():
    """LETS raises Diverged (non-finite hypergradient) in after_update for member 1 only."""
    rows = assert_matches_separate_runs(make_trials("lets-sam", "tiny_bn", [(0, 0.05), (1, 1e200), (2, 0.1)], params=LETS))
    assert [r["status"] for r in rows] == ["ok", "diverged", "ok"] and "hypergradient" in rows[1]["reason"]


def test_a_wall_time_budget_applies_to_each_members_share():
    rows = assert_matches_separate_runs(make_trials("sam", pairs=PAIRS[:2], max_wall_s=1e-9))
    assert [(r["status"], r["stop_step"], r["grad_evals"]) for r in rows] == [("timeout", 0, 2)] * 2


def test_each_member_is_charged_what_its_separate_run_is_charged():
    """grad/fwd evals per member as computed; wall seconds split evenly (they sum to the pass's wall time)."""
    trials = make_trials("lets-sam", "tiny_bn", [(0, 0.05), (1, 1e200), (2, 0.1)], params=LETS)
    t0 = time.perf_counter()
    rows = [row for row, _ in train_population(trials)]
    elapsed = time.perf_counter() - t0
    for trial, row in zip(trials, rows):
        ref = run_trial(trial)[0]
        assert (row["grad_evals"], row["fwd_evals"]) == (ref["grad_evals"], ref["fwd_evals"])
    assert rows[0]["grad_evals"] == 4 * 16 and rows[0]["fwd_evals"] == 2 * 3
    assert rows[0]["wall_s"] == pytest.approx(rows[2]["wall_s"]) and rows[1]["wall_s"] < rows[0]["wall_s"]
    assert 0 < sum(r["wall_s"] for r in rows) <= elapsed
    assert sum(r["device_s"] for r in rows) > 0


# ----------------------------------------------------------------------------- grouping, engine entry
def test_can_train_together():
    trials = make_trials("sam")
    assert can_train_together(trials) and can_train_together(make_trials("sam", "mnist1d_cnn_bn"))
    assert not can_train_together(trials + make_trials("asam"))  # another strategy
    assert not can_train_together(make_trials("asam", params={"xi": 0.01}) + make_trials("asam", params={"xi": 0.1}))
    assert not can_train_together(trials + make_trials("sam", epochs=3))  # another train config
    assert not can_train_together(make_trials("ae-sam"))  # unsupported strategy
    assert not can_train_together(make_trials("sam", "resnet18"))  # a model the population cannot run
    assert not can_train_together(make_trials("sam", max_mem_mb=1000.0))  # a per-run memory budget


def tanh_mlp(num_classes, input_shape):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 8), torch.nn.Tanh(), torch.nn.Linear(8, num_classes))


@pytest.mark.parametrize("model", ["tiny_bn", "mnist1d_cnn_bn", "mnist1d_cnn", "linear", tanh_mlp])
def test_stacked_forward_equals_each_module(model):
    """The compiled stacked forward (``vmap`` for a layer it does not compile, Tanh): per-member
    logits and BN running statistics equal the modules'."""
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append((model(10, (40,)) if callable(model) else create_model(model, 10, (40,))).double())
    params, buffers = stack_module_state(models)
    state = {**{k: v.detach() for k, v in params.items()}, **buffers}
    x = torch.randn(3, 20, 40, dtype=torch.float64)
    program = stacked_program(models[0])
    for mode in ("frozen", "train", "eval"):
        out = program(state, x, mode)
        for m, module in enumerate(models):
            module.train(mode != "eval")
            with frozen_bn_stats(module) if mode == "frozen" else nullcontext():
                assert torch.allclose(out[m], module(x[m]), rtol=0, atol=1e-12), mode
            for name, buf in module.named_buffers():
                if buf.is_floating_point():
                    assert torch.allclose(state[name][m], buf, rtol=0, atol=1e-14), (mode, name)


class Recorder:
    def __init__(self):
        self.rows = []

    def finish(self, row):
        self.rows.append(row)


def spec_for(strategy, model="mnist1d_cnn", grid=(0.01, 0.05, 0.2), **train):
    raw = {"name": "b", "seeds": [0, 1], "data": {"num_samples": 500}, "model": {"name": model},
           "train": {"epochs": 2, "batch_size": 50, **train},
           "methods": [{"label": "G", "strategy": strategy,
                        "search": {"kind": "grid", "engine": "local", "grid": list(grid), "batched": True}}]}
    return validate_spec(raw)


@pytest.mark.parametrize("strategy, model", [("sam", "mnist1d_cnn"), ("asam", "mnist1d_cnn"), ("sam", "mnist1d_mlp")])
def test_batched_grid_equals_separate_runs(tmp_path, strategy, model):
    """The whole grid × seeds (6 trials) as one population; float32, 8 epochs (64 SGD steps)."""
    spec = spec_for(strategy, model=model, epochs=8)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/local")
    assert can_train_together(trials)
    batched = pd.DataFrame(run_batched(trials, ResultsStore(tmp_path / "batched"))).set_index("run_id")
    sep_store = ResultsStore(tmp_path / "separate")
    separate = pd.DataFrame([execute_trial(t, sep_store) for t in trials]).set_index("run_id")
    assert (batched["batched_group"] == 6).all()
    assert list(batched["grad_evals"]) == list(separate.loc[batched.index, "grad_evals"])
    pd.testing.assert_frame_equal(batched[COLS], separate.loc[batched.index, COLS], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["sam", "asam"])
def test_batched_grid_equals_separate_runs_in_float64_over_many_steps(tmp_path, strategy):
    """1e-10 after 64 SGD steps: the float32 differences are last-bit rounding, amplified by training."""
    spec = spec_for(strategy, grid=(0.02, 0.3), epochs=8, dtype="float64")
    trials = grid_trials(spec, spec.methods[0], {}, "grid/local")
    batched = pd.DataFrame(run_batched(trials, ResultsStore(tmp_path / "batched"))).set_index("run_id")
    sep_store = ResultsStore(tmp_path / "separate")
    separate = pd.DataFrame([execute_trial(t, sep_store) for t in trials]).set_index("run_id")
    assert (batched["epochs_done"] == 8).all() and (batched["grad_evals"] == 2 * 64).all()
    pd.testing.assert_frame_equal(batched[COLS], separate.loc[batched.index, COLS], rtol=1e-10, atol=1e-10)


def test_run_batched_skips_stored_trials_and_runs_the_rest_separately(tmp_path):
    """Stored trials are skipped; groups that cannot train together (ae-sam) run one by one."""
    store = ResultsStore(tmp_path)
    sam, other = make_trials("sam", pairs=PAIRS[:3]), make_trials("ae-sam", pairs=PAIRS[:2])
    execute_trial(sam[0], store)
    progress = Recorder()
    rows = run_batched(sam + other, store, progress=progress)
    assert [r["run_id"] for r in rows] == [t.run_id for t in sam + other]
    assert sorted(r["run_id"] for r in progress.rows) == sorted(t.run_id for t in sam[1:] + other)
    assert [r.get("batched_group") for r in rows] == [None, 2, 2, None, None]
    assert len(store.consolidate()) == 5
