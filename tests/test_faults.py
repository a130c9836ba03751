"""Fault injection beyond SIGKILL: damaged result files, a torn Optuna journal, write errors (disk
full & co.), file permissions, reproducible TPE, Optuna storage shared by two specs, Ray settings
that would wait forever.

Each test damages or breaks one thing on purpose and checks that the run ends either complete (the
damaged part redone, everything else kept) or with one line naming what went wrong.
"""
from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from hpo_bench import store as store_mod
from hpo_bench.cli import main
from hpo_bench.config import SearchConfig, validate_spec
from hpo_bench.engines import get_engine
from hpo_bench.engines import common as engines_common
from hpo_bench.errors import SpecError, WriteError
from hpo_bench.experiment import run_experiment
from hpo_bench.search import run_search
from hpo_bench.store import ResultsStore, run_dir_for
from hpo_bench.trial import grid_trials

from conftest import ROOT

TINY = (ROOT / "experiments" / "tiny.toml").read_text()
DATA_ROOT = str(ROOT / ".cache" / "data")
CURVES = pd.DataFrame({"run_id": ["x"], "scope": ["epoch"], "epoch": [1], "step": [10], "metric": ["val_acc"],
                       "value": [0.5]})


def raw_spec(name="faults", engine="optuna", kind="grid", grid=(0.05,), seeds=(0,), epochs=1, **search) -> dict:
    return {"name": name, "seeds": list(seeds), "report": False,
            "data": {"dataset": "mnist1d", "num_samples": 500, "data_root": DATA_ROOT},
            "model": {"name": "mnist1d_mlp"},
            "train": {"epochs": epochs, "batch_size": 50, "threads": 1, "device": "cpu"},
            "methods": [{"label": "SAM", "strategy": "sam",
                         "search": {"kind": kind, "engine": engine, "grid": list(grid), **search}}]}


def run_cli(tmp_path, text, out="o", jobs=1):
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    return main(["run", str(spec), "--out", str(tmp_path / out), "--no-progress", "--jobs", str(jobs)])


def run_dir_of(out: Path) -> Path:
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def finished_at(run_dir: Path) -> dict:
    return {p.stem: json.loads(p.read_text())["finished_at"] for p in (run_dir / "trials").glob("*.json")}


def damage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hpo_bench" and "damaged result" in r.getMessage()]


# ----------------------------------------------------------------------------- 1. damaged results

def test_damaged_results_are_set_aside_and_exactly_those_runs_are_redone(tmp_path, caplog):
    """A truncated row, an unreadable curves file and two foreign JSON files: the re-run sets them aside
    (kept in trials/quarantine/, one line each), retrains exactly the two damaged runs, and every run is
    in runs.parquet once."""
    caplog.set_level(logging.WARNING, logger="hpo_bench")
    assert run_cli(tmp_path, TINY) == 0
    run_dir = run_dir_of(tmp_path / "o")
    trials = run_dir / "trials"
    before = finished_at(run_dir)
    runs = pd.read_parquet(run_dir / "runs.parquet").set_index("method")
    erm, sam, asam = (runs.loc[m, "run_id"] for m in ("ERM", "SAM", "ASAM"))

    torn = (trials / f"{erm}.json").read_bytes()[:40]
    (trials / f"{erm}.json").write_bytes(torn)  # truncated row
    (trials / f"{sam}.parquet").write_bytes((trials / f"{sam}.parquet").read_bytes()[:-30])  # torn curves
    (trials / "notes.json").write_text('{"comment": "not a row"}')  # valid JSON, no run_id
    (trials / "copy.json").write_text((trials / f"{asam}.json").read_text())  # run_id != file name
    caplog.clear()

    assert run_cli(tmp_path, TINY) == 0
    after = finished_at(run_dir)
    assert set(after) == {erm, sam, asam}
    assert after[asam] == before[asam]  # kept
    assert after[erm] != before[erm] and after[sam] != before[sam]  # retrained
    runs = pd.read_parquet(run_dir / "runs.parquet")
    assert len(runs) == 3 and runs["run_id"].is_unique and set(runs["run_id"]) == {erm, sam, asam}
    assert len(pd.read_parquet(run_dir / "curves.parquet").query("run_id == @sam")) > 0
    quarantine = trials / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == sorted(
        [f"{erm}.json", f"{erm}.parquet", f"{sam}.json", f"{sam}.parquet", "notes.json", "copy.json"])
    assert (quarantine / f"{erm}.json").read_bytes() == torn  # never deleted, never rewritten
    lines = damage_lines(caplog)
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    for name in (f"{erm}.json", f"{sam}.parquet", "notes.json", "copy.json"):
        assert sum(name in line and "moved" in line for line in lines) == 1, (name, lines)

    caplog.clear()
    assert run_cli(tmp_path, TINY) == 0  # nothing damaged, nothing retrained
    assert finished_at(run_dir) == after and not damage_lines(caplog)


def _row(run_id: str) -> dict:
    return {"run_id": run_id, "method": "m", "status": "ok", "finished_at": 1.0}


DAMAGE = {
    "truncated row": lambda t, rid: (t / f"{rid}.json").write_text('{"run_id": "' + rid),
    "empty row": lambda t, rid: (t / f"{rid}.json").write_bytes(b""),
    "row not an object": lambda t, rid: (t / f"{rid}.json").write_text(f'["{rid}"]'),
    "row without run_id": lambda t, rid: (t / f"{rid}.json").write_text('{"status": "ok"}'),
    "row of another run": lambda t, rid: (t / f"{rid}.json").write_text(json.dumps(_row("other"))),
    "row not UTF-8": lambda t, rid: (t / f"{rid}.json").write_bytes(b'{"run_id": "\xff\xfe"}'),
    "curves not parquet": lambda t, rid: (t / f"{rid}.parquet").write_bytes(b"PAR1 not parquet"),
    "curves truncated": lambda t, rid: (t / f"{rid}.parquet").write_bytes((t / f"{rid}.parquet").read_bytes()[:50]),
    "curves missing": lambda t, rid: (t / f"{rid}.parquet").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_kind_of_damage_is_named_set_aside_and_not_done(tmp_path, damage, caplog):
    caplog.set_level(logging.WARNING, logger="hpo_bench")
    store = ResultsStore(tmp_path)
    for rid in ("good", "bad"):
        store.write_run(_row(rid), CURVES.assign(run_id=rid))
    DAMAGE[damage](store.trials, "bad")
    before = sorted(p.name for p in store.trials.iterdir())

    # the read-only views skip it, name it, and move nothing
    assert list(store.finished_rows()["run_id"]) == ["good"]
    assert set(store.read_curves("epoch", ["val_acc"])["run_id"]) == {"good"}
    assert sorted(p.name for p in store.trials.iterdir()) == before
    lines = damage_lines(caplog)
    assert lines and all("bad." in line and "left in place" in line and "\n" not in line for line in lines)
    caplog.clear()

    # whatever decides what is done sets it aside (both files of the run) and counts it as not done
    fresh = ResultsStore(tmp_path)
    assert fresh.has("good") and not fresh.has("bad")
    assert fresh.done_ids() == ["good"] and list(fresh.consolidate()["run_id"]) == ["good"]
    with pytest.raises(FileNotFoundError):
        fresh.load_row("bad")
    moved = sorted(p.name for p in fresh.quarantine.iterdir())
    assert moved and all(name.startswith("bad.") for name in moved)
    assert not (store.trials / "bad.json").exists() and not (store.trials / "bad.parquet").exists()
    (line,) = damage_lines(caplog)
    assert "bad." in line and str(fresh.quarantine) in line and "\n" not in line
    assert [p.name for p in fresh.quarantined] == moved

    # redone: the run is written again; the quarantine keeps the damaged copy under its own name
    fresh.write_run(_row("bad"), CURVES.assign(run_id="bad"))
    assert fresh.has("bad") and sorted(fresh.done_ids()) == ["bad", "good"]


def test_quarantine_never_overwrites_an_earlier_damaged_copy(tmp_path):
    store = ResultsStore(tmp_path)
    for n in range(2):
        store.write_run(_row("r"), CURVES)
        (store.trials / "r.json").write_text(f"torn {n}")
        assert not store.has("r")
    names = sorted(p.name for p in store.quarantine.iterdir())
    assert names == ["r.json", "r.json.1", "r.parquet", "r.parquet.1"]
    assert (store.quarantine / "r.json").read_text() == "torn 0" and (store.quarantine / "r.json.1").read_text() == "torn 1"


# ----------------------------------------------------------------------------- 2. torn Optuna journal

def test_torn_optuna_journal_tail_is_repaired_with_a_backup(tmp_path, caplog):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    caplog.set_level(logging.WARNING, logger="hpo_bench")
    spec = validate_spec(raw_spec(grid=(0.05,)))
    store = ResultsStore(tmp_path / "run")
    cfg = SearchConfig(**spec.methods[0].search)
    get_engine("optuna", cfg, store.root).run_trials(grid_trials(spec, spec.methods[0], {}, "grid/optuna"), store)
    journal = store.root / "optuna.journal"
    intact = journal.read_bytes()
    torn = b'{"op_code":6,"worker_id":"w","trial_id":0,"par'  # a record cut by a kill
    journal.write_bytes(intact + torn)

    # the fault: Optuna appends the next record to the torn line, and every later read fails
    broken = tmp_path / "broken.journal"
    broken.write_bytes(intact + torn)
    import optuna

    with pytest.raises((AssertionError, ValueError)):
        optuna.create_study(study_name="another", storage=JournalStorage(JournalFileBackend(str(broken))))
        JournalStorage(JournalFileBackend(str(broken))).get_all_studies()

    # the re-run (one more grid point, so it writes to the journal) repairs it first and completes
    spec2 = validate_spec(raw_spec(grid=(0.05, 0.1)))
    trials2 = grid_trials(spec2, spec2.methods[0], {}, "grid/optuna")
    rows = get_engine("optuna", cfg, store.root).run_trials(trials2, store)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert (store.root / "optuna.journal.torn-1").read_bytes() == intact + torn
    assert journal.read_bytes().startswith(intact) and journal.read_bytes().endswith(b"\n")
    (line,) = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
    assert str(journal) in line and "optuna.journal.torn-1" in line
    rows = get_engine("optuna", cfg, store.root).run_trials(trials2, store)  # and stays readable
    assert len(store.consolidate()) == 2


# ----------------------------------------------------------------------------- 3. write errors

def fail_writes_after(monkeypatch, n_runs: int, err: OSError) -> list:
    """Make the atomic writer fail with ``err`` once ``n_runs`` run rows have been written."""
    real, rows, failed = store_mod._commit, [], []

    def commit(tmp, path):
        if len(rows) >= n_runs:
            failed.append(Path(path))
            raise err
        real(tmp, path)
        if Path(path).parent.name == "trials" and Path(path).suffix == ".json":
            rows.append(Path(path))

    monkeypatch.setattr(store_mod, "_commit", commit)
    return failed


WRITE_ERRORS = {"disk full": (errno.ENOSPC, "No space left on device"),
                "read-only file system": (errno.EROFS, "Read-only file system"),
                "quota exceeded": (errno.EDQUOT, "Disk quota exceeded")}


@pytest.mark.parametrize("kind", sorted(WRITE_ERRORS))
def test_write_error_is_one_line_exit_2_and_keeps_finished_runs(tmp_path, monkeypatch, capsys, kind):
    code, strerror = WRITE_ERRORS[kind]
    failed = fail_writes_after(monkeypatch, 1, OSError(code, strerror))
    assert run_cli(tmp_path, TINY) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == f"hpo-bench: error: {WriteError(code, strerror, str(failed[0]))}"
    assert str(failed[0]) in lines[0] and strerror in lines[0]
    run_dir = run_dir_of(tmp_path / "o")
    kept = finished_at(run_dir)
    assert len(kept) == 1 and not list(run_dir.rglob(".*.tmp"))  # the finished run is intact, no leftovers

    monkeypatch.undo()
    assert run_cli(tmp_path, TINY) == 0
    done = finished_at(run_dir)
    assert len(done) == 3 and all(done[rid] == t for rid, t in kept.items())
    runs = pd.read_parquet(run_dir / "runs.parquet")
    assert len(runs) == 3 and runs["run_id"].is_unique


def test_write_error_inside_an_optuna_sweep_stops_it_in_one_line(tmp_path, monkeypatch, capsys):
    """An Optuna worker catches a failing trial and goes on; a WriteError must stop the sweep instead."""
    spec = TINY + ('\n[[methods]]\nlabel = "Grid optuna"\nstrategy = "sam"\n[methods.search]\nkind = "grid"\n'
                   'engine = "optuna"\nworkers = 1\ngrid = [0.01, 0.02, 0.05]\n')
    failed = fail_writes_after(monkeypatch, 4, OSError(errno.ENOSPC, "No space left on device"))  # 3 plain + 1 grid
    assert run_cli(tmp_path, spec) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hpo-bench: error: cannot write {failed[0]}: No space left")
    assert len(failed) == 1  # the sweep stopped at the first failed write
    monkeypatch.undo()
    assert run_cli(tmp_path, spec) == 0
    runs = pd.read_parquet(run_dir_of(tmp_path / "o") / "runs.parquet")
    assert len(runs) == 3 + 3 + 1 and runs["run_id"].is_unique  # plain, grid, its evaluation run at rho*


@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_write_error_in_a_worker_process_reaches_the_driver(tmp_path, engine, request):
    """A real OS error at write time in a worker process (the target of the rename is a directory)."""
    if engine == "ray":
        request.getfixturevalue("ray_session")
    spec = validate_spec(raw_spec(engine=engine, grid=(0.02, 0.2), workers=2))
    trials = grid_trials(spec, spec.methods[0], {}, f"grid/{engine}")
    store = ResultsStore(tmp_path / "run")
    blocker = store.trials / f"{trials[1].run_id}.parquet"
    (blocker / "in-the-way").mkdir(parents=True)
    with pytest.raises(WriteError) as err:
        get_engine(engine, SearchConfig(**spec.methods[0].search), store.root).run_trials(trials, store)
    assert err.value.filename == str(blocker) and err.value.errno in (errno.EISDIR, errno.ENOTEMPTY)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"cannot write {blocker}: ")
    # the other point finished or was stopped with its driver; the blocked one is never stored
    assert store.done_ids() in ([], [trials[0].run_id])


def test_write_error_of_the_body_names_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    def to_parquet(self, path, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    with pytest.raises(WriteError) as err:
        ResultsStore(tmp_path).write_table("searches", pd.DataFrame({"a": [1]}))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "searches.parquet")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


# ----------------------------------------------------------------------------- 4. permissions

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)],
                         ids=["umask 022", "umask 027", "umask 002"])
def test_result_files_get_the_usual_permissions(tmp_path, umask, mode):
    code = (f"import os, sys\nos.umask({umask})\nimport pandas as pd\n"
            "from hpo_bench.store import ResultsStore, atomic_write_text\n"
            "s = ResultsStore(sys.argv[1])\n"
            "s.write_run({'run_id': 'r'}, pd.DataFrame({'a': [1]}))\ns.consolidate()\n"
            "atomic_write_text(s.root / 'metadata.json', '{}')\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 5
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}


# ----------------------------------------------------------------------------- 5. reproducible TPE

@pytest.fixture
def short_tpe_rounds(monkeypatch):
    """Two random start-up points, then rounds of two model-based points: TPE's model is used within 4 points."""
    monkeypatch.setattr(engines_common, "TPE_STARTUP", 2)
    monkeypatch.setattr(engines_common, "TPE_ROUND", 2)


def tpe_spec(n_trials=4, workers=1):
    return validate_spec(raw_spec(kind="tpe", grid=(), n_trials=n_trials, rho_min=0.01, rho_max=1.0,
                                  sampler_seed=7, workers=workers))


def tpe_points_of(store: ResultsStore) -> list[float]:
    """The ρ values of the points in the study, by point number (each point recorded once)."""
    import optuna

    from hpo_bench.engines.optuna_engine import storage_for

    storage = storage_for("", store.root)
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    points = [t.user_attrs["point"] for t in trials]
    assert sorted(points) == list(range(len(points)))
    return [t.params["rho"] for t in sorted(trials, key=lambda t: t.user_attrs["point"])]


def test_tpe_evaluates_the_same_points_in_every_run_with_any_number_of_workers(tmp_path, short_tpe_rounds):
    rhos = []
    for i, workers in enumerate((1, 1, 2)):
        store = ResultsStore(tmp_path / f"run{i}")
        spec = tpe_spec(workers=workers)
        run_search(spec, spec.methods[0], {}, store)
        runs = store.consolidate()
        assert len(runs) == 4 and runs["run_id"].is_unique
        points = tpe_points_of(store)
        assert sorted(points) == sorted(runs["rho0"])
        rhos.append(points)
    assert rhos[0] == rhos[1] == rhos[2]
    assert len(set(rhos[0])) == 4


def test_tpe_interrupted_and_resumed_evaluates_the_same_points(tmp_path, short_tpe_rounds, monkeypatch):
    from hpo_bench import pool as pool_mod

    spec = tpe_spec()
    full = ResultsStore(tmp_path / "full")
    run_search(spec, spec.methods[0], {}, full)

    store = ResultsStore(tmp_path / "killed")
    real, calls = pool_mod.execute_trial, []

    def dies_after_first_point(*args, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(pool_mod, "execute_trial", dies_after_first_point)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, spec.methods[0], {}, store)
    assert len(store.done_ids()) == 1
    first = {rid: store.load_row(rid)["finished_at"] for rid in store.done_ids()}
    monkeypatch.setattr(pool_mod, "execute_trial", real)
    run_search(spec, spec.methods[0], {}, store)

    assert tpe_points_of(store) == tpe_points_of(full)
    runs, ref = store.consolidate(), full.consolidate()
    assert sorted(runs["rho0"]) == sorted(ref["rho0"]) and runs["run_id"].is_unique
    assert all(store.load_row(rid)["finished_at"] == t for rid, t in first.items())  # not retrained
    metrics = ["rho0", "best_val_acc", "test_acc", "grad_evals"]
    pd.testing.assert_frame_equal(runs.sort_values("rho0")[metrics].reset_index(drop=True),
                                  ref.sort_values("rho0")[metrics].reset_index(drop=True))


# ----------------------------------------------------------------------------- 6. shared Optuna storage

def test_two_specs_sharing_one_optuna_storage_never_share_a_study(tmp_path):
    import optuna
    from optuna.trial import TrialState

    url = f"sqlite:///{tmp_path}/shared.db"
    stores = {}
    for name in ("spec-a", "spec-b", "spec-a"):  # a, then b, then a again
        spec = validate_spec(raw_spec(name=name, grid=(0.02, 0.2), storage=url))
        stores[name] = ResultsStore(run_dir_for(spec, tmp_path / "out"))
        runs = run_experiment(spec, stores[name], show_progress=False)
        assert len(runs) == 2 + 1 and runs["run_id"].is_unique  # the grid and its evaluation run at rho*
    names = optuna.get_all_study_names(url)
    assert len(names) == 2 and {n.split("/")[0].rsplit("-", 2)[0] for n in names} == {"spec-a", "spec-b"}
    for name in names:
        trials = optuna.load_study(study_name=name, storage=url).trials
        complete = [t.user_attrs["run_id"] for t in trials if t.state == TrialState.COMPLETE]
        assert len(trials) == 2 and len(complete) == len(set(complete)) == 2  # each point told COMPLETE once


# ----------------------------------------------------------------------------- 7. Ray waits forever no more

def test_unreachable_ray_address_is_one_line_within_seconds(tmp_path, capsys):
    text = ('name = "ray-address"\nseeds = [0]\nreport = false\n[data]\nnum_samples = 500\n'
            '[model]\nname = "mnist1d_mlp"\n[train]\nepochs = 1\nbatch_size = 50\n[[methods]]\nlabel = "SAM"\n'
            'strategy = "sam"\n[methods.search]\nkind = "grid"\nengine = "ray"\ngrid = [0.05]\n'
            'address = "127.0.0.1:1"\n')  # nobody listens on port 1
    t0 = time.monotonic()
    assert run_cli(tmp_path, text) == 2
    assert time.monotonic() - t0 < 60
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpo-bench: error: search.address: no Ray head answers at "
                                                   "'127.0.0.1:1'"), lines
    assert finished_at(run_dir_of(tmp_path / "o")) == {}


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "nohost", "host:port"])
def test_ray_address_check_fails_fast(address):
    from hpo_bench.engines.ray_engine import check_address

    t0 = time.monotonic()
    with pytest.raises(SpecError, match=r"^search\.address: ") as err:
        check_address(address, timeout=2.0)
    assert time.monotonic() - t0 < 5 and "\n" not in str(err.value)


@pytest.mark.parametrize("field,value", [("cpus_per_trial", 3.0), ("gpus_per_trial", 1.0)])
def test_trial_larger_than_every_ray_node_is_refused(tmp_path, ray_session, field, value):
    spec = validate_spec(raw_spec(engine="ray", **{field: value}))
    store = ResultsStore(tmp_path / "run")
    engine = get_engine("ray", SearchConfig(**spec.methods[0].search), store.root)
    t0 = time.monotonic()
    with pytest.raises(SpecError, match=rf"^search\.{field}: {value:g}, but the largest node of the Ray cluster "
                                        rf"has \d+ (CPU|GPU)\(s\)") as err:
        engine.run_trials(grid_trials(spec, spec.methods[0], {}, "grid/ray"), store)
    assert time.monotonic() - t0 < 30 and "\n" not in str(err.value)
    assert store.done_ids() == []
