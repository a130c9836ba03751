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
    (``study.add_trial``, ``user_attrs["point"] = k``), COMPLETE with its value or FAIL.

Study names and storage
    A study is named after the method, its trials and the run directory (its name, i.e. the spec
    name and digest, and a hash of its absolute path), so two specs (or one spec run into two
    output roots) sharing one ``search.storage`` never share a study. When the driver opens a
    journal file whose last line is torn (a write killed half-way), it keeps a copy
    ``<journal>.torn-<n>`` beside it, drops the incomplete line (under the journal's lock) and
    logs one line; Optuna would otherwise append the next record to the torn one and fail on
    every later read.

Parallelism
    Grid: ``workers > 1`` starts that many ``spawn`` processes, each loading the same study and
    calling ``torch.set_num_threads(int(cpus_per_trial))`` (a trial's ``train.threads``, when set,
    wins). A :class:`~hpo_bench.errors.WriteError` (disk full, ...) in a worker stops it and is
    raised again by the driver. TPE: the runs of a round go to a :class:`~hpo_bench.pool.TrialPool`
    of ``workers`` processes (the experiment's own when it has that many), one torch thread each
    (or ``train.threads``), as every other independent run.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from hpo_bench.engines.base import Engine, SearchSpace, TrialFactory
from hpo_bench.engines.common import (
    collect_rows,
    digest,
    finite,
    from_template,
    mean_value,
    row_value,
    set_name,
    tpe_name,
    tpe_points,
    tpe_rounds,
    trial_template,
)
from hpo_bench.errors import WriteError
from hpo_bench.pool import TrialPool, init_worker, run_with_progress
from hpo_bench.store import ResultsStore, notice, write_error
from hpo_bench.trial import Trial

DEFAULT_JOURNAL = "optuna.journal"
EXIT_WRITE_ERROR = 3  # exit status of a worker process stopped by a WriteError


# ----------------------------------------------------------------------------- storage helpers

def storage_for(url: str, run_dir, repair: bool = False) -> object:
    """``''`` -> journal file ``<run_dir>/optuna.journal``; ``journal:///p`` -> journal at ``/p``;
    anything else -> the RDB URL string (validated by :mod:`hpo_bench.storage_url`).

    ``repair`` (the driver, before any worker starts): drop a torn last line of the journal first.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not url or url.startswith("journal:"):
        path = Path(run_dir) / DEFAULT_JOURNAL if not url else Path(url[len("journal://"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if repair:
                repair_journal(path)
        except OSError as err:
            raise write_error(err, path) from err
        return JournalStorage(JournalFileBackend(str(path)))
    return url


def _torn_tail(path: Path) -> int:
    """The number of bytes after the last newline of ``path`` (0 when it ends with one or is empty)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            nl = fh.read(pos - start).rfind(b"\n")
            if nl >= 0:
                return size - (start + nl + 1)
            pos = start
    return size


def repair_journal(path: Path) -> Path | None:
    """Drop a torn last line (no newline: a write killed half-way) of the journal file ``path``.

    Done under the journal's own lock (Optuna appends whole lines under it), after copying the
    file to ``<name>.torn-<n>`` beside it; one line is logged. Returns the copy, or None when the
    journal was intact.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or _torn_tail(path) == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        torn = _torn_tail(path)
        if torn == 0:
            return None
        n = 1
        while path.with_name(f"{path.name}.torn-{n}").exists():
            n += 1
        backup = path.with_name(f"{path.name}.torn-{n}")
        shutil.copy2(path, backup)
        os.truncate(path, path.stat().st_size - torn)
    finally:
        lock.release()
    notice(f"{path}: its last line was torn by an interrupted write; dropped those {torn} bytes "
           f"(the whole file is kept as {backup.name}, beside it)")
    return backup


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


def _worker_loop(job: dict, tokens, progress=None) -> None:
    """Take a token, ask (pops an enqueued grid point), run, tell; until the tokens run out.
    Used in-process and in workers."""
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    study = optuna.load_study(study_name=job["study_name"], storage=storage_for(job["storage"], job["run_dir"]))
    store = ResultsStore(job["store_root"])
    while True:
        try:
            tokens.get_nowait()
        except queue_mod.Empty:
            return
        ot = study.ask()
        try:
            _tell_grid_point(study, ot, job, store, progress)
        except WriteError:  # disk full & co.: stop (the trial stays RUNNING and is redone on resume)
            raise
        except Exception as err:  # the sweep continues; the driver reports missing rows at the end
            ot.set_user_attr("error", repr(err)[:500])
            study.tell(ot, state=TrialState.FAIL)


def _spawn_worker(job: dict, tokens, errors) -> None:  # entry point of a spawned worker process
    init_worker()  # Ctrl-C is the driver's to handle; die with the driver
    try:
        _worker_loop(job, tokens)
    except WriteError as err:  # handed to the driver, which raises it
        errors.put(err)
        errors.close()
        errors.join_thread()
        os._exit(EXIT_WRITE_ERROR)


# ----------------------------------------------------------------------------- engine

class OptunaEngine(Engine):
    name = "optuna"
    kinds = ("grid", "sweep", "tpe")

    # -- common ----------------------------------------------------------------------------------
    def _study_name(self, base: str) -> str:
        """``base`` qualified by the run directory: two specs (or output roots) never share a study."""
        return f"{self.run_dir.name}-{digest([str(self.run_dir)])[:6]}/{base}"

    def _study(self, name: str):
        optuna = _quiet_optuna()
        storage = storage_for(self.cfg.storage, self.run_dir, repair=True)
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)

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
        tokens, errors = ctx.Queue(), ctx.Queue()
        for _ in range(n_tokens):
            tokens.put(1)
        procs = [ctx.Process(target=_spawn_worker, args=(job, tokens, errors), daemon=False) for _ in range(workers)]
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
        if any(p.exitcode == EXIT_WRITE_ERROR for p in procs):
            raise errors.get(timeout=10)

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
        name = self._study_name(set_name(trials[0].method, "grid", by_id))
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
    @contextmanager
    def _trial_pool(self):
        """The experiment's pool when it has ``workers`` processes, else one of its own for this search."""
        if self.pool.jobs == self.workers:
            yield self.pool
            return
        with TrialPool(self.workers, self.device) as pool:
            yield pool

    def run_adaptive(self, make_trial: TrialFactory, space: SearchSpace, store, progress=None) -> list[dict]:
        if space.kind != "tpe":
            return super().run_adaptive(make_trial, space, store, progress)
        template = trial_template(make_trial, space)
        name = self._study_name(tpe_name(template, space))
        study = self._study(name)
        recorded = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False)}
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
                        _record_point(study, k, rho, point_rows, space)
        store.consolidate()
        return list(rows.values())


def _record_point(study, k: int, rho: float, rows: list[dict], space: SearchSpace) -> None:
    """Add evaluated point ``k`` to the study (COMPLETE with the mean objective, or FAIL with the reasons)."""
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
