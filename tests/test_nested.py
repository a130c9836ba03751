"""Nested selection: a search selects ρ* on its selection seeds and is evaluated by fresh runs at ρ*
on the spec's seeds; the two sets of seeds never overlap, and the evaluation runs are charged to it."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from hpo_bench.config import SELECTION_SEED_OFFSET, load_spec, selection_seeds
from hpo_bench.errors import SpecError
from hpo_bench.experiment import run_experiment
from hpo_bench.selection import select, with_evaluation
from hpo_bench.store import ResultsStore

SPEC = """
name = "nested"
seeds = [0, 1]
report = false
[data]
dataset = "mnist1d"
num_samples = 500
[model]
name = "mnist1d_mlp"
[train]
epochs = 2
batch_size = 50
threads = 1
[[methods]]
label = "ERM"
strategy = "erm"
[[methods]]
label = "Grid"
strategy = "sam"
[methods.search]
grid = [0.02, 0.2]
{extra}
[[methods]]
label = "SAM at rho*"
strategy = "sam"
rho_from = "Grid"
"""


def _spec(tmp_path, extra=""):
    path = tmp_path / "nested.toml"
    path.write_text(SPEC.format(extra=extra))
    return load_spec(path)


def test_default_selection_seeds_are_offset_and_disjoint(tmp_path):
    spec = _spec(tmp_path)
    grid = spec.methods[1]
    assert selection_seeds(spec.seeds, grid.search) == [SELECTION_SEED_OFFSET, SELECTION_SEED_OFFSET + 1]
    spec = _spec(tmp_path, "selection_seeds = [7, 8, 9]")
    assert selection_seeds(spec.seeds, spec.methods[1].search) == [7, 8, 9]


@pytest.mark.parametrize("value, needle", [
    ("[1, 5]", "selection_seeds: [1] is also evaluation seed"),
    ("[5, 5]", "duplicate values"),
    ("[-1]", "selection_seeds[0]"),
    ('"3"', "expected a list"),
])
def test_overlapping_or_malformed_selection_seeds_are_refused(tmp_path, value, needle):
    with pytest.raises(SpecError, match=r"methods\[1\]\.search\.selection_seeds") as err:
        _spec(tmp_path, f"selection_seeds = {value}")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_search_selects_on_selection_seeds_and_reports_fresh_evaluation_runs(tmp_path):
    spec = _spec(tmp_path)
    store = ResultsStore(tmp_path / "out")
    runs = run_experiment(spec, store, jobs=1, show_progress=False)
    grid = runs[runs["method"] == "Grid"]
    selecting = grid[~grid["search"].str.endswith("/eval")]
    evaluating = grid[grid["search"].str.endswith("/eval")]
    assert set(selecting["seed"]) == {1000, 1001} and len(selecting) == 4
    assert set(evaluating["seed"]) == set(spec.seeds) and len(evaluating) == 2
    assert not set(selecting["seed"]) & set(evaluating["seed"])
    chosen = select(selecting)["rho_star"]
    assert set(evaluating["rho0"]) == {chosen}
    rho_from = runs[runs["method"] == "SAM at rho*"]
    assert set(rho_from["seed"]) == set(spec.seeds) and set(rho_from["rho0"]) == {chosen}
    summary = pd.read_parquet(store.root / "searches.parquet").iloc[0]
    assert summary["rho_star"] == chosen
    assert summary["test_acc_mean"] == pytest.approx(evaluating["test_acc"].mean())
    assert summary["cost_grad_evals"] == pytest.approx(grid["grad_evals"].sum())
    assert summary["n_eval"] == 2
    # a re-run finds everything done and trains nothing
    again = run_experiment(spec, store, jobs=1, show_progress=False)
    assert len(again) == len(runs)


def test_with_evaluation_arithmetic():
    summary = {"rho_star": 0.1, "test_acc_mean": 0.9, "cost_grad_evals": 100.0, "cost_wall_s": 10.0}
    rows = pd.DataFrame({"status": ["ok", "ok", "diverged"], "test_acc": [0.7, 0.8, math.nan],
                         "grad_evals": [10, 10, 5], "wall_s": [1.0, 1.0, 0.5]})
    out = with_evaluation(summary, rows)
    assert out["sel_test_acc_mean"] == 0.9
    assert out["test_acc_mean"] == pytest.approx(0.75)
    assert out["test_acc_std"] == pytest.approx(0.0707106781)
    assert (out["n_eval"], out["n_eval_ok"]) == (3, 2)
    assert out["cost_grad_evals"] == 125.0 and out["eval_cost_grad_evals"] == 25.0
    assert out["cost_wall_s"] == pytest.approx(12.5)
