"""Reliability: divergence inside a sweep, determinism across processes, SIGKILL fault injection."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hpo_bench.cli import main
from tests.conftest import ROOT, alive, descendants

TINY = (ROOT / "experiments" / "tiny.toml").read_text()
METRICS = ["best_val_acc", "test_acc", "last_val_acc", "last_test_acc", "last_train_loss", "last_val_loss",
           "last_test_loss", "grad_evals", "fwd_evals", "steps", "status", "best_epoch"]


def write_spec(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def run_dir_of(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def test_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    spec = write_spec(tmp_path, TINY + '\n[[methods]]\nlabel = "SAM huge"\nstrategy = "sam"\nrho = 1e30\n')
    assert main(["run", str(spec), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    runs = pd.read_parquet(run_dir_of(tmp_path / "o") / "runs.parquet").set_index("method")
    assert runs.loc["SAM huge", "status"] == "diverged"
    assert "non-finite" in runs.loc["SAM huge", "reason"] and runs.loc["SAM huge", "stop_step"] >= 0
    assert pd.isna(runs.loc["SAM huge", "test_acc"])  # never reported as a number
    assert (runs.drop(index="SAM huge")["status"] == "ok").all()
    assert "diverged" not in capsys.readouterr().err


def _cli(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "hpo_bench.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_same_spec_and_seed_give_identical_rows_in_separate_processes(tmp_path):
    spec = write_spec(tmp_path, TINY.replace("seeds = [0]", "seeds = [0, 1]"))
    frames = []
    for i in range(2):
        p = _cli(["run", str(spec), "--out", str(tmp_path / f"o{i}"), "--no-progress"])
        assert p.wait(timeout=300) == 0, p.stdout.read().decode()
        frames.append(pd.read_parquet(run_dir_of(tmp_path / f"o{i}") / "runs.parquet").sort_values("run_id")
                      .reset_index(drop=True))
    a, b = frames
    assert list(a["run_id"]) == list(b["run_id"])
    pd.testing.assert_frame_equal(a[METRICS], b[METRICS])


def assert_store_consistent(run_dir: Path, expected: int):
    runs = pd.read_parquet(run_dir / "runs.parquet")
    assert len(runs) == expected and runs["run_id"].is_unique
    assert not runs.duplicated(["method", "strategy", "rho0", "seed"]).any()
    pd.read_parquet(run_dir / "curves.parquet")
    for f in (run_dir / "trials").glob("*.json"):
        json.loads(f.read_text())  # no torn file
    json.loads((run_dir / "metadata.json").read_text())


def kill_and_resume(tmp_path, spec_text, expected_runs, kills=3, seed=0, window=(2.0, 6.0)):
    """SIGKILL `hpo-bench run` at random moments `kills` times, then let it finish; check the store."""
    spec = write_spec(tmp_path, spec_text)
    out = tmp_path / "o"
    rng = random.Random(seed)
    for _ in range(kills):
        p = _cli(["run", str(spec), "--out", str(out), "--no-progress"], start_new_session=True)
        time.sleep(rng.uniform(*window))
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    p = _cli(["run", str(spec), "--out", str(out), "--no-progress"])
    log = p.communicate(timeout=600)[0].decode()
    assert p.returncode == 0, log
    run_dir = run_dir_of(out)
    assert_store_consistent(run_dir, expected_runs)
    return run_dir


@pytest.mark.slow
def test_sigkill_local_sweep_then_rerun_completes_each_run_once(tmp_path):
    text = TINY.replace("seeds = [0]", "seeds = [0, 1, 2]").replace("epochs = 2", "epochs = 4")
    kill_and_resume(tmp_path, text, expected_runs=9, kills=3, seed=1)


def _search_spec(engine: str) -> str:
    extra = "workers = 2\n" if engine == "ray" else ""
    return (TINY.replace("seeds = [0]", "seeds = [0, 1]").replace("epochs = 2", "epochs = 3")
            + f'\n[[methods]]\nlabel = "Grid {engine}"\nstrategy = "sam"\n[methods.search]\nkind = "grid"\n'
              f'engine = "{engine}"\ngrid = [0.01, 0.02, 0.05, 0.1]\n{extra}')


@pytest.mark.slow
def test_sigkill_optuna_sweep_then_rerun_completes_each_run_once(tmp_path):
    # 3 plain methods x 2 seeds, the grid's 4 x 2 selection runs, the 2 evaluation runs at rho*
    run_dir = kill_and_resume(tmp_path, _search_spec("optuna"), expected_runs=6 + 8 + 2, kills=3, seed=2)
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal")))
    (study,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=study.study_name, storage=storage).trials
    complete = [t.user_attrs["run_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == 8  # each grid point told COMPLETE exactly once


@pytest.mark.slow
def test_sigkill_ray_sweep_then_rerun_completes_each_run_once(tmp_path):
    kill_and_resume(tmp_path, _search_spec("ray"), expected_runs=6 + 8 + 2, kills=3, seed=3, window=(5.0, 14.0))


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # idle; Ray lets them outlive a killed raylet a while


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_a_killed_driver_takes_its_workers_with_it(tmp_path, engine):
    """SIGKILL of the driver alone (not its group): its pool workers (Optuna grid) or the Ray instance it
    started, and so every trial worker, die with it; nothing keeps training to race a re-run."""
    text = (TINY.replace("seeds = [0]", "seeds = [0, 1]").replace("epochs = 2", "epochs = 40")
            + f'\n[[methods]]\nlabel = "Grid {engine}"\nstrategy = "sam"\n[methods.search]\nkind = "grid"\n'
              f'engine = "{engine}"\ngrid = [0.01, 0.1]\nworkers = 2\n')
    spec = write_spec(tmp_path, text)
    out = tmp_path / "o"
    p = _cli(["run", str(spec), "--out", str(out), "--no-progress", "--jobs", "2"], start_new_session=True)
    deadline = time.time() + 240
    while not any("Grid" in f.read_text() for f in out.glob("*/trials/*.json")):  # the search is training
        assert p.poll() is None, p.stdout.read().decode()
        assert time.time() < deadline, "the search did not start in time"
        time.sleep(0.2)
    workers = descendants(p.pid)
    assert workers
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    try:
        deadline = time.time() + 30
        left = workers
        while time.time() < deadline:
            left = {w: name for w, name in workers.items() if alive(w) and not name.startswith(RAY_AGENTS)}
            if not left:
                break
            time.sleep(0.5)
        assert not left, f"outlived their killed driver: {left}"
    finally:
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
