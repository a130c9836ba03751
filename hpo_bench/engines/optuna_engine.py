"""Optuna engine: an exact, resumable grid that several drivers can share, and TPE over log ρ.

The engine only schedules; every trial runs :func:`hpo_bench.execute.execute_trial`, which
skips a run already in the :class:`~hpo_bench.store.ResultsStore` and otherwise trains it and
writes its row. Optuna's study (journal file or RDB) is additional bookkeeping on top of that.

Grid and sweep (``kind = "grid"`` / ``"sweep"``): :mod:`hpo_bench.engines.optuna_grid`
    ``GridSampler`` can run a point twice under parallel workers, so it is not used. Every
    (ρ, seed) point is enqueued, popped and claimed by a driver, which runs it and tells it; any
    number of drivers (``hpo-bench run``, ``hpo-bench worker``; on several machines with an RDB
    storage) work on one study at once, and after any sequence of kills each point has one COMPLETE
    trial (FAIL with the run's status when it did not end ok) and one row in the store. Liveness:
    Optuna's heartbeat for an RDB, the owner process on this machine for any storage
    (:mod:`hpo_bench.engines.optuna_storage`). Runs go through the experiment's
    :class:`~hpo_bench.pool.TrialPool` when it has ``workers`` processes (else a pool of
    ``workers`` processes of the search's own; ``workers = 1``: in the driver), with the per-run
    console lines and ETA of every other batch of runs.

Objective and states
    value = ``best_val_acc`` (maximize; ``study.metric_names == ["val_acc"]``), and the run's
    per-epoch validation accuracy as intermediate values (``trial.report``). Params: ``rho``
    (``FloatDistribution(log=True)``) and ``seed``. user attrs: run_id, status, reason, test_acc,
    grad_evals, wall_s, and ``owner`` (the driver that held it). A run that ends
    diverged/timeout/oom is told FAIL with its status and reason (its row is in the store; it
    counts in the search cost). An exception inside a trial is told FAIL with
    ``user_attrs["error"]``; the sweep continues and, at the end, a ``RuntimeError`` lists the
    points that have no row (a re-run retries exactly those). Study user attrs: spec, run_dir,
    git_commit, method, kind. ``search.pruner`` (successive halving, Hyperband) stops runs at epoch
    rungs: such a run is stored as ``"stopped"`` and told PRUNED
    (:mod:`hpo_bench.engines.optuna_pruning`).

TPE (``kind = "tpe"``)
    ρ log-uniform in [rho_min, rho_max]; one point = one ρ running every spec seed; objective =
    mean ``best_val_acc`` over the seeds that ended ok (FAIL when none did). The driver alone asks
    the sampler, round by round (the first ``TPE_STARTUP`` = 10 points, TPE's random start-up,
    then rounds of ``TPE_ROUND`` = 4; :func:`hpo_bench.engines.common.tpe_points`: point k is
    drawn by a ``TPESampler`` seeded from ``sampler_seed`` and k over the results of the earlier
    rounds); the round's (ρ, seed) runs are all trained (concurrently) before the next round is
    asked. A run that raises stops the search (later points depend on it; a re-run resumes it).
    The results come from the store, so a re-run re-derives
    the same points from the seed and the stored rows and trains only what is missing: the same
    spec evaluates the same ρ values in every run, resumed or not, with any number of workers;
    raising ``n_trials`` extends the same sequence. Each evaluated point is added to the study once
    (``study.add_trial``, ``user_attrs["point"] = k``), COMPLETE with its value or FAIL, and then
    handed to the callbacks of ``search.loggers``. Only the driver works on a TPE search
    (``hpo-bench worker`` skips it).

Study names and storage
    A study is named after the method, its trials and the run directory (its name, i.e. the spec
    name and digest, and a hash of its absolute path), so two specs (or one spec run into two
    output roots) sharing one ``search.storage`` never share a study. When the driver opens a
    journal file whose last line is torn (a write killed half-way), it keeps a copy
    ``<journal>.torn-<n>`` beside it, drops the incomplete line (under the journal's lock) and
    logs one line; Optuna would otherwise append the next record to the torn one and fail on
    every later read.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

from hpo_bench.engines.base import Engine, SearchSpace, TrialFactory
from hpo_bench.engines.callbacks import call_all, optuna_callbacks
from hpo_bench.engines.common import (
    collect_rows,
    digest,
    from_template,
    mean_value,
    row_value,
    set_name,
    tpe_name,
    tpe_points,
    tpe_rounds,
    trial_template,
)
from hpo_bench.engines.optuna_grid import GridDriver
from hpo_bench.engines.optuna_storage import DEFAULT_JOURNAL, journal_path, repair_journal, storage_for
from hpo_bench.pool import TrialPool
from hpo_bench.store import git_commit
from hpo_bench.trial import Trial

__all__ = ["DEFAULT_JOURNAL", "OptunaEngine", "repair_journal", "storage_for"]
METRIC = "val_acc"


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ----------------------------------------------------------------------------- engine

class OptunaEngine(Engine):
    name = "optuna"
    kinds = ("grid", "sweep", "tpe")

    # -- common ----------------------------------------------------------------------------------
    def _study_name(self, base: str) -> str:
        """``base`` qualified by the run directory: two specs (or output roots) never share a study."""
        return f"{self.run_dir.name}-{digest([str(self.run_dir)])[:6]}/{base}"

    def _study(self, name: str, method: str = "", kind: str = ""):
        """Create or load the study ``name``: maximize ``val_acc``; user attrs name the spec, the run
        folder, the commit, the method and the search kind."""
        optuna = _quiet_optuna()
        storage = storage_for(self.cfg.storage, self.run_dir, repair=True)
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # set_metric_names is experimental in some Optuna versions
            if study.metric_names != [METRIC]:
                study.set_metric_names([METRIC])
        spec_name = re.sub(r"-[0-9a-f]{8}$", "", self.run_dir.name)
        attrs = {"spec": spec_name, "run_dir": str(self.run_dir), "git_commit": git_commit(), "method": method,
                 "kind": kind, "objective": "best validation accuracy of the run (TPE: mean over the seeds)"}
        have = study.user_attrs
        for key, value in attrs.items():
            if have.get(key) != value:
                study.set_user_attr(key, value)
        return study

    def _threads(self) -> int:
        return max(1, int(self.cfg.cpus_per_trial))

    @contextmanager
    def _trial_pool(self):
        """The experiment's pool when it has ``workers`` processes of ``cpus_per_trial`` threads (no spawn,
        no start-up), else one of ``workers`` processes of this search's own."""
        if self.pool.jobs == self.workers and self.pool.threads == self._threads():
            yield self.pool
        else:
            with TrialPool(self.workers, self.device, self._threads()) as pool:
                yield pool

    @staticmethod
    def _missing_error(study, missing: list[str], errors: dict):
        for t in study.get_trials(deepcopy=False):
            rid = t.user_attrs.get("run_id")
            if rid in missing and "error" in t.user_attrs:
                errors.setdefault(rid, t.user_attrs["error"])
        detail = "; ".join(f"{rid}: {errors.get(rid, 'no result')}" for rid in missing)
        raise RuntimeError(f"optuna study {study.study_name!r}: {len(missing)} trial(s) have no result "
                           f"(re-run to retry them): {detail}")

    # -- grid ------------------------------------------------------------------------------------
    def _pruning(self, trial: Trial) -> dict | None:
        """The grid's pruner settings (``search.pruner``; :mod:`hpo_bench.engines.optuna_pruning`), or None."""
        pruner = getattr(self.cfg, "pruner", "none")
        if pruner == "none":
            return None
        return {"storage": self.cfg.storage, "run_dir": str(self.run_dir), "pruner": pruner,
                "grace": self.cfg.asha_grace, "reduction": self.cfg.asha_reduction,
                "epochs": int(trial.train["epochs"])}

    def run_trials(self, trials: list[Trial], store, progress=None) -> list[dict]:
        if not trials:
            return []
        by_id = {t.run_id: t for t in trials}
        name = self._study_name(set_name(trials[0].method, "points", by_id))
        study = self._study(name, trials[0].method, "grid" if trials[0].search else "sweep")
        journal = journal_path(self.cfg.storage, self.run_dir) is not None
        kw = dict(device=self.device, progress=progress, journal=journal, pruning=self._pruning(trials[0]),
                  callbacks=optuna_callbacks(getattr(self.cfg, "loggers", []), self.run_dir))
        if self.workers <= 1:  # in the driver, one run after another
            errors = GridDriver(study, by_id, store, **kw).run()
        else:
            with self._trial_pool() as pool:
                errors = GridDriver(study, by_id, store, workers=min(self.workers, len(by_id)), pool=pool, **kw).run()
        store.consolidate()
        missing = [rid for rid in by_id if not store.has(rid)]
        if missing:
            self._missing_error(study, missing, dict(errors))
        return [store.load_row(rid) for rid in by_id]

    # -- TPE -------------------------------------------------------------------------------------
    def run_adaptive(self, make_trial: TrialFactory, space: SearchSpace, store, progress=None) -> list[dict]:
        if space.kind != "tpe":
            return super().run_adaptive(make_trial, space, store, progress)
        template = trial_template(make_trial, space)
        name = self._study_name(tpe_name(template, space))
        study = self._study(name, template["method"], "tpe")
        recorded = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False)}
        callbacks, callback_errors = optuna_callbacks(getattr(self.cfg, "loggers", []), self.run_dir), set()
        history, rows = [], {}
        with self._trial_pool() as pool:
            for start, stop in tpe_rounds(space.n_trials):
                rhos = tpe_points(space, history, start, stop)
                pool.run([from_template(template, rho, seed) for rho in rhos for seed in space.seeds], store,
                         progress)
                for k, rho in zip(range(start, stop), rhos):
                    point_rows, missing = collect_rows(store, template, [rho], space.seeds)
                    if missing:
                        raise RuntimeError(f"optuna study {name!r}: point {k} (rho={rho:.6g}) has {len(missing)} "
                                           f"run(s) without a result (re-run to continue): {', '.join(missing)}")
                    history.append((rho, mean_value(point_rows)))
                    rows.update((r["run_id"], r) for r in point_rows)
                    if k not in recorded:
                        call_all(callbacks, study, _record_point(study, k, rho, point_rows, space), callback_errors)
        store.consolidate()
        return list(rows.values())


def _record_point(study, k: int, rho: float, rows: list[dict], space: SearchSpace) -> int:
    """Add evaluated point ``k`` to the study (COMPLETE with the mean objective, or FAIL with the reasons);
    return its trial id."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    ok = [r for r in rows if row_value(r) is not None]
    attrs = {"point": k, "run_ids": [r["run_id"] for r in rows], "status": "ok" if ok else rows[0].get("status", ""),
             "n_ok": len(ok), "grad_evals": float(sum(r.get("grad_evals", 0) or 0 for r in rows))}
    dist = {"rho": FloatDistribution(space.rho_min, space.rho_max, log=True)}
    if ok:
        attrs["test_acc"] = float(sum(r["test_acc"] for r in ok) / len(ok))
        study.add_trial(create_trial(params={"rho": rho}, distributions=dist, value=mean_value(rows), user_attrs=attrs))
    else:
        attrs["reason"] = "; ".join(str(r.get("reason", "")) for r in rows)[:500]
        study.add_trial(create_trial(params={"rho": rho}, distributions=dist, state=TrialState.FAIL, user_attrs=attrs))
    return max(t._trial_id for t in study.get_trials(deepcopy=False) if t.user_attrs.get("point") == k)
