"""Population-based ρ schedules through Ray Tune (``search.kind = "pbt"``): exploits, rows, cost, resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT
from test_engines import DATA_ROOT, tiny_spec

from hpo_bench.config import SpecError
from hpo_bench.engines.base import SearchSpace
from hpo_bench.engines.ray_pbt import initial_rhos
from hpo_bench.search import run_search
from hpo_bench.store import ResultsStore

GRID = (0.01, 0.05, 0.2, 5.0)  # 5.0 collapses: its member is in the bottom half and clones a top one


def pbt_spec(**kw):
    return tiny_spec("ray", kind="pbt", grid=GRID, seeds=(0,), epochs=4, workers=4, cpus_per_trial=0.25,
                     quantile_fraction=0.5, perturbation_interval=1, **kw)


def test_pbt_exploits_and_records_each_member_once(tmp_path, ray_session):
    spec = pbt_spec()
    store = ResultsStore(tmp_path / "run")
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]
    runs = store.consolidate()
    assert len(runs) == len(GRID) and sorted(runs["rho0"]) == sorted(GRID) and runs["run_id"].is_unique
    assert set(runs["status"]) == {"ok"} and set(runs["search"]) == {"pbt/ray"}
    assert (runs["epochs_done"] == 4).all()
    assert runs["pbt_exploits"].sum() >= 1
    # the per-epoch rho schedule of an exploited member changes at the exploit; the others keep theirs
    rho = store.read_curves("epoch", ["rho"]).pivot_table(index="run_id", columns="epoch", values="value")
    exploited = runs.loc[runs["pbt_exploits"] > 0, "run_id"]
    changed = [rid for rid in exploited if rho.loc[rid].nunique() > 1 or rho.loc[rid].iloc[0] !=
               float(runs.set_index("run_id").loc[rid, "rho0"])]
    assert changed, rho
    for rid, row in runs.set_index("run_id").iterrows():
        assert rho.loc[rid].iloc[-1] == pytest.approx(row["rho_final"])
        if row["pbt_exploits"] == 0:
            assert (rho.loc[rid] == row["rho0"]).all()
    step = store.read_curves("step", ["rho"])
    assert set(step["run_id"]) == set(runs["run_id"])  # a per-step rho trace, like LETS's rho_t
    # the best member's final rho is rho*; the population's cost is the sum over its members
    best = runs.sort_values(["best_val_acc", "run_id"], ascending=[False, True]).iloc[0]  # ties: first run_id
    assert summary["rho_star"] == pytest.approx(best["rho_final"])
    assert summary["cost_grad_evals"] == pytest.approx(runs["grad_evals"].sum())
    assert (runs["grad_evals"] > 0).all()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pbt.json"))
    # a re-run trains nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "trials").glob("*.json")}
    run_search(spec, spec.methods[0], {}, store)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "trials").glob("*.json")} == mtimes
    # synchronous PBT with a seeded scheduler: the same population again, in a fresh store
    again = ResultsStore(tmp_path / "again")
    run_search(spec, spec.methods[0], {}, again)
    cols = ["run_id", "pbt_exploits", "rho_final", "best_val_acc", "test_acc", "grad_evals"]
    pd.testing.assert_frame_equal(runs[cols].sort_values("run_id").reset_index(drop=True),
                                  again.consolidate()[cols].sort_values("run_id").reset_index(drop=True))
    rho_again = again.read_curves("epoch", ["rho"]).pivot_table(index="run_id", columns="epoch", values="value")
    pd.testing.assert_frame_equal(rho.sort_index(), rho_again.sort_index())


def test_pbt_population_and_validation():
    assert initial_rhos(SearchSpace(kind="pbt", seeds=(0,), grid=(0.1, 0.2))) == [0.1, 0.2]
    drawn = initial_rhos(SearchSpace(kind="pbt", seeds=(0,), rho_min=0.01, rho_max=1.0, n_trials=5))
    assert len(set(drawn)) == 5 and all(0.01 <= r <= 1.0 for r in drawn)
    assert drawn == initial_rhos(SearchSpace(kind="pbt", seeds=(0,), rho_min=0.01, rho_max=1.0, n_trials=5))
    with pytest.raises(SpecError, match=r"^methods\[0\]\.search\.engine: kind 'pbt' needs engine 'ray'"):
        tiny_spec("optuna", kind="pbt")
    with pytest.raises(SpecError, match=r"^methods\[0\]\.search\.grid: a population needs >= 2 members"):
        tiny_spec("ray", kind="pbt", grid=(0.1,))
    with pytest.raises(SpecError, match=r"quantile_fraction"):
        tiny_spec("ray", kind="pbt", quantile_fraction=0.7)


def test_pb2_without_its_packages_fails_in_one_line(tmp_path, monkeypatch):
    import builtins

    from hpo_bench.engines import ray_pbt

    real_import = builtins.__import__

    def no_gpy(name, *args, **kwargs):
        if name in ("GPy", "sklearn"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gpy)
    monkeypatch.setattr(ray_pbt, "_SCHEDULERS", {})
    spec = tiny_spec("ray", kind="pb2", grid=GRID, seeds=(0,), epochs=2)
    with pytest.raises(RuntimeError, match=r"^search\.kind 'pb2' needs the packages GPy and scikit-learn"):
        run_search(spec, spec.methods[0], {}, ResultsStore(tmp_path / "run"))


def test_pb2_explores_rho_with_its_gp_bandit(tmp_path, ray_session):
    spec = tiny_spec("ray", kind="pb2", grid=GRID, seeds=(0,), epochs=4, workers=4, cpus_per_trial=0.25,
                     quantile_fraction=0.5, perturbation_interval=1, rho_min=0.005, rho_max=6.0)
    store = ResultsStore(tmp_path / "run")
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]
    runs = store.consolidate()
    assert len(runs) == len(GRID) and set(runs["status"]) == {"ok"} and set(runs["search"]) == {"pb2/ray"}
    assert runs["pbt_exploits"].sum() >= 1
    explored = runs.loc[runs["pbt_exploits"] > 0, "rho_final"]
    assert explored.between(0.005, 6.0).all()  # PB2 proposes rho inside [rho_min, rho_max]
    assert summary["cost_grad_evals"] == pytest.approx(runs["grad_evals"].sum())


SPEC = f"""
name = "pbt-kill"
seeds = [0]
report = false
[data]
dataset = "mnist1d"
num_samples = 500
data_root = "{DATA_ROOT}"
[model]
name = "mnist1d_mlp"
[train]
epochs = 6
batch_size = 50
threads = 1
device = "cpu"
[[methods]]
label = "SAM"
strategy = "sam"
[methods.search]
kind = "pbt"
engine = "ray"
grid = {list(GRID)}
workers = 4
cpus_per_trial = 0.5
quantile_fraction = 0.5
perturbation_interval = 1
"""


def _cli(spec, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpo_bench.cli", "run", str(spec), "--out", str(out), "--jobs", "1",
                             "--no-progress"], cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_pbt_killed_then_rerun_records_each_member_once(tmp_path):
    spec, out = tmp_path / "spec.toml", tmp_path / "runs"
    spec.write_text(SPEC)
    proc = _cli(spec, out)
    deadline = time.time() + 240
    while not list(out.glob("*/checkpoints/*.pbt.json")):  # a member has reported a checkpoint
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no member checkpoint in time"
        time.sleep(0.05)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    run_dir = next(out.glob("pbt-kill-*"))
    assert len(list(run_dir.glob("trials/*.json"))) < len(GRID), "the population finished before the kill"
    rerun = _cli(spec, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    runs = pd.read_parquet(run_dir / "runs.parquet")
    members = runs[runs["search"] == "pbt/ray"]
    assert len(members) == len(GRID) and members["run_id"].is_unique and sorted(members["rho0"]) == sorted(GRID)
    assert set(members["status"]) == {"ok"} and (members["epochs_done"] == 6).all()
    evals = runs[runs["search"] == "pbt/ray/eval"]
    assert len(evals) == 1 and evals["seed"].tolist() == [0]  # the evaluation run at rho* on the spec's seed
    assert (members["seed"] == 1000).all()
