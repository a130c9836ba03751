"""Optuna pruners on the grid (``search.pruner``): pruned runs are stored as stopped and told PRUNED."""
from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from hpo_bench.config import SpecError
from hpo_bench.engines.optuna_pruning import EpochPruner, is_pruned
from hpo_bench.engines.optuna_storage import storage_for
from hpo_bench.search import run_search
from hpo_bench.selection import select
from hpo_bench.store import ResultsStore

from test_engines import tiny_spec

GRID = (0.02, 0.05, 0.1, 1.0, 3.0, 10.0)  # rho >= 1 collapses this MLP: those runs lose at the first rung


def _study(store):
    storage = storage_for("", store.root)
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)


def test_successive_halving_prunes_and_rerun_trains_nothing(tmp_path):
    spec = tiny_spec("optuna", grid=GRID, seeds=(0,), epochs=4, workers=1, pruner="successive-halving",
                     asha_grace=1, asha_reduction=3)
    store = ResultsStore(tmp_path / "run")
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]
    runs = store.consolidate()
    assert len(runs) == len(GRID) and not runs.duplicated(["rho0", "seed"]).any()
    stopped = runs[runs["status"] == "stopped"]
    assert len(stopped) >= 1 and all(is_pruned(r) for r in stopped.to_dict("records"))
    assert stopped["reason"].str.contains("SuccessiveHalvingPruner after epoch").all()
    full = runs.loc[runs["status"] == "ok", "grad_evals"].max()
    assert (stopped["epochs_done"] < 4).all() and (stopped["grad_evals"] < full).all()
    assert (stopped["grad_evals"] > 0).all() and stopped["best_val_acc"].isna().all()
    assert summary["cost_grad_evals"] == pytest.approx(runs["grad_evals"].sum())  # pruned runs are charged
    assert select(runs)["rho_star"] in set(runs.loc[runs["status"] == "ok", "rho0"])

    study = _study(store)
    pruned = {t.user_attrs["run_id"] for t in study.get_trials(states=(TrialState.PRUNED,))}
    assert pruned == set(stopped["run_id"])
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        row = store.load_row(t.user_attrs["run_id"])
        assert max(t.intermediate_values) == row["epochs_done"] and t.user_attrs["status"] == "stopped"
    done = {rid: store.load_row(rid)["finished_at"] for rid in store.done_ids()}
    n_trials = len(study.trials)
    run_search(spec, spec.methods[0], {}, store)  # settled: nothing trains, nothing is enqueued
    assert {rid: store.load_row(rid)["finished_at"] for rid in store.done_ids()} == done
    assert len(_study(store).trials) == n_trials


def test_hyperband_in_worker_processes_records_each_point_once(tmp_path):
    spec = tiny_spec("optuna", grid=GRID, seeds=(0,), epochs=4, workers=2, pruner="hyperband",
                     asha_grace=1, asha_reduction=2)
    store = ResultsStore(tmp_path / "run")
    run_search(spec, spec.methods[0], {}, store)
    runs = store.consolidate()
    assert len(runs) == len(GRID) and set(runs["status"]) <= {"ok", "stopped"} and (runs["status"] == "ok").any()
    study = _study(store)
    states = {t.user_attrs["run_id"]: t.state for t in study.trials}
    for row in runs.to_dict("records"):
        assert states[row["run_id"]] == (TrialState.PRUNED if row["status"] == "stopped" else TrialState.COMPLETE)
    reported = [t for t in study.trials if t.intermediate_values]  # the workers reported every epoch
    assert len(reported) == len(GRID)


def test_epoch_pruner_pickles_without_its_connection(tmp_path):
    spec = tiny_spec("optuna", grid=GRID[:2], seeds=(0,), epochs=2, workers=1, pruner="successive-halving")
    store = ResultsStore(tmp_path / "run")
    run_search(spec, spec.methods[0], {}, store)
    study = _study(store)
    tid = study.trials[0]._trial_id
    hook = EpochPruner("", str(store.root), study.study_name, tid, "successive-halving", 1, 2.0, 2)
    hook._open()  # what the first epoch does in the worker process
    again = pickle.loads(pickle.dumps(hook))
    assert again._study is None and again.trial_id == tid and hook._study is not None


@pytest.mark.parametrize("search, field", [
    ({"engine": "ray", "kind": "grid", "pruner": "hyperband"}, "pruner"),
    ({"engine": "optuna", "kind": "tpe", "pruner": "hyperband", "grid": []}, "pruner"),
    ({"engine": "optuna", "kind": "grid", "pruner": "hyperband", "asha_reduction": 2.5}, "asha_reduction"),
    ({"engine": "optuna", "kind": "grid", "pruner": "median"}, "pruner"),
])
def test_bad_pruner_settings_name_the_field(search, field):
    grid = search.pop("grid", list(GRID))
    with pytest.raises(SpecError, match=rf"search\.{field}"):
        tiny_spec(grid=grid, **search)
