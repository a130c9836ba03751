"""Ray Tune engine: grid (``tune.grid_search``), TPE (``OptunaSearch``) and ASHA over ρ.

The engine only schedules; every trial runs :func:`hpo_bench.execute.execute_trial` inside a
Tune function trainable (:mod:`hpo_bench.engines.ray_trainables`), which skips a run already in
the :class:`~hpo_bench.store.ResultsStore` (at the absolute run directory) and otherwise trains it
and writes its row. Tune state under ``<run_dir>/ray/`` is additional bookkeeping; Ray itself
(joining, starting, deadlines) is :mod:`hpo_bench.engines.ray_setup`.

Exactly once (grid and ASHA)
    Only trials whose run_id is not in the store are submitted, one Tune trial each, with the
    config ``{"run_id", "method", "rho", "seed"}``. The experiment name is
    ``<method>-<kind>-<hash of the submitted run_ids>``: after a SIGKILL before any trial finished,
    the same set is pending, :meth:`RayEngine.resumable` finds the interrupted experiment and
    ``Tuner.restore(path, trainable, resume_errored=True)`` resumes it; once some trials finished,
    the pending set (and so the name) differs and a fresh experiment runs exactly the missing
    trials. Either way a trial whose run_id is already stored returns its stored row without
    training, and each run is one ``trials/<run_id>.json`` file, so runs.parquet can never hold
    a (ρ, seed) twice. A trial that raises is retried ``max_failures`` times; if it still has no
    row after ``fit()``, a ``RuntimeError`` lists it (the other trials are kept; a re-run retries
    only the missing ones). Grid trials hand their per-epoch reports over in batches
    (:func:`~hpo_bench.engines.ray_setup.tune_env`), so a trial never waits for the driver between
    epochs; the reports themselves, and so ``result.json``, are the same.

Loggers
    ``search.loggers`` (TensorBoard, MLflow, W&B, a user's ``tune.Callback``) join the JSON/CSV
    loggers in ``RunConfig.callbacks`` (:mod:`hpo_bench.engines.callbacks`); they only watch.

Progress
    ``verbose = 0``: Tune prints nothing; the driver prints one line per finished run, with
    ``k/n`` and an ETA (:mod:`hpo_bench.engines.ray_progress`), as every other engine does.

ASHA (``kind = "asha"``)
    ``ASHAScheduler(time_attr="grad_evals", metric="val_acc", mode="max")`` over grid x seeds.
    ``grace_period`` is ``asha_grace`` epochs converted to gradient evaluations by probing a few
    training steps of the first trial in the driver (``max_t`` is set above a full run, so only the
    rungs stop trials, never the budget cap). A trial stopped by ASHA is killed by Tune, so the
    driver writes its row after ``fit()`` from the trial's reported epochs in the ResultGrid:
    status ``"stopped"``, ``epochs_done`` and curves of the epochs it reported, and its cost as of
    its last reported epoch (``grad_evals``, ``wall_s``, ``device_s`` = the trial process's CPU
    seconds on CPU; ``fwd_evals`` and ``peak_mem_bytes`` are NaN; the partial epoch in flight when
    it was stopped is not charged). Stopped runs count in the search cost and are never selected;
    the mid-run checkpoint of a stopped run is removed with the others (``train.keep_checkpoints``).

TPE (``kind = "tpe"``)
    ``OptunaSearch(space={"rho": FloatDistribution(rho_min, rho_max, log=True)},
    sampler=TPESampler(seed=sampler_seed))``, ``num_samples = n_trials``; one Tune trial = one ρ
    running every spec seed sequentially (objective = mean best_val_acc of the seeds that ended
    ok; NaN, i.e. an Optuna FAIL, when none did). Resume: ``Tuner.restore`` of the experiment
    (named after the search's content hash), which restores the searcher; stored seeds are skipped.

Errors and workers
    A trial that failed with a :class:`~hpo_bench.errors.WriteError` (disk full, ...) makes the
    search raise it after ``fit()``, one line naming the file, instead of reporting the trial as
    missing. Worker processes import ``hpo_bench``/``searchers`` from the same (editable)
    environment; each trial chdirs to the driver's working directory (when it exists on that node)
    so relative ``data.data_root`` paths resolve as in the driver, and sets
    ``torch.set_num_threads(cpus)``.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from hpo_bench.engines.base import Engine, SearchSpace, TrialFactory
from hpo_bench.engines.callbacks import tune_callbacks
from hpo_bench.engines.common import collect_rows, set_name, tpe_name, trial_template
from hpo_bench.engines.ray_pbt import POPULATION_KINDS, run_population
from hpo_bench.engines.ray_progress import run_lines
from hpo_bench.engines.ray_setup import (
    CONNECT_TIMEOUT_S,
    _WarmRay,
    check_address,
    check_resources,
    ensure_ray,
    raise_write_error,
    ray_scope,
    tune_env,
)
from hpo_bench.engines.ray_trainables import (
    build_trainable,
    grad_evals_per_epoch,
    point_value,
    restore_trainable,
    save_trainable,
    stopped_row,
)
from hpo_bench.execute import trial_checkpointer
from hpo_bench.trial import Trial

__all__ = ["CONNECT_TIMEOUT_S", "RayEngine", "check_address", "check_resources", "ensure_ray", "ray_scope",
           "restore_trainable", "stopped_row", "tune_env"]


# ----------------------------------------------------------------------------- engine

class RayEngine(Engine):
    name = "ray"
    kinds = ("grid", "sweep", "tpe", "asha", *POPULATION_KINDS)
    trains_on_pool = False

    def __init__(self, search_cfg, run_dir, device=None, pool=None):
        super().__init__(search_cfg, run_dir, device, pool)
        self.ray_dir = self.run_dir / "ray"

    @classmethod
    def warm_up(cls, search_cfg) -> None:
        """Start (or join) Ray in the background; the searches then find it running."""
        _WarmRay.start(search_cfg.address)

    @classmethod
    def cool_down(cls) -> None:
        """Shut down the Ray instance :meth:`warm_up` started (one joined by address is left alone)."""
        _WarmRay.stop()

    def _resources(self) -> dict:
        return {"cpu": self.cfg.cpus_per_trial, "gpu": self.cfg.gpus_per_trial}

    def _threads(self) -> int:
        return max(1, int(self.cfg.cpus_per_trial))

    def _run_config(self, name: str, lines):
        from ray import tune
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        loggers = tune_callbacks(getattr(self.cfg, "loggers", []), self.run_dir, name)  # search.loggers
        return tune.RunConfig(storage_path=str(self.ray_dir), name=name, verbose=0,
                              callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), *loggers, lines],
                              failure_config=tune.FailureConfig(max_failures=2))

    def _trainable(self, path: Path, kind: str, **kwargs):
        """The search's trainable, its recipe saved beside the experiment (see :func:`restore_trainable`)."""
        kwargs.update(device=self.device, cwd=os.getcwd(), threads=self._threads())
        save_trainable(path, kind, self._resources(), **kwargs)
        return build_trainable(kind, self._resources(), **kwargs)

    @staticmethod
    def resumable(path: Path) -> bool:
        """Whether ``path`` holds an interrupted experiment that ``Tuner.restore`` can resume.

        ``Tuner.can_restore`` only looks for ``tuner.pkl``, which Tune writes before the experiment
        state. A kill between the two leaves a ``tuner.pkl`` without its search space (Tune never
        pickles ``param_space``), and restoring it would start one trial with an empty config; such
        an experiment has started nothing worth keeping, so it is started afresh instead.
        """
        from ray import tune

        return tune.Tuner.can_restore(str(path)) and any(Path(path).glob("experiment_state-*.json"))

    @staticmethod
    def _restore(path: Path, trainable, lines):
        """``Tuner.restore`` of the interrupted experiment at ``path``, printing its runs' lines too."""
        from ray import tune

        tuner = tune.Tuner.restore(str(path), trainable, resume_errored=True)
        run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
        if run_config is not None:  # the saved callbacks lost their console when they were saved
            run_config.callbacks = [cb for cb in (run_config.callbacks or []) if not hasattr(cb, "show")] + [lines]
        return tuner

    # -- grid / ASHA -----------------------------------------------------------------------------
    def run_trials(self, trials: list[Trial], store, progress=None) -> list[dict]:
        with ray_scope():
            return self._run_set(trials, store, progress=progress)

    def _run_set(self, trials: list[Trial], store, asha: SearchSpace | None = None, progress=None) -> list[dict]:
        from ray import tune

        if not trials:
            return []
        by_id = {t.run_id: t for t in trials}
        pending = [rid for rid in by_id if not store.has(rid)]
        if pending:
            ensure_ray(self.cfg.address)
            check_resources(self.cfg.cpus_per_trial, self.cfg.gpus_per_trial)
            name = set_name(trials[0].method, "asha" if asha else "grid", pending)
            path = self.ray_dir / name
            trainable = self._trainable(path, "grid", trials_by_id={rid: by_id[rid].to_dict() for rid in by_id},
                                        store_root=str(Path(store.root).resolve()))
            lines = run_lines(store, progress)
            if progress is not None:
                progress.start_batch(len(pending), min(self.workers, len(pending)))
            if self.resumable(path):
                tuner = self._restore(path, trainable, lines)
            else:
                points = {rid: {"method": by_id[rid].method, "rho": by_id[rid].rho, "seed": by_id[rid].seed}
                          for rid in pending}
                space = {"run_id": tune.grid_search(pending),
                         **{key: tune.sample_from(partial(point_value, points, key)) for key in ("method", "rho", "seed")}}
                tuner = tune.Tuner(trainable, param_space=space, tune_config=self._tune_config(trials, asha),
                                   run_config=self._run_config(name, lines))
            with tune_env(buffered=asha is None):
                grid = tuner.fit()
            raise_write_error(grid)
            self._record_stopped(grid, by_id, store, lines)
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

    def _record_stopped(self, grid, by_id: dict, store, lines=None) -> None:
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
                trial_checkpointer(by_id[rid], store).finish()  # its mid-run checkpoint (train.checkpoint_every)
            if lines is not None:
                lines.show(rid)

    # -- TPE / ASHA ------------------------------------------------------------------------------
    def run_adaptive(self, make_trial: TrialFactory, space: SearchSpace, store, progress=None) -> list[dict]:
        if space.kind == "asha":
            with ray_scope():
                return self._run_set([make_trial(rho, seed) for rho in space.grid for seed in space.seeds], store,
                                     asha=space, progress=progress)
        if space.kind in POPULATION_KINDS:  # PBT / PB2: hpo_bench.engines.ray_pbt
            with ray_scope():
                return run_population(self, make_trial, space, store, progress)
        if space.kind == "tpe":
            with ray_scope():
                return self._run_tpe(trial_template(make_trial, space), space, store, progress)
        return super().run_adaptive(make_trial, space, store, progress)

    def _run_tpe(self, template: dict, space: SearchSpace, store, progress=None) -> list[dict]:
        import optuna
        from optuna.distributions import FloatDistribution
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = tpe_name(template, space, space.n_trials)
        path = self.ray_dir / name
        ensure_ray(self.cfg.address)
        check_resources(self.cfg.cpus_per_trial, self.cfg.gpus_per_trial)
        trainable = self._trainable(path, "tpe", template=template, seeds=list(space.seeds),
                                    store_root=str(Path(store.root).resolve()))
        lines = run_lines(store, progress)
        if progress is not None:
            progress.start_batch(space.n_trials * len(space.seeds), min(self.workers, space.n_trials))
        if self.resumable(path):
            tuner = self._restore(path, trainable, lines)
        else:
            searcher = OptunaSearch(space={"rho": FloatDistribution(space.rho_min, space.rho_max, log=True)},
                                    metric="objective", mode="max",
                                    sampler=optuna.samplers.TPESampler(seed=space.sampler_seed))
            tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=space.n_trials, max_concurrent_trials=self.workers,
                reuse_actors=True), run_config=self._run_config(name, lines))
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
