"""Optuna engine: an exact, resumable grid (enqueued points) and TPE over log ρ.

The engine only schedules; every trial runs :func:`hpo_bench.execute.execute_trial`, which
skips a run already in the :class:`~hpo_bench.store.ResultsStore` and otherwise trains it and
writes its row. Optuna's study (journal file or RDB) is additional bookkeeping on top of that.

Exactly once, grid (``kind = "grid"``)
    ``GridSampler`` can run a point twice under parallel workers, so it is not used. The driver
    loads the study (``load_if_exists=True``), marks trials left RUNNING by a dead process as
    FAIL (``user_attrs["reason"] = "interrupted"``), and enqueues each (ρ, seed) that has no
    finished Optuna trial and no WAITING one, with ``user_attrs["run_id"]``. It then hands out
    exactly as many *tokens* as there are WAITING trials of the study (a multiprocessing queue);
    a worker takes a token before each ``study.ask()``, so every ``ask`` pops one enqueued trial
    (the storage pops a WAITING trial atomically) and never samples a new one. A point whose
    run_id is already in the store is told its stored value without retraining.
    One driver per study at a time (a second concurrent driver would mark the first one's
    RUNNING trials as interrupted; the store still never holds a run twice).

Objective and states
    value = ``best_val_acc`` (maximize). user attrs: run_id, status, reason, test_acc, grad_evals.
    A run that ends diverged/timeout/oom is told FAIL with its status and reason (its row is in
    the store; it counts in the search cost). An exception inside a trial is told FAIL with
    ``user_attrs["error"]``; the sweep continues and, at the end, a ``RuntimeError`` lists the
    points that have no row (a re-run retries exactly those).

TPE (``kind = "tpe"``)
    ``TPESampler(seed=sampler_seed)`` over ``rho`` log-uniform in [rho_min, rho_max]; one Optuna
    trial = one ρ running every spec seed (sequentially, in the same worker); value = mean
    ``best_val_acc`` over the seeds that finished ok (FAIL when none did). On a re-run, COMPLETE
    trials and FAIL trials that evaluated (``user_attrs["status"]``) count toward ``n_trials``;
    a ρ left RUNNING by a dead process is re-enqueued (same ρ, its stored seeds are skipped).

Parallelism
    ``workers > 1``: that many ``spawn`` processes, each loading the same study and calling
    ``torch.set_num_threads(int(cpus_per_trial))`` (a trial's ``train.threads``, when set, wins).
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
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
from hpo_bench.pool import run_with_progress
from hpo_bench.store import ResultsStore
from hpo_bench.trial import Trial

DEFAULT_JOURNAL = "optuna.journal"


# ----------------------------------------------------------------------------- storage helpers

def storage_for(url: str, run_dir) -> object:
    """``''`` -> journal file ``<run_dir>/optuna.journal``; ``journal:///p`` -> journal at ``/p``;
    anything else -> the RDB URL string (validated by :mod:`hpo_bench.storage_url`)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not url or url.startswith("journal:"):
        path = Path(run_dir) / DEFAULT_JOURNAL if not url else Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return url


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _attrs(row: dict) -> dict:
    out = {"run_id": row["run_id"], "status": row.get("status", ""), "reason": str(row.get("reason", ""))[:500]}
    for key in ("test_acc", "grad_evals", "wall_s"):
        if finite(row.get(key)):
            out[key] = float(row[key])
    return out


# ----------------------------------------------------------------------------- worker loop

def _tell_grid_point(study, ot, job: dict, store, progress) -> None:
    from optuna.trial import TrialState

    run_id = ot.user_attrs.get("run_id")
    if run_id not in job["trials"]:  # not one of ours (should not happen with tokens)
        study.tell(ot, state=TrialState.FAIL)
        return
    trial = Trial.from_dict(job["trials"][run_id])
    ot.suggest_categorical("rho", job["rhos"])
    ot.suggest_categorical("seed", job["seeds"])
    row = run_with_progress(trial, store, job["device"], progress, consolidate=False)
    for k, v in _attrs(row).items():
        ot.set_user_attr(k, v)
    value = row_value(row)
    if value is None:
        study.tell(ot, state=TrialState.FAIL)
    else:
        study.tell(ot, value)


def _tell_tpe_point(study, ot, job: dict, store, progress) -> None:
    """One ρ point runs every seed; its value is the mean over the seeds that ended ok."""
    from optuna.trial import TrialState

    rho = ot.suggest_float("rho", job["rho_min"], job["rho_max"], log=True)
    rows = [run_with_progress(from_template(job["template"], rho, seed), store, job["device"], progress,
                              consolidate=False) for seed in job["seeds"]]
    ok = [r for r in rows if row_value(r) is not None]
    ot.set_user_attr("run_ids", [r["run_id"] for r in rows])
    ot.set_user_attr("status", "ok" if ok else rows[0].get("status", "failed"))
    ot.set_user_attr("n_ok", len(ok))
    ot.set_user_attr("grad_evals", float(sum(r.get("grad_evals", 0) or 0 for r in rows)))
    if ok:
        ot.set_user_attr("test_acc", float(sum(r["test_acc"] for r in ok) / len(ok)))
        study.tell(ot, mean_value(rows))
    else:
        ot.set_user_attr("reason", "; ".join(str(r.get("reason", "")) for r in rows)[:500])
        study.tell(ot, state=TrialState.FAIL)


def _worker_loop(job: dict, tokens, progress=None) -> None:
    """Take a token, ask, run, tell; until the tokens run out. Used in-process and in workers."""
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    study = optuna.load_study(study_name=job["study_name"], storage=storage_for(job["storage"], job["run_dir"]))
    store = ResultsStore(job["store_root"])
    tell = _tell_grid_point if job["kind"] == "grid" else _tell_tpe_point
    while True:
        try:
            tokens.get_nowait()
        except queue_mod.Empty:
            return
        ot = study.ask()
        try:
            tell(study, ot, job, store, progress)
        except Exception as err:  # the sweep continues; the driver reports missing rows at the end
            ot.set_user_attr("error", repr(err)[:500])
            study.tell(ot, state=TrialState.FAIL)


def _spawn_worker(job: dict, tokens) -> None:  # entry point of a spawned worker process
    _worker_loop(job, tokens)


# ----------------------------------------------------------------------------- engine

class OptunaEngine(Engine):
    name = "optuna"
    kinds = ("grid", "sweep", "tpe")

    # -- common ----------------------------------------------------------------------------------
    def _study(self, name: str, sampler=None):
        optuna = _quiet_optuna()
        storage = storage_for(self.cfg.storage, self.run_dir)
        return optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction="maximize",
                                   load_if_exists=True)

    def _mark_interrupted(self, study) -> list:
        """Trials left RUNNING by a dead process -> FAIL (reason 'interrupted'); return them."""
        from optuna.trial import TrialState

        stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in stale:
            study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        return stale

    def _job(self, kind: str, study_name: str, store, **extra) -> dict:
        threads = max(1, int(self.cfg.cpus_per_trial)) if self.workers > 1 else 0
        return {"kind": kind, "study_name": study_name, "storage": self.cfg.storage, "run_dir": str(self.run_dir),
                "store_root": str(Path(store.root).resolve()), "device": self.device, "threads": threads, **extra}

    def _drive(self, job: dict, n_tokens: int, progress=None) -> None:
        if n_tokens <= 0:
            return
        workers = min(self.workers, n_tokens)
        if workers <= 1:
            tokens = queue_mod.Queue()
            for _ in range(n_tokens):
                tokens.put(1)
            _worker_loop(job, tokens, progress)
            return
        ctx = mp.get_context("spawn")
        tokens = ctx.Queue()
        for _ in range(n_tokens):
            tokens.put(1)
        procs = [ctx.Process(target=_spawn_worker, args=(job, tokens), daemon=False) for _ in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except BaseException:
            for p in procs:
                if p.is_alive():
                    p.terminate()
            raise

    @staticmethod
    def _missing_error(study, missing: list[str]):
        errors = {}
        for t in study.get_trials(deepcopy=False):
            rid = t.user_attrs.get("run_id")
            if rid in missing and "error" in t.user_attrs:
                errors[rid] = t.user_attrs["error"]
        detail = "; ".join(f"{rid}: {errors.get(rid, 'no result')}" for rid in missing)
        raise RuntimeError(f"optuna study {study.study_name!r}: {len(missing)} trial(s) have no result "
                           f"(re-run to retry them): {detail}")

    # -- grid ------------------------------------------------------------------------------------
    def run_trials(self, trials: list[Trial], store, progress=None) -> list[dict]:
        from optuna.trial import TrialState

        if not trials:
            return []
        by_id = {t.run_id: t for t in trials}
        name = set_name(trials[0].method, "grid", by_id)
        study = self._study(name)
        self._mark_interrupted(study)
        finished, waiting = set(), set()
        for t in study.get_trials(deepcopy=False):
            rid = t.user_attrs.get("run_id")
            evaluated = t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "status" in t.user_attrs
                                                           and "error" not in t.user_attrs)
            if evaluated and store.has(rid or ""):  # a finished trial whose row is gone is run again
                finished.add(rid)
            elif t.state == TrialState.WAITING:
                waiting.add(rid)
        for rid, trial in by_id.items():
            if rid not in finished and rid not in waiting:
                study.enqueue_trial({"rho": trial.rho, "seed": trial.seed}, user_attrs={"run_id": rid},
                                    skip_if_exists=False)
        n_waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        job = self._job("grid", name, store, trials={rid: t.to_dict() for rid, t in by_id.items()},
                        rhos=sorted({t.rho for t in trials}), seeds=sorted({t.seed for t in trials}))
        self._drive(job, n_waiting, progress)
        store.consolidate()
        missing = [rid for rid in by_id if not store.has(rid)]
        if missing:
            self._missing_error(study, missing)
        return [store.load_row(rid) for rid in by_id]

    # -- TPE -------------------------------------------------------------------------------------
    def run_adaptive(self, make_trial: TrialFactory, space: SearchSpace, store, progress=None) -> list[dict]:
        from optuna.samplers import TPESampler
        from optuna.trial import TrialState

        if space.kind != "tpe":
            return super().run_adaptive(make_trial, space, store, progress)
        template = trial_template(make_trial, space)
        name = tpe_name(template, space)
        study = self._study(name, sampler=TPESampler(seed=space.sampler_seed))
        stale = self._mark_interrupted(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        for t in stale:  # re-evaluate the interrupted rho first (its stored seeds are skipped)
            if "rho" in t.params and not any(w.params.get("rho") == t.params["rho"] for w in waiting):
                study.enqueue_trial({"rho": t.params["rho"]}, skip_if_exists=False)

        def evaluated():
            return [t for t in study.get_trials(deepcopy=False)
                    if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "status" in t.user_attrs)]

        job = self._job("tpe", name, store, template=template, seeds=list(space.seeds),
                        rho_min=space.rho_min, rho_max=space.rho_max)
        self._drive(job, space.n_trials - len(evaluated()), progress)
        store.consolidate()
        done = evaluated()
        rows, missing = collect_rows(store, template, [t.params["rho"] for t in done if "rho" in t.params],
                                     space.seeds)
        if len(done) < space.n_trials or missing:
            errors = [t.user_attrs.get("error", "") for t in study.get_trials(deepcopy=False) if "error" in t.user_attrs]
            raise RuntimeError(f"optuna study {name!r}: {len(done)}/{space.n_trials} rho points evaluated "
                               f"(re-run to continue); errors: {'; '.join(errors[-3:]) or 'none'}")
        return rows
