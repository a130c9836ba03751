"""Ray Tune on a real two-node Ray cluster: trials on both nodes, a killed driver, a re-run that completes
each run once while the cluster stays up.

The cluster (``ray.cluster_utils.Cluster``: a head node and a second node, one CPU each, on explicit
ports of this machine) lives in a helper process of its own, so it never meets the test session's
own Ray instance (``ray_session``); the drivers join it by its explicit address, never ``auto``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT

CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.readline()  # until the test closes our stdin (or dies)
cluster.shutdown()
"""

SPEC = """
name = "cluster"
seeds = [0]
report = false
[data]
dataset = "mnist1d"
num_samples = 500
[model]
name = "mnist1d_mlp"
[train]
epochs = 4
batch_size = 50
threads = 1
[[methods]]
label = "Grid Ray"
strategy = "sam"
[methods.search]
kind = "grid"
engine = "ray"
grid = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
workers = 2
cpus_per_trial = 1
address = "{address}"
"""


@pytest.fixture
def ray_cluster():
    """The GCS address of a two-node Ray cluster (head + one more node, 1 CPU each), shut down at the end."""
    helper = subprocess.Popen([sys.executable, "-c", CLUSTER], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    address = helper.stdout.readline().strip()
    if not address:
        helper.kill()
        pytest.fail("the two-node Ray cluster did not start")
    try:
        yield address, helper
    finally:
        helper.stdin.close()
        try:
            helper.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(helper.pid, signal.SIGKILL)
            helper.wait()


def _run(spec: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "hpo_bench.cli", "run", str(spec), "--out", str(out),
                             "--no-progress", "--jobs", "1"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _search_rows(out: Path) -> dict[str, float]:
    rows = {}
    for f in out.glob("*/trials/*.json"):
        row = json.loads(f.read_text())
        if row.get("search") == "grid/ray":
            rows[row["run_id"]] = row["finished_at"]
    return rows


def test_two_node_cluster_survives_a_killed_driver_and_the_rerun_completes_each_run_once(tmp_path, ray_cluster):
    address, helper = ray_cluster
    spec = tmp_path / "cluster.toml"
    spec.write_text(SPEC.format(address=address))
    out = tmp_path / "out"

    driver = _run(spec, out)
    deadline = time.time() + 240
    while len(_search_rows(out)) < 2:  # trials are running on the cluster
        assert driver.poll() is None, driver.communicate()[0]
        assert time.time() < deadline, "no trial finished in time"
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate()
    before = _search_rows(out)
    assert 2 <= len(before) < 6 and helper.poll() is None  # the cluster stays up

    rerun = _run(spec, out)
    log = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, log
    assert "Traceback" not in log and f"({len(_search_rows(out)) - len(before)}/" in log  # one line per run, k/n
    assert helper.poll() is None  # a cluster the driver joined is never shut down by it

    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    runs = pd.read_parquet(run_dir / "runs.parquet")
    assert runs["run_id"].is_unique
    search = runs[runs["search"] == "grid/ray"]
    assert len(search) == 6 and not search.duplicated(["rho0", "seed"]).any()
    after = _search_rows(out)
    assert all(after[rid] == t for rid, t in before.items())  # finished runs were not retrained

    nodes = set()
    for result in (run_dir / "ray").rglob("result.json"):
        for line in result.read_text().splitlines():
            if line.strip():
                report = json.loads(line)
                if report.get("phase") == "final":
                    nodes.add(report["node_id"])
                    assert {"run_id", "method", "rho", "seed"} <= set(report["config"])
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s), expected both"
