"""Engines: parity (local = optuna = ray), exactly-once resume, storage URLs, TPE, ASHA cost."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from hpo_bench.config import SearchConfig, SpecError, validate_spec
from hpo_bench.engines import Engine, SearchSpace, get_engine, list_engines
from hpo_bench.search import SearchKind, get_search_kind, list_search_kinds, run_search
from hpo_bench.selection import select
from hpo_bench.storage_url import validate_storage_url
from hpo_bench.store import ResultsStore
from hpo_bench.trial import grid_trials, make_trial

from conftest import ROOT

DATA_ROOT = str(ROOT / ".cache" / "data")
METRICS = ["best_val_acc", "test_acc", "last_val_acc", "last_test_acc", "last_train_loss", "last_val_loss",
           "last_test_loss", "best_epoch", "grad_evals", "fwd_evals", "epochs_done", "status"]


def tiny_spec(engine="local", kind="grid", grid=(0.02, 0.2), seeds=(0, 1), epochs=2, train=None, **search):
    raw = {"name": "engines", "seeds": list(seeds), "report": False,
           "data": {"dataset": "mnist1d", "num_samples": 500, "data_root": DATA_ROOT},
           "model": {"name": "mnist1d_mlp"},
           "train": {"epochs": epochs, "batch_size": 50, "threads": 1, "device": "cpu", **(train or {})},
           "methods": [{"label": "SAM", "strategy": "sam",
                        "search": {"kind": kind, "engine": engine, "grid": list(grid), **search}}]}
    return validate_spec(raw)


def search_rows(engine, tmp_path, **kw):
    spec = tiny_spec(engine, **kw)
    store = ResultsStore(tmp_path / engine)
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]
    return store, store.consolidate(), summary


def by_point(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.set_index(["rho0", "seed"]).sort_index()[METRICS]


# ----------------------------------------------------------------------------- registries

def test_every_registered_engine_is_an_engine():
    assert list_engines() == ["local", "optuna", "ray"]
    for name in list_engines():
        engine = get_engine(name, SearchConfig(engine=name), ".")
        assert isinstance(engine, Engine) and type(engine).name == name
    with pytest.raises(ValueError, match=r"^search\.engine: unknown engine 'nope'; allowed: local, optuna, ray$"):
        get_engine("nope", SearchConfig(), ".")


def test_every_search_kind_is_registered():
    assert list_search_kinds() == ["asha", "grid", "pb2", "pbt", "sweep", "tpe"]
    for name in list_search_kinds():
        kind = get_search_kind(name)
        assert issubclass(kind, SearchKind) and kind.name == name and kind.summary_doc
    with pytest.raises(ValueError, match=r"^search\.kind: unknown search kind 'nope'"):
        get_search_kind("nope")


def test_engine_without_an_adaptive_search_says_so_in_one_line(tmp_path):
    spec = tiny_spec("local", grid=(0.1,), seeds=(0,))
    engine = get_engine("local", SearchConfig(**spec.methods[0].search), tmp_path)
    factory = lambda rho, seed: make_trial(spec, spec.methods[0], rho, seed, {}, search="asha/local")
    with pytest.raises(ValueError, match=r"^search\.kind: 'asha' is not supported by engine 'local'; "
                                         r"allowed: grid, sweep$"):
        engine.run_adaptive(factory, SearchSpace(kind="asha", seeds=(0,), grid=(0.1,)), ResultsStore(tmp_path))


# ----------------------------------------------------------------------------- parity

def test_engine_parity_local_optuna_ray(tmp_path, ray_session):
    _, local, s_local = search_rows("local", tmp_path)
    _, opt, s_opt = search_rows("optuna", tmp_path, workers=2)  # two spawned worker processes
    _, ray_runs, s_ray = search_rows("ray", tmp_path, workers=2)
    for runs in (local, opt, ray_runs):
        assert len(runs) == 4 and not runs.duplicated(["rho0", "seed"]).any()
        assert (runs["status"] == "ok").all()
    pd.testing.assert_frame_equal(by_point(local), by_point(opt))
    pd.testing.assert_frame_equal(by_point(local), by_point(ray_runs))
    assert s_local["rho_star"] == s_opt["rho_star"] == s_ray["rho_star"]
    assert s_local["test_acc_mean"] == s_opt["test_acc_mean"] == s_ray["test_acc_mean"]
    assert s_local["cost_grad_evals"] == s_opt["cost_grad_evals"] == s_ray["cost_grad_evals"]


# ----------------------------------------------------------------------------- resume

def _killed_driver_state(store, cfg, trials):
    """The study a SIGKILLed driver leaves: point 0 trained (row written) but killed between set_user_attr and
    tell; point 1 popped and never trained; point 2 enqueued twice (two drivers at once)."""
    from hpo_bench.engines.common import set_name
    from hpo_bench.engines.optuna_storage import this_machine
    from hpo_bench.execute import execute_trial

    engine = get_engine("optuna", cfg, store.root)
    study = engine._study(engine._study_name(set_name(trials[0].method, "points", [t.run_id for t in trials])))
    dead = f"{this_machine()}/{__import__('os').getpid()}/0"  # this pid, another start time: a dead process
    row = execute_trial(trials[0], store)
    for trial in (trials[0], trials[1], trials[2], trials[2]):
        study.enqueue_trial({"rho": trial.rho, "seed": trial.seed}, user_attrs={"run_id": trial.run_id})
    for trial, attrs in ((trials[0], {"status": "ok", "test_acc": 0.5}), (trials[1], {})):
        popped = study.ask()
        assert popped.user_attrs["run_id"] == trial.run_id
        for key, value in {"owner": dead, **attrs}.items():
            popped.set_user_attr(key, value)
    return row


def test_optuna_grid_reconciles_a_killed_driver_exactly_once(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from hpo_bench.engines.optuna_engine import storage_for

    spec = tiny_spec("optuna", grid=(0.02, 0.2), seeds=(0, 1))
    cfg = SearchConfig(**spec.methods[0].search)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/optuna")
    store = ResultsStore(tmp_path / "run")
    row = _killed_driver_state(store, cfg, trials)

    rows = get_engine("optuna", cfg, store.root).run_trials(trials, store)
    runs = store.consolidate()
    assert len(rows) == 4 and len(runs) == 4 and not runs.duplicated(["rho0", "seed"]).any()
    assert store.load_row(trials[0].run_id)["finished_at"] == row["finished_at"]  # reconciled, not retrained
    storage = storage_for("", store.root)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    complete = [t.user_attrs["run_id"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(complete) == sorted(t.run_id for t in trials)  # each point COMPLETE exactly once
    reasons = sorted(t.user_attrs.get("reason") for t in study.get_trials(states=(TrialState.FAIL,)))
    assert reasons == ["duplicate", "interrupted", "interrupted"]
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.params["rho"] in (0.02, 0.2) and t.intermediate_values and t.user_attrs["owner"]
    assert study.metric_names == ["val_acc"] and study.user_attrs["kind"] == "grid"

    # A third run trains nothing and adds no Optuna trial.
    n = len(study.trials)
    get_engine("optuna", cfg, store.root).run_trials(trials, store)
    assert len(optuna.load_study(study_name=study.study_name, storage=storage).trials) == n
    assert len(store.consolidate()) == 4


def test_two_drivers_share_one_journal_study_exactly_once(tmp_path):
    """Two drivers (threads here) on one journal study: every point COMPLETE once, one row each."""
    import threading

    import optuna
    from optuna.trial import TrialState

    from hpo_bench.engines.optuna_engine import storage_for

    spec = tiny_spec("optuna", grid=(0.01, 0.03, 0.1, 0.3), seeds=(0, 1), epochs=1)
    cfg = SearchConfig(**spec.methods[0].search)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/optuna")
    store = ResultsStore(tmp_path / "run")
    results, errors = [], []

    def drive():
        try:
            results.append(get_engine("optuna", cfg, store.root).run_trials(trials, ResultsStore(store.root)))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 2 and all(len(r) == 8 for r in results)
    runs = store.consolidate()
    assert len(runs) == 8 and runs["run_id"].is_unique
    storage = storage_for("", store.root)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    complete = [t.user_attrs["run_id"] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(complete) == sorted(t.run_id for t in trials)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert {t.user_attrs.get("reason") for t in study.get_trials(states=(TrialState.FAIL,))} <= {"duplicate"}


def test_optuna_grid_runs_through_the_experiments_pool(tmp_path, monkeypatch):
    """With as many pool processes as search workers, the grid's runs go to that pool (no new processes)."""
    from hpo_bench.engines import optuna_engine
    from hpo_bench.pool import TrialPool
    from hpo_bench.progress import RunProgress

    def no_new_pool(*a, **k):
        raise AssertionError("the Optuna grid started processes of its own")

    spec = tiny_spec("optuna", workers=2)
    store = ResultsStore(tmp_path / "run")
    _, local, _ = search_rows("local", tmp_path)
    monkeypatch.setattr(optuna_engine, "TrialPool", no_new_pool)
    with TrialPool(2, None) as pool, RunProgress(enabled=False) as progress:
        run_search(spec, spec.methods[0], {}, store, None, progress, pool)
        assert pool._executor is not None
    assert progress.done == 4 and progress.batch_done == 4  # a line per run, with the ETA of the batch
    pd.testing.assert_frame_equal(by_point(local), by_point(store.consolidate()))


def test_ray_grid_rerun_runs_only_missing_trials(tmp_path, ray_session):
    spec = tiny_spec("ray", grid=(0.02, 0.2), seeds=(0, 1))
    cfg = SearchConfig(**spec.methods[0].search)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/ray")
    store = ResultsStore(tmp_path / "run")
    get_engine("ray", cfg, store.root).run_trials(trials[:2], store)  # "killed" after two trials
    first = {rid: store.load_row(rid)["finished_at"] for rid in store.done_ids()}
    assert len(first) == 2
    rows = get_engine("ray", cfg, store.root).run_trials(trials, store)
    runs = store.consolidate()
    assert len(rows) == 4 and len(runs) == 4 and not runs.duplicated(["rho0", "seed"]).any()
    assert all(store.load_row(rid)["finished_at"] == t for rid, t in first.items())
    experiments = sorted(p.name for p in (store.root / "ray").iterdir() if p.is_dir())
    assert len(experiments) == 2  # the second experiment held only the two missing trials
    get_engine("ray", cfg, store.root).run_trials(trials, store)  # nothing pending: no new experiment
    assert len([p for p in (store.root / "ray").iterdir() if p.is_dir()]) == 2


def test_ray_grid_killed_before_its_experiment_state_starts_afresh(tmp_path, ray_session, monkeypatch):
    """A kill after Tune wrote tuner.pkl but before any experiment state: the re-run trains every trial.

    Tune never pickles ``param_space``, so restoring such a folder would run one trial with an empty
    config (the KeyError CI once met in the SIGKILL test); the engine starts the experiment afresh.
    """
    from ray import tune

    spec = tiny_spec("ray", grid=(0.02, 0.2), seeds=(0,))
    cfg = SearchConfig(**spec.methods[0].search)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/ray")
    store = ResultsStore(tmp_path / "run")

    class Killed(Exception):
        pass

    def killed(self):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(tune.Tuner, "fit", killed)
        with pytest.raises(Killed):
            get_engine("ray", cfg, store.root).run_trials(trials, store)
    (experiment,) = [p for p in (store.root / "ray").iterdir() if p.is_dir()]
    assert (experiment / "tuner.pkl").exists() and not list(experiment.glob("experiment_state-*.json"))
    assert tune.Tuner.can_restore(str(experiment))  # what Tune alone would resume
    rows = get_engine("ray", cfg, store.root).run_trials(trials, store)
    assert sorted(r["run_id"] for r in rows) == sorted(t.run_id for t in trials)
    assert all(r["status"] == "ok" for r in rows)


def test_ray_grid_reports_every_epoch_in_batches(tmp_path, ray_session, monkeypatch):
    """Buffered reporting loses no epoch; Tune's env knobs are set only during fit()."""
    import json
    import os

    from hpo_bench.engines import ray_engine

    monkeypatch.delenv("TUNE_RESULT_BUFFER_LENGTH", raising=False)
    seen = []
    real_tune_env = ray_engine.tune_env

    def spy(buffered):
        seen.append(buffered)
        return real_tune_env(buffered)

    monkeypatch.setattr(ray_engine, "tune_env", spy)
    spec = tiny_spec("ray", grid=(0.05,), seeds=(0,), epochs=4)
    trials = grid_trials(spec, spec.methods[0], {}, "grid/ray")
    store = ResultsStore(tmp_path / "run")
    get_engine("ray", SearchConfig(**spec.methods[0].search), store.root).run_trials(trials, store)
    assert seen == [True] and "TUNE_RESULT_BUFFER_LENGTH" not in os.environ
    results = list((store.root / "ray").rglob("result.json"))
    assert len(results) == 1 and not list((store.root / "ray").rglob("events.out.tfevents*"))
    reports = [json.loads(line) for line in results[0].read_text().splitlines() if line.strip()]
    assert [r["phase"] for r in reports] == ["epoch"] * 3 + ["final"]
    assert [r["epoch"] for r in reports[:3]] == [1, 2, 3]
    assert reports[-1]["grad_evals"] == store.load_row(trials[0].run_id)["grad_evals"]


# ----------------------------------------------------------------------------- storage URLs

@pytest.mark.parametrize("url", ["", "sqlite:///x.db", "sqlite:////abs/x.db", "postgresql://u@h/db",
                                 "postgresql+psycopg2://u:p@h:5432/db", "mysql://u@h/db", "journal:///tmp/x"])
def test_storage_url_good(url):
    assert validate_storage_url(url, "methods[0].search.storage") == url


@pytest.mark.parametrize("url", ["foo", "sqlite:/x", "http://x", "postgresql:///db", "journal://", "sqlite://"])
def test_storage_url_bad(url):
    with pytest.raises(SpecError) as err:
        validate_storage_url(url, "methods[0].search.storage")
    assert str(err.value).startswith("methods[0].search.storage: ")
    assert "\n" not in str(err.value)


def test_bad_storage_url_in_spec_names_the_field():
    with pytest.raises(SpecError, match=r"^methods\[0\]\.search\.storage: "):
        tiny_spec("optuna", storage="http://x")


def test_optuna_sqlite_and_journal_urls(tmp_path):
    spec = tiny_spec("optuna", grid=(0.05,), seeds=(0,), epochs=1)
    for url in (f"sqlite:///{tmp_path}/s.db", f"journal://{tmp_path}/j.journal"):
        cfg = SearchConfig(**{**spec.methods[0].search, "storage": url})
        store = ResultsStore(tmp_path / url.split(":")[0])
        rows = get_engine("optuna", cfg, store.root).run_trials(grid_trials(spec, spec.methods[0], {}, "t"), store)
        assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert (tmp_path / "s.db").exists() and (tmp_path / "j.journal").exists()


# ----------------------------------------------------------------------------- TPE

def test_optuna_tpe_runs_n_trials_and_resumes(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from hpo_bench.engines.optuna_engine import storage_for

    store = ResultsStore(tmp_path / "run")
    spec = tiny_spec("optuna", kind="tpe", grid=(), seeds=(0,), epochs=1, n_trials=2, rho_min=0.01, rho_max=1.0)
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]
    assert summary["n_trials"] == 2 and 0.01 <= summary["rho_star"] <= 1.0
    first = {rid: store.load_row(rid)["finished_at"] for rid in store.done_ids()}
    assert len(first) == 2

    spec3 = tiny_spec("optuna", kind="tpe", grid=(), seeds=(0,), epochs=1, n_trials=3, rho_min=0.01, rho_max=1.0)
    summary = run_search(spec3, spec3.methods[0], {}, store)[0]["summary"]  # same study, one more point
    assert summary["n_trials"] == 3 and len(store.done_ids()) == 3
    assert all(store.load_row(rid)["finished_at"] == t for rid, t in first.items())
    storage = storage_for("", store.root)
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3

    run_search(spec3, spec3.methods[0], {}, store)  # complete: nothing new
    assert len(study.trials) == len(optuna.load_study(study_name=study.study_name, storage=storage).trials)
    assert len(store.consolidate()) == 3


# ----------------------------------------------------------------------------- ASHA

def test_ray_asha_rows_and_cost(tmp_path, ray_session):
    spec = tiny_spec("ray", kind="asha", grid=(0.02, 0.05, 0.1, 1.0, 3.0, 10.0), seeds=(0,), epochs=4,
                     workers=2, asha_grace=1, asha_reduction=3.0, train={"checkpoint_every": 1})
    store = ResultsStore(tmp_path / "run")
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]
    runs = store.consolidate()
    assert len(runs) == 6 and not runs.duplicated(["rho0", "seed"]).any()
    assert set(runs["status"]) <= {"ok", "stopped"} and (runs["status"] == "ok").any()
    assert summary["n_trials"] == 6
    assert summary["cost_grad_evals"] == pytest.approx(runs["grad_evals"].sum())
    full = runs.loc[runs["status"] == "ok", "grad_evals"].max()
    stopped = runs[runs["status"] == "stopped"]
    assert (stopped["grad_evals"] < full).all() and (stopped["epochs_done"] < 4).all()
    assert len(stopped) >= 1  # the large-rho trials lose at the first rung (grid order: small rho first)
    assert (stopped["grad_evals"] > 0).all() and stopped["best_val_acc"].isna().all()
    assert select(runs)["rho_star"] in set(runs.loc[runs["status"] == "ok", "rho0"])
    assert not list(store.checkpoint_path("x").parent.glob("*.pt"))  # stopped runs' checkpoints removed too


def test_stopped_row_from_reported_epochs():
    """The driver-side row of an ASHA-stopped trial: its epochs, its cost, never selectable."""
    from hpo_bench.engines.ray_engine import stopped_row

    spec = tiny_spec("ray", kind="asha", grid=(0.1,), seeds=(0,), epochs=4)
    trial = grid_trials(spec, spec.methods[0], {}, "asha/ray")[0]
    keys = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "rho",
            "grad_evals", "wall_s"]
    frame = pd.DataFrame([{**{k: float(i + 1) for k in keys}, "epoch": i + 1, "step": 8 * (i + 1),
                           "grad_evals": 16 * (i + 1), "phase": "epoch", "cpu_s": 0.5 * (i + 1),
                           "epoch_keys": ",".join(keys), "run_id": trial.run_id} for i in range(2)])
    row, curves = stopped_row(trial, frame, "cpu")
    assert row["status"] == "stopped" and row["epochs_done"] == 2 and row["grad_evals"] == 32
    assert row["wall_s"] == 2.0 and row["device_s"] == 1.0 and math.isnan(row["best_val_acc"])
    assert row["run_id"] == trial.run_id and set(curves["epoch"]) == {1, 2}


def test_ray_tpe_runs_n_trials_and_rerun_trains_nothing(tmp_path, ray_session):
    store = ResultsStore(tmp_path / "run")
    spec = tiny_spec("ray", kind="tpe", grid=(), seeds=(0,), epochs=1, n_trials=2, rho_min=0.01, rho_max=1.0,
                     workers=2)
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]
    assert summary["n_trials"] == 2 and len(store.done_ids()) == 2
    first = {rid: store.load_row(rid)["finished_at"] for rid in store.done_ids()}
    summary = run_search(spec, spec.methods[0], {}, store)[0]["summary"]  # restores the finished experiment
    assert summary["n_trials"] == 2 and len(store.consolidate()) == 2
    assert all(store.load_row(rid)["finished_at"] == t for rid, t in first.items())


def test_sweep_dispatches_a_learned_rho_method_through_ray(tmp_path, ray_session):
    """Seeds × ρ₀ of LETS-SAM run as Ray Tune trials: plain rows (no selection), local run ids."""
    from hpo_bench.config import validate_spec
    from hpo_bench.experiment import run_experiment
    from hpo_bench.store import ResultsStore
    from hpo_bench.trial import method_trials

    raw = {"name": "sweep", "seeds": [0, 1], "data": {"num_samples": 500}, "model": {"name": "mnist1d_mlp"},
           "train": {"epochs": 1, "batch_size": 50, "threads": 1},
           "methods": [{"label": "LETS", "strategy": "lets-sam", "rho": [0.01, 0.5], "params": {"beta": 0.05},
                        "search": {"kind": "sweep", "engine": "ray", "workers": 2}}]}
    spec = validate_spec(raw)
    store = ResultsStore(tmp_path)
    runs = run_experiment(spec, store, show_progress=False)
    expected = {t.run_id for t in method_trials(spec, spec.methods[0], {})}
    assert set(runs["run_id"]) == expected and len(runs) == 4
    assert (runs["search"] == "").all() and (runs["status"] == "ok").all()
    assert (runs["rho_final"] != runs["rho0"]).all()  # ρ was learned inside the Ray trials
    assert store.read_table("searches").empty


def test_sweep_rejects_a_grid():
    import pytest as _pytest

    from hpo_bench.config import SpecError, validate_spec

    raw = {"name": "s", "methods": [{"strategy": "sam", "search": {"kind": "sweep", "engine": "ray", "grid": [0.1]}}]}
    with _pytest.raises(SpecError, match=r"methods\[0\]\.search\.grid"):
        validate_spec(raw)


def test_ray_started_by_a_search_is_shut_down_when_it_ends(tmp_path):
    """An idle Ray cluster must not outlive its search (it would take CPU from the next method)."""
    import subprocess
    import sys

    code = ("import ray\nfrom hpo_bench.engines.ray_engine import ensure_ray, ray_scope\n"
            "with ray_scope():\n    ensure_ray('')\n    assert ray.is_initialized()\n"
            "assert not ray.is_initialized()\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_ray_grid_trials_report_their_checkpoints_and_resume_from_tune_s(tmp_path, ray_session, monkeypatch):
    """With train.checkpoint_every, a grid trial's epoch reports carry its checkpoint as Tune's own; a trial that
    Tune restarts from such a checkpoint (no store checkpoint there, e.g. another node) resumes mid-run, same bits."""
    from ray import tune

    from hpo_bench.engines.ray_trainables import CHECKPOINT_FILE, adopt_tune_checkpoint
    from hpo_bench.execute import execute_trial, trial_checkpointer
    from hpo_bench.trainer import Trainer

    spec = tiny_spec("ray", grid=(0.05,), seeds=(0,), epochs=3, train={"checkpoint_every": 1})
    store = ResultsStore(tmp_path / "ray")
    run_search(spec, spec.methods[0], {}, store)
    row = store.consolidate().iloc[0]
    saved = sorted((tmp_path / "ray" / "ray").glob(f"*/*/checkpoint_*/{CHECKPOINT_FILE}"))
    assert len(saved) == 2  # after epochs 1 and 2 (none after the last: the row follows)
    assert not list(store.checkpoint_path("x").parent.glob("*.pt"))  # the store's own are removed at the end

    trial = grid_trials(spec, spec.methods[0], {}, "grid/ray")[0]
    fresh = ResultsStore(tmp_path / "fresh")
    ckpt = trial_checkpointer(trial, fresh)
    assert adopt_tune_checkpoint(ckpt, tune.Checkpoint.from_directory(str(saved[0].parent)))
    assert not adopt_tune_checkpoint(ckpt, tune.Checkpoint.from_directory(str(saved[1].parent)))  # the store's wins
    epochs_trained = []
    real = Trainer.train_epoch
    monkeypatch.setattr(Trainer, "train_epoch", lambda self, ctx, epoch, traces: (epochs_trained.append(epoch),
                                                                                   real(self, ctx, epoch, traces)))
    resumed = execute_trial(trial, fresh)
    assert epochs_trained == [1, 2]  # resumed after the first epoch
    for key in ("best_val_acc", "test_acc", "last_train_loss", "grad_evals", "epochs_done"):
        assert resumed[key] == row[key], key
