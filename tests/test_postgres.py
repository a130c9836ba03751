"""Optuna on a real PostgreSQL server: several drivers on one study, SIGKILLs, heartbeats, secrets.

The server is started by the fixture itself: the Debian binaries under /usr/lib/postgresql/*/bin
(package ``postgresql``) initialize a cluster in a temporary folder and serve it on a free port of
127.0.0.1 (as the ``postgres`` user when the tests run as root, since initdb refuses root). Without
those binaries, or without the psycopg driver (``pip install -e '.[postgres]'``), these tests FAIL:
they are never skipped.
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from hpo_bench.cli import main
from tests.conftest import ROOT

PASSWORD = "s3cr3t-Pa55word"
USER = "hpo"
PACKAGE_HINT = "install the Debian package 'postgresql' (apt-get install -y postgresql)"


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    if not found:
        pytest.fail(f"no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin; {PACKAGE_HINT}")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """``postgresql+psycopg://hpo:<password>@127.0.0.1:<port>/postgres`` of a server started for this session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("the PostgreSQL driver psycopg is not installed; pip install -e '.[postgres]'")
    bindir = _pg_bin()
    as_root = os.geteuid() == 0
    prefix = []
    if as_root:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(f"running as root needs the 'postgres' user to run initdb; {PACKAGE_HINT}")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="hpo-bench-pg-"))
    data, sock, pwfile, log = root / "data", root / "sock", root / "pw", root / "server.log"
    sock.mkdir()
    pwfile.write_text(PASSWORD + "\n")
    if as_root:
        for path in (root, sock, pwfile):
            shutil.chown(path, "postgres", "postgres")
    port = _free_port()

    def pg(*args, timeout=120):
        out = subprocess.run(prefix + list(args), capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            detail = (out.stdout + out.stderr).strip()[-1500:]
            pytest.fail(f"{Path(args[0]).name} failed: {detail}\n{log.read_text()[-1500:] if log.exists() else ''}")

    pg(str(bindir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
       "--no-sync", "-E", "UTF8")
    pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
       f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
       "-c full_page_writes=off -c max_connections=200", "start")
    try:
        yield f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def grid_spec(tmp_path: Path, url: str, name: str = "pg", grid=(0.01, 0.03, 0.1, 0.3), seeds=(0, 1), epochs=2,
              workers=1, report=False) -> Path:
    text = (f'name = "{name}"\nseeds = {list(seeds)}\nreport = {str(report).lower()}\n'
            '[data]\ndataset = "mnist1d"\nnum_samples = 500\n[model]\nname = "mnist1d_mlp"\n'
            f'[train]\nepochs = {epochs}\nbatch_size = 50\nthreads = 1\n'
            '[[methods]]\nlabel = "Grid PG"\nstrategy = "sam"\n[methods.search]\nkind = "grid"\nengine = "optuna"\n'
            f'grid = {list(grid)}\nworkers = {workers}\nstorage = "{url}"\n')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def study_trials(url: str, run_dir: Path):
    """The (one) study of ``run_dir`` in the storage ``url``."""
    import optuna

    names = [n for n in optuna.get_all_study_names(url) if n.startswith(f"{run_dir.name}-")]
    assert len(names) == 1, names  # the driver and the worker shared one study
    return optuna.load_study(study_name=names[0], storage=url)


def one_complete_trial_and_one_row_per_point(url: str, run_dir: Path, n_points: int):
    from optuna.trial import TrialState

    study = study_trials(url, run_dir)
    runs = pd.read_parquet(run_dir / "runs.parquet")
    assert runs["run_id"].is_unique
    runs = runs[runs["search"] == "grid/optuna"]  # the search's points (not a later run at the selected rho)
    assert len(runs) == n_points
    assert not runs.duplicated(["rho0", "seed"]).any() and (runs["status"] == "ok").all()
    complete = [t.user_attrs["run_id"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == sorted(runs["run_id"]), "each point must have exactly one COMPLETE trial"
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(runs.set_index("run_id").loc[t.user_attrs["run_id"], "best_val_acc"])
    return study


def _cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "hpo_bench.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


# ----------------------------------------------------------------------------- tests

def test_study_records_and_the_password_is_never_written_or_printed(tmp_path, postgres_url, capsys):
    from optuna.distributions import FloatDistribution

    spec = grid_spec(tmp_path, postgres_url, name="pg-secret", grid=(0.02, 0.2), seeds=(0,), report=True)
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    printed = capsys.readouterr()
    assert PASSWORD not in printed.out + printed.err
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert (run_dir / "report.md").is_file() and (run_dir / "metadata.json").is_file()
    for path in out.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), f"{path} holds the password"
    assert f"{USER}:***@" in (run_dir / "metadata.json").read_text()
    study = one_complete_trial_and_one_row_per_point(postgres_url, run_dir, 2)
    assert study.metric_names == ["val_acc"]
    assert study.user_attrs["spec"] == "pg-secret" and study.user_attrs["run_dir"] == str(run_dir.resolve())
    assert study.user_attrs["git_commit"] and study.user_attrs["kind"] == "grid"
    for t in study.trials:
        assert t.distributions["rho"] == FloatDistribution(0.02, 0.2, log=True)
        assert sorted(t.intermediate_values) == [1, 2]  # per-epoch validation accuracy
        assert t.user_attrs["status"] == "ok" and t.user_attrs["owner"]


def test_missing_driver_and_unreachable_server_are_one_line_and_write_nothing(tmp_path, capsys):
    port = _free_port()  # nobody listens there
    for url, expected in ((f"postgresql+psycopg2://u:{PASSWORD}@127.0.0.1:{port}/db", "needs the database driver"),
                          (f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:{port}/db", "cannot connect to")):
        spec = grid_spec(tmp_path, url, name="pg-bad")
        t0 = time.time()
        assert main(["run", str(spec), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert time.time() - t0 < 30
        assert err.count("\n") == 1 and err.startswith("hpo-bench: error: methods[0].search.storage: "), err
        assert expected in err and PASSWORD not in err and "u:***@" in err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_driver_killed_before_telling_is_reconciled_from_the_store(tmp_path, postgres_url):
    """A run that finished (row written) under a driver killed before its tell: COMPLETE once, not retrained."""
    from optuna.trial import TrialState

    from hpo_bench.config import SearchConfig, load_spec
    from hpo_bench.engines import get_engine
    from hpo_bench.engines.common import set_name
    from hpo_bench.engines.optuna_storage import this_machine
    from hpo_bench.execute import execute_trial
    from hpo_bench.store import ResultsStore, run_dir_for
    from hpo_bench.trial import grid_trials

    spec = load_spec(grid_spec(tmp_path, postgres_url, name="pg-tell", grid=(0.05, 0.5), seeds=(0,)), [])
    method = spec.methods[0]
    cfg = SearchConfig(**method.search)
    trials = grid_trials(spec, method, {}, "grid/optuna")
    store = ResultsStore(run_dir_for(spec, tmp_path / "out"))
    engine = get_engine("optuna", cfg, store.root)  # the state a killed driver leaves behind:
    study = engine._study(engine._study_name(set_name(method.label, "points", [t.run_id for t in trials])))
    done = trials[0]
    row = execute_trial(done, store)
    study.enqueue_trial({"rho": done.rho, "seed": done.seed}, user_attrs={"run_id": done.run_id})
    popped = study.ask()
    for key, value in {"run_id": done.run_id, "status": "ok", "owner": f"{this_machine()}/{os.getpid()}/0"}.items():
        popped.set_user_attr(key, value)  # killed here: between set_user_attr and tell
    rows = get_engine("optuna", cfg, store.root).run_trials(trials, store)
    assert len(rows) == 2 and store.load_row(done.run_id)["finished_at"] == row["finished_at"]  # not retrained
    study = study_trials(postgres_url, store.root)
    states = {t.number: (t.state, t.user_attrs.get("reason")) for t in study.trials}
    assert states[popped.number] == (TrialState.FAIL, "interrupted")
    store.consolidate()
    one_complete_trial_and_one_row_per_point(postgres_url, store.root, 2)


def test_heartbeat_fails_a_trial_held_on_another_machine(tmp_path, postgres_url, monkeypatch):
    """A RUNNING trial of a driver on another machine whose heartbeat stopped is failed after the grace period."""
    from optuna.trial import TrialState

    from hpo_bench.config import SearchConfig, load_spec
    from hpo_bench.engines import get_engine
    from hpo_bench.engines.common import set_name
    from hpo_bench.store import ResultsStore, run_dir_for
    from hpo_bench.trial import grid_trials

    monkeypatch.setenv("HPO_BENCH_OPTUNA_HEARTBEAT_S", "1")
    monkeypatch.setenv("HPO_BENCH_OPTUNA_GRACE_S", "3")
    spec = load_spec(grid_spec(tmp_path, postgres_url, name="pg-beat", grid=(0.05,), seeds=(0,)), [])
    cfg = SearchConfig(**spec.methods[0].search)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/optuna")
    store = ResultsStore(run_dir_for(spec, tmp_path / "out"))
    engine = get_engine("optuna", cfg, store.root)
    study = engine._study(engine._study_name(set_name(spec.methods[0].label, "points", [trials[0].run_id])))
    study.enqueue_trial({"rho": 0.05, "seed": 0}, user_attrs={"run_id": trials[0].run_id})
    lost = study.ask()
    lost.set_user_attr("owner", "elsewhere/00000000/4242/1")
    study._storage.record_heartbeat(lost._trial_id)  # its machine then went silent
    t0 = time.time()
    get_engine("optuna", cfg, store.root).run_trials(trials, store)
    assert time.time() - t0 >= 2.0  # it waited for the grace period, not less
    study = study_trials(postgres_url, store.root)
    assert {t.number: t.state for t in study.trials}[lost.number] == TrialState.FAIL
    store.consolidate()
    one_complete_trial_and_one_row_per_point(postgres_url, store.root, 1)


def _rows(out: str) -> int:
    return len(list(Path(out).glob("*/trials/*.json")))


def test_two_drivers_and_sigkills_leave_one_complete_trial_and_one_row_per_point(tmp_path, postgres_url):
    """`hpo-bench run` and `hpo-bench worker` on one study, SIGKILLed at random moments while they train
    (twice), then both to the end: each point has one COMPLETE trial and one row."""
    spec = grid_spec(tmp_path, postgres_url, name="pg-race", grid=(0.01, 0.03, 0.1, 0.3), seeds=(0, 1), epochs=3)
    out = str(tmp_path / "out")
    rng = random.Random(17)
    for _ in range(2):
        procs = [_cli("run", str(spec), "--out", out, "--no-progress", "--jobs", "1"),
                 _cli("worker", str(spec), "--out", out, "--no-progress", "--jobs", "1")]
        before, deadline = _rows(out), time.time() + 120
        while _rows(out) == before and time.time() < deadline and all(p.poll() is None for p in procs):
            time.sleep(0.05)  # kill while they train, whatever the machine's load
        time.sleep(rng.uniform(0.0, 1.5))
        victims = procs if rng.random() < 0.5 else [rng.choice(procs)]
        for p in victims:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:  # it had already ended (a fast machine): nothing left to kill
                pass
        time.sleep(rng.uniform(0.0, 1.0))
        for p in procs:
            if p not in victims and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    procs = [_cli("run", str(spec), "--out", out, "--no-progress", "--jobs", "1"),
             _cli("worker", str(spec), "--out", out, "--no-progress", "--jobs", "1")]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
        assert "Traceback" not in log and "UpdateFinishedTrialError" not in log and PASSWORD not in log, log
    assert "joining 1 Optuna search(es)" in logs[1]
    (run_dir,) = [p for p in Path(out).iterdir() if p.is_dir()]
    study = one_complete_trial_and_one_row_per_point(postgres_url, run_dir, 8)
    reasons = {t.user_attrs.get("reason") for t in study.trials if t.state.name == "FAIL"}
    assert reasons <= {"interrupted", "duplicate", None}
