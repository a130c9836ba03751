"""Concurrent local execution (``--jobs``): same rows as a sequential run, clean Ctrl-C, exactly-once resume."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from hpo_bench import experiment
from hpo_bench.config import load_spec
from hpo_bench.engines.ray_engine import RayEngine
from hpo_bench.experiment import run_experiment
from hpo_bench.store import ResultsStore
from tests.conftest import ROOT, alive, descendants

SPEC = """
name = "pool"
seeds = [0, 1]
report = false
[data]
dataset = "mnist1d"
num_samples = 500
[model]
name = "mnist1d_mlp"
[train]
epochs = {epochs}
batch_size = 50
threads = 1
[[methods]]
label = "ERM"
strategy = "erm"
[[methods]]
label = "Grid SAM"
strategy = "sam"
[methods.search]
grid = [0.02, 0.2]
[[methods]]
label = "SAM at rho*"
strategy = "sam"
rho_from = "Grid SAM"
[[methods]]
label = "LETS-SAM"
strategy = "lets-sam"
rho = 0.05
params = {{ beta = 0.01 }}
"""
N_RUNS = 2 + 4 + 2 + 2 + 2  # ERM, grid (2 rho x 2 selection seeds), its 2 evaluation runs, rho_from, LETS
METRICS = ["best_val_acc", "test_acc", "last_train_loss", "last_val_loss", "last_test_loss", "grad_evals", "rho_final"]


def write_spec(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "pool.toml"
    path.write_text(SPEC.format(epochs=epochs))
    return path


def keyed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.set_index(["method", "rho0", "seed"]).sort_index()


def test_concurrent_rows_equal_sequential_rows(tmp_path):
    spec = load_spec(write_spec(tmp_path, epochs=2))
    seq = run_experiment(spec, ResultsStore(tmp_path / "seq"), show_progress=False, jobs=1)
    par_store = ResultsStore(tmp_path / "par")
    par = run_experiment(spec, par_store, show_progress=False, jobs=2)
    assert len(seq) == len(par) == N_RUNS
    assert sorted(seq["run_id"]) == sorted(par["run_id"])
    pd.testing.assert_frame_equal(keyed(seq)[METRICS], keyed(par)[METRICS])  # the same bits
    searches = par_store.read_table("searches")
    assert list(searches["method"]) == ["Grid SAM"] and searches["rho_star"].iloc[0] in (0.02, 0.2)
    assert set(par.loc[par["method"] == "SAM at rho*", "rho0"]) == {searches["rho_star"].iloc[0]}


def test_plain_methods_train_their_seeds_as_one_population_unless_told_not_to(tmp_path):
    spec = load_spec(write_spec(tmp_path, epochs=1))
    runs = run_experiment(spec, ResultsStore(tmp_path / "pop"), show_progress=False, jobs=2)
    plain = runs[runs["search"] == ""]
    assert (plain["batched_group"] == len(spec.seeds)).all(), plain[["method", "batched_group"]]
    path = tmp_path / "one.toml"
    path.write_text(SPEC.format(epochs=1).replace('strategy = "erm"', 'strategy = "erm"\nbatched = false'))
    runs = run_experiment(load_spec(path), ResultsStore(tmp_path / "one"), show_progress=False, jobs=2)
    erm = runs[runs["method"] == "ERM"]
    assert erm["batched_group"].isna().all() if "batched_group" in erm else True
    assert (runs.loc[runs["method"] == "LETS-SAM", "batched_group"] == 2).all()


OVERLAP_SPEC = SPEC[:SPEC.index("[[methods]]")].replace('"pool"', '"overlap"').format(epochs=1) + """\
[[methods]]
label = "ERM"
strategy = "erm"
batched = false
""" + "".join(f"""\
[[methods]]
label = "Grid ({name})"
strategy = "sam"
[methods.search]
engine = "{engine}"
grid = [0.02, 0.2]
""" for name, engine in (("Optuna", "optuna"), ("Ray Tune", "ray")))


@pytest.mark.parametrize("jobs", [1, 2])
def test_searches_run_while_phase_one_trains_ray_tune_searches_first(tmp_path, monkeypatch, jobs):
    """With worker processes, the driver starts the searches while the plain methods train (phase 1 in a
    driver thread), the search whose trials train in Ray's processes first; with one job, phase 1 is done
    before any search starts. (The searches are stand-ins here: this is about the schedule.)"""
    calls = []

    def search(sspec, method, setting, store, device, progress, pool):
        phase1 = any(t.name == "hpo-bench-units" for t in threading.enumerate())
        calls.append((method.label, phase1, len(store.done_ids())))
        return [{"summary": {"method": method.label, "rho_star": float("nan")}, "anytime": pd.DataFrame()}]

    monkeypatch.setattr(experiment, "run_search", search)
    monkeypatch.setattr(RayEngine, "warm_up", classmethod(lambda cls, cfg: None))
    path = tmp_path / "overlap.toml"
    path.write_text(OVERLAP_SPEC)
    runs = run_experiment(load_spec(path), ResultsStore(tmp_path / "run"), show_progress=False, jobs=jobs)
    assert [label for label, _, _ in calls] == ["Grid (Ray Tune)", "Grid (Optuna)"]
    if jobs == 1:
        assert [(p, n) for _, p, n in calls] == [(False, 2), (False, 2)]
    else:
        assert calls[0][1:] == (True, 0)  # ERM's two runs had not finished when the Ray search began
    assert sorted(runs["seed"]) == [0, 1] and set(runs["method"]) == {"ERM"}


def _start(spec: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpo_bench.cli", "run", str(spec), "--out", str(out), "--jobs", "2",
                             "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_trials(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(out.glob("*/trials/*.json"))) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("no trial finished in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_concurrent_run_stops_its_workers_and_resumes_exactly_once(tmp_path, sig):
    spec, out = write_spec(tmp_path, epochs=150), tmp_path / "runs"  # runs of a few seconds
    proc = _start(spec, out)
    _wait_for_trials(out, 1, proc)
    workers = descendants(proc.pid)
    assert workers, "no worker processes"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert stderr.strip().splitlines()[-1] == "hpo-bench: interrupted; re-run the same command to resume"
        assert "Traceback" not in stderr
    deadline = time.time() + 3  # well before a worker could finish the run it is training
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "a worker outlived its driver"
    done_before = {p.stem for p in out.glob("*/trials/*.json")}
    assert 0 < len(done_before) < N_RUNS
    rerun = _start(spec, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    runs = pd.read_parquet(next(out.glob("*/runs.parquet")))
    assert len(runs) == N_RUNS and runs["run_id"].is_unique


def _worker_view(name: str) -> tuple[str | None, int, int]:
    """In a pool worker: the environment variable ``name``, and the worker's parent and own pid."""
    import os

    return os.environ.get(name), os.getppid(), os.getpid()


def test_workers_are_forked_from_the_server_with_the_drivers_current_environment(monkeypatch):
    import os

    from hpo_bench.pool import TrialPool
    from hpo_bench.workers import start_server

    start_server()  # the server's environment is fixed now; the variable below is set later
    monkeypatch.setenv("HPO_BENCH_TEST_VARIABLE", "set after the server started")
    with TrialPool(2) as pool:
        views = [pool.submit_call(_worker_view, "HPO_BENCH_TEST_VARIABLE").result() for _ in range(4)]
    assert {v[0] for v in views} == {"set after the server started"}
    assert all(ppid != os.getpid() for _, ppid, _ in views)  # children of the fork server, not of this process
    assert len({pid for *_, pid in views}) <= 2


BURN = """
import resource, sys, time
from hpo_bench.pool import TrialPool
from hpo_bench.workers import stop_server

def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
    return time.process_time() - t

if __name__ == "__main__":
    with TrialPool(2) as pool:
        done = sum(f.result() for f in [pool.submit_call(burn, 1.0) for _ in range(2)])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stop_server()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(done, before.ru_utime + before.ru_stime, after.ru_utime + after.ru_stime)
"""


def test_the_workers_cpu_counts_in_the_drivers_children_once_the_server_is_stopped(tmp_path):
    """What /usr/bin/time reports: the server waits for its workers, the driver for the server."""
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    done, before, after = map(float, out.stdout.split())
    assert done >= 2.0 and before < 1.0 and after >= done
