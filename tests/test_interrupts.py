"""Ctrl-C (SIGINT) during a search through each parallel engine: one line, exit 130, no worker left, resumable."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, alive, descendants

INTERRUPTED = "hpo-bench: interrupted; re-run the same command to resume"
SPEC = """
name = "interrupt"
seeds = [0, 1]
report = false
[data]
dataset = "mnist1d"
num_samples = 500
[model]
name = "mnist1d_mlp"
[train]
epochs = 60
batch_size = 50
threads = 1
[[methods]]
label = "Grid"
strategy = "sam"
[methods.search]
kind = "grid"
engine = "{engine}"
grid = [0.01, 0.02, 0.05, 0.1]
workers = 2
"""
N_RUNS = 8 + 2  # the grid (4 rho x 2 selection seeds) and its evaluation runs at rho* (2 seeds)


def _start(spec: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "hpo_bench.cli", "run", str(spec), "--out", str(out),
                             "--no-progress", "--jobs", "2"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "optuna"])
def test_ctrl_c_during_a_search_ends_with_one_line_and_resumes(tmp_path, engine):
    spec, out = tmp_path / "spec.toml", tmp_path / "runs"
    spec.write_text(SPEC.format(engine=engine))
    proc = _start(spec, out)
    deadline = time.time() + 180
    while not list(out.glob("*/trials/*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.2)
    workers = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground process group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED, stderr
    assert "Traceback" not in stderr, stderr
    deadline = time.time() + 30
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if alive(w)], "a worker outlived its interrupted driver"
    done_before = {p.stem for p in out.glob("*/trials/*.json")}
    assert 0 < len(done_before) < N_RUNS
    rerun = _start(spec, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    runs = pd.read_parquet(next(out.glob("*/runs.parquet")))
    assert len(runs) == N_RUNS and runs["run_id"].is_unique
