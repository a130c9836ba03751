"""Ray Tune engine: grid (``tune.grid_search``), TPE (``OptunaSearch``) and ASHA over ρ.

The engine only schedules; every trial runs :func:`hpo_bench.execute.execute_trial` inside a
Tune function trainable, which skips a run already in the :class:`~hpo_bench.store.ResultsStore`
(at the absolute run directory) and otherwise trains it and writes its row. Tune state under
``<run_dir>/ray/`` is additional bookkeeping.

Exactly once (grid and ASHA)
    Only trials whose run_id is not in the store are submitted. The experiment name is
    ``<method>-<kind>-<hash of the submitted run_ids>``: after a SIGKILL before any trial finished,
    the same set is pending, ``Tuner.can_restore`` finds the interrupted experiment and
    ``Tuner.restore(path, trainable, resume_errored=True)`` resumes it; once some trials finished,
    the pending set (and so the name) differs and a fresh experiment runs exactly the missing
    trials. Either way a trial whose run_id is already stored returns its stored row without
    training, and each run is one ``trials/<run_id>.json`` file, so runs.parquet can never hold
    a (ρ, seed) twice. A trial that raises is retried ``max_failures`` times; if it still has no
    row after ``fit()``, a ``RuntimeError`` lists it (the other trials are kept; a re-run retries
    only the missing ones).

Reporting
    Each epoch except the last is reported with ``ray.tune.report({**epoch_row, "grad_evals":
    cumulative, ...})`` from ``run_trial``'s ``on_epoch`` callback; after the row is written a
    final report carries the last epoch's values. So a scheduler decision can never interrupt a
    run between its last epoch and the write of its row.
    Grid trials hand their reports over in batches (:func:`tune_env`), so a trial never waits
    for the driver between epochs; the reports themselves, and so ``result.json``, are the same.

ASHA (``kind = "asha"``)
    ``ASHAScheduler(time_attr="grad_evals", metric="val_acc", mode="max")`` over grid x seeds.
    ``grace_period`` is ``asha_grace`` epochs converted to gradient evaluations by probing a few
    training steps of the first trial in the driver (``max_t`` is set above a full run, so only the
    rungs stop trials, never the budget cap). A trial stopped by ASHA is killed by Tune, so the
    driver writes its row after ``fit()`` from the trial's reported epochs in the ResultGrid:
    status ``"stopped"``, ``epochs_done`` and curves of the epochs it reported, and its cost as of
    its last reported epoch (``grad_evals``, ``wall_s``, ``device_s`` = the trial process's CPU
    seconds on CPU; ``fwd_evals`` and ``peak_mem_bytes`` are NaN; the partial epoch in flight when
    it was stopped is not charged). Stopped runs count in the search cost and are never selected.

TPE (``kind = "tpe"``)
    ``OptunaSearch(space={"rho": FloatDistribution(rho_min, rho_max, log=True)},
    sampler=TPESampler(seed=sampler_seed))``, ``num_samples = n_trials``; one Tune trial = one ρ
    running every spec seed sequentially (objective = mean best_val_acc of the seeds that ended
    ok; NaN, i.e. an Optuna FAIL, when none did). Resume: ``Tuner.restore`` of the experiment
    (named after the search's content hash), which restores the searcher; stored seeds are skipped.

Ray itself
    If Ray is not initialized, ``ray.init(address=search.address or None, num_cpus=os.cpu_count()
    when local, include_dashboard=False, log_to_driver=False)`` is called once and shut down at
    interpreter exit; a Ray instance started by someone else is never shut down. Never local_mode.
    Nothing waits forever: a ``HOST:PORT`` address must accept a TCP connection within
    ``CONNECT_TIMEOUT_S`` before ``ray.init`` is called, and before any ``fit()`` the largest
    alive node must hold ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (a trial that fits no
    node would stay pending); otherwise a one-line :class:`~hpo_bench.errors.SpecError` names the
    field. (An autoscaling cluster whose nodes are not up yet is refused too.) A trial that failed
    with a :class:`~hpo_bench.errors.WriteError` (disk full, ...) makes the search raise it after
    ``fit()``, one line naming the file, instead of reporting the trial as missing.
    Worker processes import ``hpo_bench``/``searchers`` from the same (editable) environment; each
    trial chdirs to the driver's working directory (when it exists on that node) so relative
    ``data.data_root`` paths resolve as in the driver, and sets ``torch.set_num_threads(cpus)``.
"""
from __future__ import annotations

import atexit
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from hpo_bench.engines.base import Engine, SearchSpace, TrialFactory
from hpo_bench.engines.common import (
    collect_rows,
    finite,
    from_template,
    mean_value,
    row_value,
    set_name,
    tpe_name,
    trial_template,
)
from hpo_bench.errors import SpecError, WriteError
from hpo_bench.execute import execute_trial, result_curves, result_row, trial_trainer
from hpo_bench.store import ResultsStore
from hpo_bench.trainer import RunResult, resolve_device
from hpo_bench.trial import Trial

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

_STARTED_RAY = False
CONNECT_TIMEOUT_S = 5.0
_ADDRESS_ALLOWED = ("allowed: '' (start a local Ray), 'auto' (the cluster `ray start` runs on this machine) "
                    "or HOST:PORT of a running Ray head node")


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line SpecError naming ``search.address`` unless ``HOST:PORT`` accepts a TCP connection
    within ``timeout`` seconds ('' and 'auto' are not network addresses: nothing to check)."""
    if address in ("", "auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SpecError(f"search.address: {address!r} is not HOST:PORT; {_ADDRESS_ALLOWED}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise SpecError(f"search.address: no Ray head answers at {address!r} within {timeout:g} s ({reason}); "
                        f"{_ADDRESS_ALLOWED}") from None


def check_resources(cpus: float, gpus: float) -> None:
    """Raise a one-line SpecError naming the field when no alive node of the Ray cluster can hold one trial."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for field, key, need in (("cpus_per_trial", "CPU", cpus), ("gpus_per_trial", "GPU", gpus)):
        most = max((float(r.get(key, 0.0)) for r in nodes), default=0.0)
        if need > most:
            raise SpecError(f"search.{field}: {need:g}, but the largest node of the Ray cluster has {most:g} {key}(s), "
                            f"so a trial would wait forever; allowed: at most {most:g}")


def ensure_ray(address: str = "") -> None:
    """Connect to (``address``) or start a local Ray once per process (never local_mode).

    An unreachable ``HOST:PORT`` is a one-line SpecError within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    global _STARTED_RAY
    import ray

    check_address(address)
    if ray.is_initialized():
        return
    address = address or None
    # Ray starts its workers at nice 15; trials are this program's workload, so a Ray instance
    # we start runs them at the driver's priority (as the local/optuna engines do).
    os.environ.setdefault("RAY_worker_niceness", "0")
    env = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    try:
        ray.init(address=address, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env})
    except ConnectionError as err:  # e.g. 'auto' with no cluster running on this machine
        if not address:
            raise
        raise SpecError(f"search.address: cannot join a Ray cluster at {address!r} "
                        f"({str(err).strip().splitlines()[0][:120] if str(err).strip() else 'connection failed'}); "
                        f"{_ADDRESS_ALLOWED}") from None
    if not _STARTED_RAY:
        _STARTED_RAY = True
        atexit.register(_shutdown_own_ray)


def _shutdown_own_ray():
    global _STARTED_RAY
    import ray

    if _STARTED_RAY and ray.is_initialized():
        ray.shutdown()
    _STARTED_RAY = False


@contextmanager
def tune_env(buffered: bool):
    """Tune settings of one ``fit()``, read from the environment when it starts; restored after.

    ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``: only the JSON and CSV loggers passed in
    :meth:`RayEngine._run_config` run (``Result.metrics_dataframe`` reads ``result.json``); the
    TensorBoard logger Tune would add writes an event file per report from the driver, which on a
    2-core machine competes with the trials. ``buffered`` (grid trials, FIFO scheduling):
    ``TUNE_RESULT_BUFFER_LENGTH``/``..._MIN_TIME_S`` let a trial hand over its per-epoch reports
    in batches (``Trainable.train_buffered``) instead of waiting at every ``tune.report`` for the
    driver to ask for the next result. Not for ASHA/TPE, whose decisions need each report when
    it happens.
    """
    env = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    if buffered:
        env.update(TUNE_RESULT_BUFFER_LENGTH="1000", TUNE_RESULT_BUFFER_MIN_TIME_S="5")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def ray_scope():
    """Shut down, at the end of the block, a Ray instance that the block itself started.

    An idle local Ray cluster (GCS, raylet, pooled workers) takes CPU from whatever the experiment
    runs next, so it must not outlive its search; a Ray instance that was already running (a
    cluster joined with ``address``, a test run's) is left alone.
    """
    import ray

    was_running = ray.is_initialized()
    try:
        yield
    finally:
        if not was_running:
            _shutdown_own_ray()


def raise_write_error(grid) -> None:
    """Raise the first :class:`~hpo_bench.errors.WriteError` (disk full, ...) a trial of ``grid`` failed with."""
    for i in range(len(grid)):
        err, seen = grid[i].error, 0
        while err is not None and seen < 8:
            if isinstance(err, WriteError) and err.filename:  # Ray's RayTaskError(WriteError) wraps it as .cause
                raise WriteError(err.errno, err.strerror, err.filename) from None
            err, seen = getattr(err, "cause", None) or err.__cause__, seen + 1


# ----------------------------------------------------------------------------- trainables

def _enter_trial(cwd: str, threads: int) -> None:
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(max(1, threads))


def make_grid_trainable(trials_by_id: dict, store_root: str, device, cwd: str, threads: int):
    """Function trainable for grid/ASHA: config = {"run_id": ...}; runs that trial once."""

    def hpo_trial(config):
        from ray import tune

        _enter_trial(cwd, threads)
        trial = Trial.from_dict(trials_by_id[config["run_id"]])
        rid, epochs = trial.run_id, int(trial.train["epochs"])
        store = ResultsStore(store_root)
        c0 = time.process_time()

        def on_epoch(row):
            if row["epoch"] >= epochs:  # the last epoch is reported after the row is written
                return
            tune.report({**row, "run_id": rid, "phase": "epoch", "cpu_s": time.process_time() - c0,
                         "epoch_keys": ",".join(row)})

        row = execute_trial(trial, store, device=device, on_epoch=on_epoch)
        last_val = row.get("last_val_acc")
        tune.report({"run_id": rid, "phase": "final", "status": row.get("status", ""),
                     "val_acc": float(last_val) if finite(last_val) else 0.0,
                     "best_val_acc": float(row["best_val_acc"]) if finite(row.get("best_val_acc")) else float("nan"),
                     "grad_evals": float(row.get("grad_evals", 0) or 0), "epoch_done": int(row.get("epochs_done", 0))})

    return hpo_trial


def make_tpe_trainable(template: dict, seeds: list, store_root: str, device, cwd: str, threads: int):
    """Function trainable for TPE: config = {"rho": ...}; runs every seed at that rho in turn."""

    def hpo_rho(config):
        from ray import tune

        _enter_trial(cwd, threads)
        store = ResultsStore(store_root)
        rows, cost = [], 0.0
        for i, seed in enumerate(seeds):
            row = execute_trial(from_template(template, config["rho"], seed), store, device=device)
            rows.append(row)
            cost += float(row.get("grad_evals", 0) or 0)
            value = mean_value(rows)
            tune.report({"objective": float("nan") if value is None else value, "grad_evals": cost,
                         "seeds_done": i + 1, "n_ok": sum(1 for r in rows if row_value(r) is not None)})

    return hpo_rho


# ----------------------------------------------------------------------------- ASHA helpers

def grad_evals_per_epoch(trial: Trial, device=None, probe_steps: int = 5) -> float:
    """Gradient evaluations of one epoch of ``trial``, from its first ``probe_steps`` steps."""
    trainer = trial_trainer(trial, device)
    k = min(probe_steps, trainer.steps_per_epoch)
    trainer.max_steps = k
    trainer.fit()
    return max(1.0, trainer.ledger.grad_evals / max(1, k) * trainer.steps_per_epoch)


def stopped_row(trial: Trial, frame, device) -> tuple[dict, object]:
    """Row + curves of a trial Tune stopped early, from its reported epoch results."""
    epochs_df = frame[frame["phase"] == "epoch"] if "phase" in frame else frame.iloc[:0]
    keys = epochs_df["epoch_keys"].iloc[0].split(",") if len(epochs_df) else []
    epochs = []
    for _, rec in epochs_df.iterrows():
        e = {k: rec[k] for k in keys}
        e["epoch"], e["step"] = int(e["epoch"]), int(e["step"])
        e["grad_evals"] = int(e["grad_evals"])
        epochs.append(e)
    last = epochs_df.iloc[-1] if len(epochs_df) else None
    nan = float("nan")
    dev = resolve_device(device or trial.train["device"])
    res = RunResult(status="stopped", epochs=epochs,
                    reason=f"stopped by the ASHA scheduler after epoch {epochs[-1]['epoch'] if epochs else 0}",
                    stop_step=int(last["step"]) if last is not None else 0,
                    summary={"steps": int(last["step"]) if last is not None else 0},
                    ledger={"grad_evals": int(last["grad_evals"]) if last is not None else 0, "fwd_evals": nan,
                            "wall_s": float(last["wall_s"]) if last is not None else 0.0,
                            "device_s": float(last["cpu_s"]) if last is not None and dev.type == "cpu" else nan,
                            "peak_mem_bytes": nan})
    row = result_row(trial, res, dev)
    row["finished_at"] = time.time()
    return row, result_curves(trial.run_id, res)


# ----------------------------------------------------------------------------- engine

class RayEngine(Engine):
    name = "ray"
    kinds = ("grid", "sweep", "tpe", "asha")

    def __init__(self, search_cfg, run_dir, device=None, pool=None):
        super().__init__(search_cfg, run_dir, device, pool)
        self.ray_dir = self.run_dir / "ray"

    def _resources(self) -> dict:
        return {"cpu": self.cfg.cpus_per_trial, "gpu": self.cfg.gpus_per_trial}

    def _threads(self) -> int:
        return max(1, int(self.cfg.cpus_per_trial))

    def _run_config(self, name: str):
        from ray import tune
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        return tune.RunConfig(storage_path=str(self.ray_dir), name=name, verbose=0,
                              callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
                              failure_config=tune.FailureConfig(max_failures=2))

    # -- grid / ASHA -----------------------------------------------------------------------------
    def run_trials(self, trials: list[Trial], store, progress=None) -> list[dict]:
        with ray_scope():
            return self._run_set(trials, store)

    def _run_set(self, trials: list[Trial], store, asha: SearchSpace | None = None) -> list[dict]:
        from ray import tune

        if not trials:
            return []
        by_id = {t.run_id: t for t in trials}
        pending = [rid for rid in by_id if not store.has(rid)]
        if pending:
            ensure_ray(self.cfg.address)
            check_resources(self.cfg.cpus_per_trial, self.cfg.gpus_per_trial)
            store_root = str(Path(store.root).resolve())
            trainable = tune.with_resources(
                make_grid_trainable({rid: by_id[rid].to_dict() for rid in by_id}, store_root, self.device,
                                    os.getcwd(), self._threads()), self._resources())
            name = set_name(trials[0].method, "asha" if asha else "grid", pending)
            path = self.ray_dir / name
            if tune.Tuner.can_restore(str(path)):
                tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
            else:
                tuner = tune.Tuner(trainable, param_space={"run_id": tune.grid_search(pending)},
                                   tune_config=self._tune_config(trials, asha), run_config=self._run_config(name))
            with tune_env(buffered=asha is None):
                grid = tuner.fit()
            raise_write_error(grid)
            self._record_stopped(grid, by_id, store)
        store.consolidate()
        missing = [rid for rid in by_id if not store.has(rid)]
        if missing:
            raise RuntimeError(f"ray engine: {len(missing)} trial(s) of {trials[0].method!r} have no result "
                               f"(see {self.ray_dir}; re-run to retry them): {', '.join(missing)}")
        return [store.load_row(rid) for rid in by_id]

    def _tune_config(self, trials, asha: SearchSpace | None):
        from ray import tune

        kw = {"max_concurrent_trials": self.workers, "reuse_actors": True}
        if asha is not None:
            from ray.tune.schedulers import ASHAScheduler

            per_epoch = grad_evals_per_epoch(trials[0], self.device)
            epochs = int(trials[0].train["epochs"])
            grace = max(1.0, min(asha.asha_grace, epochs) * per_epoch * 0.999)
            kw["scheduler"] = ASHAScheduler(time_attr="grad_evals", metric="val_acc", mode="max",
                                            grace_period=grace, reduction_factor=asha.asha_reduction,
                                            max_t=max(grace, epochs * per_epoch) * 2.0)
        return tune.TuneConfig(**kw)

    def _record_stopped(self, grid, by_id: dict, store) -> None:
        """Write rows for trials the scheduler stopped (Tune killed them before they could)."""
        for i in range(len(grid)):
            result = grid[i]
            rid = (result.config or {}).get("run_id")
            if rid not in by_id or store.has(rid) or result.error is not None:
                continue
            frame = result.metrics_dataframe
            if frame is None or not len(frame) or "phase" not in frame or (frame["phase"] == "final").any():
                continue
            row, curves = stopped_row(by_id[rid], frame, self.device)
            if not store.has(rid):
                store.write_run(row, curves)

    # -- TPE / ASHA ------------------------------------------------------------------------------
    def run_adaptive(self, make_trial: TrialFactory, space: SearchSpace, store, progress=None) -> list[dict]:
        if space.kind == "asha":
            with ray_scope():
                return self._run_set([make_trial(rho, seed) for rho in space.grid for seed in space.seeds], store,
                                     asha=space)
        if space.kind == "tpe":
            with ray_scope():
                return self._run_tpe(trial_template(make_trial, space), space, store)
        return super().run_adaptive(make_trial, space, store, progress)

    def _run_tpe(self, template: dict, space: SearchSpace, store) -> list[dict]:
        import optuna
        from optuna.distributions import FloatDistribution
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = tpe_name(template, space, space.n_trials)
        path = self.ray_dir / name
        ensure_ray(self.cfg.address)
        check_resources(self.cfg.cpus_per_trial, self.cfg.gpus_per_trial)
        store_root = str(Path(store.root).resolve())
        trainable = tune.with_resources(make_tpe_trainable(template, list(space.seeds), store_root, self.device,
                                                           os.getcwd(), self._threads()), self._resources())
        if tune.Tuner.can_restore(str(path)):
            tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        else:
            searcher = OptunaSearch(space={"rho": FloatDistribution(space.rho_min, space.rho_max, log=True)},
                                    metric="objective", mode="max",
                                    sampler=optuna.samplers.TPESampler(seed=space.sampler_seed))
            tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=space.n_trials, max_concurrent_trials=self.workers,
                reuse_actors=True), run_config=self._run_config(name))
        with tune_env(buffered=False):
            grid = tuner.fit()
        raise_write_error(grid)
        store.consolidate()
        rhos = [rho for rho in ((grid[i].config or {}).get("rho") for i in range(len(grid))) if rho is not None]
        rows, missing = collect_rows(store, template, rhos, space.seeds)
        if missing:
            raise RuntimeError(f"ray engine: TPE search {name!r} has {len(missing)} run(s) without a result "
                               f"(re-run to resume it): {', '.join(missing)}")
        return rows
