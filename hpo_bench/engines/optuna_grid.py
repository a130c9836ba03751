"""The Optuna grid (and sweep) driver: several drivers on one study, each (ρ, seed) told COMPLETE once.

Any number of drivers — ``hpo-bench run`` and ``hpo-bench worker`` processes, on one machine or
several sharing an RDB — may work on one study at the same time, and any of them may be killed at
any moment. Each loop of a driver:

1. **Reap** RUNNING trials whose holder died: with an RDB storage Optuna's heartbeat
   (``fail_stale_trials``: no heartbeat for the grace period); on this machine at once, when the
   process named by the trial's ``owner`` attribute is gone; with a journal file (no heartbeat) also
   a trial held on another machine (a journal is for one machine). A trial popped by a process that
   died before it recorded itself is reaped after :data:`OWNERLESS_GRACE_S`. Reaped trials are FAIL
   with ``reason = "interrupted"`` (a heartbeat-stale one: FAIL without a reason).
2. **Enqueue** each point that is not *settled* and has no WAITING or RUNNING trial
   (``study.enqueue_trial`` with ``user_attrs["run_id"]``). Settled: its row is in the results
   store and it has a COMPLETE trial (a row that did not end ok: a FAIL trial carrying the row's
   status, not reaped).
3. **Pop** WAITING trials (the storage moves WAITING → RUNNING atomically, so one driver gets each)
   and **claim** the point: after its own trial is RUNNING (and its heartbeat and owner recorded)
   the driver reads the point's trials again; if another trial of the point is RUNNING, or the
   point is settled, it gives the trial up (FAIL, ``reason = "duplicate"``) without training.
   Of two drivers claiming one point, the one that reads second sees the first's RUNNING trial, so
   at most one trains it; if both read at once both give up, and the point is enqueued again.
4. **Run** each claimed point: in the driver itself (``workers = 1``) or in a
   :class:`~hpo_bench.pool.TrialPool` (the experiment's own when it has ``workers`` processes),
   through :func:`hpo_bench.execute.execute_trial`, which returns the stored row when the point
   was already trained (a run finished by a driver killed before it could tell is reconciled from
   the store, never retrained). Then report the run's per-epoch validation accuracy
   (``trial.report``), set the user attrs, and tell: COMPLETE with the run's best validation
   accuracy, PRUNED when ``search.pruner`` stopped it (:mod:`hpo_bench.engines.optuna_pruning`),
   or FAIL with its status and reason. A tell that finds the trial already reaped is
   dropped; the next loop enqueues the point again and tells it from the store. After each tell,
   the callbacks of ``search.loggers`` get ``(study, frozen_trial)`` (:mod:`hpo_bench.engines.callbacks`).

A driver ends when every point is settled (waiting, and reaping, while other drivers hold points).
A run that raises an exception is told FAIL with ``user_attrs["error"]`` and not retried by this
driver (the engine reports it; a re-run retries it); a :class:`~hpo_bench.errors.WriteError` or
Ctrl-C stops the driver, whose held trials are told FAIL ``interrupted`` on the way out.
"""
from __future__ import annotations

import time
import warnings
from concurrent.futures import FIRST_COMPLETED, wait
from datetime import datetime

import pandas as pd

from hpo_bench.engines.callbacks import call_all
from hpo_bench.engines.common import finite, row_value
from hpo_bench.engines.optuna_pruning import EpochPruner, is_pruned
from hpo_bench.engines.optuna_storage import Heartbeats, has_heartbeat, owner_alive, owner_id
from hpo_bench.errors import WriteError
from hpo_bench.pool import TrialPool, run_with_progress
from hpo_bench.trial import Trial

POLL_S = 1.0  # how often a driver looks again while other drivers hold the points it waits for
OWNERLESS_GRACE_S = 30.0  # a RUNNING trial that never recorded an owner is reaped after this long
INTERRUPTED, DUPLICATE = "interrupted", "duplicate"


def run_attrs(row: dict) -> dict:
    """The user attrs of a told trial: run_id, status, reason, test_acc, grad_evals, wall_s."""
    out = {"run_id": row["run_id"], "status": row.get("status", ""), "reason": str(row.get("reason", ""))[:500]}
    for key in ("test_acc", "grad_evals", "wall_s"):
        if finite(row.get(key)):
            out[key] = float(row[key])
    return out


def epoch_values(store, run_id: str) -> list[tuple[int, float]]:
    """(epoch, val_acc) of every epoch of a stored run, from its curves file."""
    try:
        curves = pd.read_parquet(store.trials / f"{run_id}.parquet", columns=["scope", "epoch", "metric", "value"])
    except (OSError, ValueError):
        return []
    sel = curves[(curves["scope"] == "epoch") & (curves["metric"] == "val_acc")]
    return [(int(e), float(v)) for e, v in zip(sel["epoch"], sel["value"]) if finite(float(v))]


def settled(group: list, row: dict | None) -> bool:
    """Whether a point (its Optuna trials ``group`` and stored ``row``) needs nothing more."""
    from optuna.trial import TrialState

    if row is None:
        return False
    if row_value(row) is not None:
        return any(t.state == TrialState.COMPLETE for t in group)
    return any(t.state in (TrialState.FAIL, TrialState.PRUNED) and t.user_attrs.get("status") == row.get("status")
               and t.user_attrs.get("reason") not in (INTERRUPTED, DUPLICATE) for t in group)


class GridDriver:
    """Works on the points ``trials`` (run_id -> Trial) of ``study`` until each is settled (module doc)."""

    def __init__(self, study, trials: dict[str, Trial], store, *, workers: int = 1, pool: TrialPool | None = None,
                 device=None, progress=None, journal: bool = False, callbacks: list = (), pruning: dict | None = None):
        from optuna.distributions import FloatDistribution, IntDistribution

        self.study, self.storage, self.trials, self.store = study, study._storage, trials, store
        self.workers, self.pool, self.device, self.progress = max(1, workers), pool, device, progress
        self.journal = journal
        self.pruning = pruning  # EpochPruner fields but the study and trial: search.pruner (optuna_pruning)
        self.callbacks, self.callback_errors = list(callbacks), set()  # search.loggers: called after each tell
        self.owner = owner_id()
        self.heartbeats = Heartbeats(self.storage)
        rhos, seeds = [t.rho for t in trials.values()], [t.seed for t in trials.values()]
        self.dists = {"rho": FloatDistribution(min(rhos), max(rhos), log=min(rhos) > 0),
                      "seed": IntDistribution(min(seeds), max(seeds))}
        self.failed: dict[str, str] = {}  # run_id -> error of a run that raised in this driver
        self.held: dict[int, str] = {}  # trial_id -> run_id of the trials this driver holds (RUNNING)
        self.running: dict = {}  # future -> trial_id (pool runs)

    # -- reading the study ----------------------------------------------------------------------
    def _groups(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for t in self.study.get_trials(deepcopy=False):
            rid = t.user_attrs.get("run_id")
            if rid in self.trials:
                out.setdefault(rid, []).append(t)
        return out

    def _row(self, rid: str) -> dict | None:
        return self.store.load_row(rid) if self.store.has(rid) else None

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, str]:
        """Drive until every point is settled (or raised here); return {run_id: error} of those that raised."""
        from optuna.trial import TrialState

        started = False
        try:
            while True:
                self._reap(self._settled_points(self._groups()))
                groups = self._groups()
                done = self._settled_points(groups)
                todo = [rid for rid in self.trials if rid not in self.failed and rid not in done]
                leftover = any(t.state == TrialState.WAITING for rid, group in groups.items() if rid not in self.failed
                               for t in group)  # a second enqueue of a point (two drivers at once): give it up
                if not todo and not self.held and not leftover:
                    return self.failed
                if not started and self.progress is not None and self.pool is not None:
                    fresh = [rid for rid in todo if not self.store.has(rid)]
                    if fresh:
                        self.progress.start_batch(len(fresh), min(self.workers, len(fresh)))
                    started = True
                self._enqueue(todo, groups)
                while len(self.held) < self.workers and self._pop_and_start():
                    pass
                if self.running:
                    finished, _ = wait(list(self.running), timeout=POLL_S, return_when=FIRST_COMPLETED)
                    for future in finished:
                        self._collect(future)
                elif todo:
                    time.sleep(POLL_S)  # other drivers hold the remaining points
        except BaseException:
            self._abandon()
            raise
        finally:
            self.heartbeats.stop()

    def _settled_points(self, groups: dict[str, list]) -> set[str]:
        return {rid for rid in self.trials if settled(groups.get(rid, []), self._row(rid))}

    def _reap(self, done: set[str]) -> None:
        """Fail RUNNING trials whose holder died (heartbeat, owner on this machine, journal rules), and
        ownerless ones of a settled point (a live holder would give those up anyway)."""
        import optuna
        from optuna.trial import TrialState

        if has_heartbeat(self.storage):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optuna.storages.fail_stale_trials(self.study)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            rid = t.user_attrs.get("run_id")
            if t._trial_id in self.held or rid not in self.trials:
                continue
            owner = t.user_attrs.get("owner")
            if owner is None:  # popped by a process that died (or is about to record itself)
                start = t.datetime_start  # naive local time (RDB) or aware (journal)
                age = (datetime.now(start.tzinfo) - start).total_seconds() if start else OWNERLESS_GRACE_S + 1
                dead = rid in done or age > OWNERLESS_GRACE_S
            else:
                alive = owner_alive(owner)
                dead = alive is False or (alive is None and self.journal)
            if dead:
                self._fail(t._trial_id, {"reason": INTERRUPTED})

    def _enqueue(self, todo: list[str], groups: dict[str, list]) -> None:
        from optuna.trial import TrialState

        for rid in todo:
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in groups.get(rid, [])):
                continue
            trial = self.trials[rid]
            self.study.enqueue_trial({"rho": trial.rho, "seed": trial.seed}, user_attrs={"run_id": rid},
                                     skip_if_exists=False)

    def _pop_and_start(self) -> bool:
        """Pop one WAITING trial of ours, claim its point and start it; False when none is left to pop."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            rid = t.user_attrs.get("run_id")
            if rid not in self.trials or rid in self.failed:
                continue
            try:
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue  # another driver popped it first
            except UpdateFinishedTrialError:
                continue
            tid = t._trial_id
            self.held[tid] = rid
            self.heartbeats.add(tid)  # first: a trial with an owner on another machine is then always stale-able
            try:
                self.storage.set_trial_user_attr(tid, "owner", self.owner)
            except UpdateFinishedTrialError:  # reaped in between (only by a clock far off): not ours any more
                self._release(tid)
                return True
            if self._claim(tid, rid):
                self._start(tid, rid)
            return True
        return False

    def _claim(self, tid: int, rid: str) -> bool:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        group = self._groups().get(rid, [])
        mine = [t for t in group if t._trial_id == tid]
        if (not mine or mine[0].state != TrialState.RUNNING or settled(group, self._row(rid))
                or any(t.state == TrialState.RUNNING and t._trial_id != tid for t in group)):
            self._fail(tid, {"reason": DUPLICATE})
            return False
        trial = self.trials[rid]
        try:
            for name, value in (("rho", trial.rho), ("seed", trial.seed)):
                dist = self.dists[name]
                self.storage.set_trial_param(tid, name, dist.to_internal_repr(value), dist)
        except UpdateFinishedTrialError:  # reaped meanwhile: the point goes back to the queue
            self._release(tid)
            return False
        return True

    def _on_epoch(self, tid: int):
        """The run's pruning hook (``search.pruner``), or None."""
        if self.pruning is None:
            return None
        return EpochPruner(study_name=self.study.study_name, trial_id=tid, **self.pruning)

    def _start(self, tid: int, rid: str) -> None:
        trial = self.trials[rid]
        row = self._row(rid)
        if row is not None:  # trained already (its driver died before telling): tell it from the store
            self._tell(tid, row)
        elif self.pool is None:
            try:
                row = run_with_progress(trial, self.store, self.device, self.progress, consolidate=False,
                                        on_epoch=self._on_epoch(tid))
            except WriteError:
                raise
            except Exception as err:  # the sweep continues; the engine reports the point at the end
                self._error(tid, rid, err)
                return
            self._tell(tid, row)
        else:
            self.running[self.pool.submit(trial, self.store, self._on_epoch(tid))] = tid

    def _collect(self, future) -> None:
        tid = self.running.pop(future)
        rid = self.held[tid]
        try:
            row = future.result()
        except WriteError:
            raise
        except Exception as err:
            self._error(tid, rid, err)
            return
        if self.progress is not None:
            self.progress.finish(row)
        self._tell(tid, row)

    # -- telling ---------------------------------------------------------------------------------
    def _tell(self, tid: int, row: dict) -> None:
        """Report the epochs, set the run's attrs and tell; a trial reaped meanwhile is left as it is."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            for epoch, value in epoch_values(self.store, row["run_id"]):
                self.storage.set_trial_intermediate_value(tid, epoch, value)
            for key, value in run_attrs(row).items():
                self.storage.set_trial_user_attr(tid, key, value)
            value = row_value(row)
            if is_pruned(row):
                self.storage.set_trial_state_values(tid, state=TrialState.PRUNED)
            elif value is None:
                self.storage.set_trial_state_values(tid, state=TrialState.FAIL)
            else:
                self.storage.set_trial_state_values(tid, state=TrialState.COMPLETE, values=[value])
        except UpdateFinishedTrialError:
            self._release(tid)
            return  # reaped as stale meanwhile: the next loop enqueues the point and tells it from the store
        self._release(tid)
        call_all(self.callbacks, self.study, tid, self.callback_errors)

    def _error(self, tid: int, rid: str, err: Exception) -> None:
        self.failed[rid] = repr(err)[:500]
        self._fail(tid, {"error": repr(err)[:500]})

    def _fail(self, tid: int, attrs: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(tid, key, value)
            self.storage.set_trial_state_values(tid, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            pass  # told or reaped by someone else meanwhile
        self._release(tid)

    def _release(self, tid: int) -> None:
        self.held.pop(tid, None)
        self.heartbeats.discard(tid)

    def _abandon(self) -> None:
        """On the way out (Ctrl-C, a write error): the trials this driver holds are told FAIL ``interrupted``."""
        for tid in list(self.held):
            try:
                self._fail(tid, {"reason": INTERRUPTED})
            except Exception:  # the storage itself may be what failed
                self._release(tid)
