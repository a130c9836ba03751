"""Population-based ρ schedules through Ray Tune: ``search.kind = "pbt"`` (and ``"pb2"``), Ray engine.

The population
    One population per selection seed: a member per initial ρ — ``search.grid``, or ``n_trials``
    values drawn log-uniformly in [rho_min, rho_max] with ``sampler_seed``. A member is one Tune
    trial (config ``{"run_id", "rho"}``) and one row in the store: its trial is the search's trial
    at its *initial* ρ and the seed (``rho0`` = initial ρ; the search config enters through the
    spec's digest, i.e. the run directory), so every member is recorded exactly once.

Scheduling
    ``PopulationBasedTraining(time_attr="training_iteration", metric="val_acc", mode="max",
    perturbation_interval, quantile_fraction, resample_probability, hyperparam_mutations={"rho":
    tune.loguniform(rho_min, rho_max)})`` (asynchronous): every ``perturbation_interval`` epochs the
    bottom ``quantile_fraction`` of the population clones the state of a top member and explores
    ρ (× 0.8 or × 1.2, i.e. a step in log ρ, or a fresh log-uniform draw with
    ``resample_probability``; clipped to [rho_min, rho_max]). PB2 (``kind = "pb2"``) replaces the
    explore step by a GP bandit over ρ in [rho_min, rho_max] (needs ``GPy`` and ``scikit-learn``).
    Tune's explore copies the whole config of the cloned member; the scheduler used here keeps the
    member's own ``run_id`` (only ``rho`` is taken over), so a member never writes another's row.
    ``search.pbt_synch`` (default true): synchronous PBT, where every member reaches a perturbation
    point before the bottom ones exploit, so which member clones which depends only on the
    scores; PBT's random draws (clone source, explore step, resampled ρ) come from generators
    seeded with ``sampler_seed`` (:func:`seeded_random`), so a population is reproducible on CPU.
    ``pbt_synch = false`` is Ray's asynchronous PBT: no waiting, decisions depend on the members'
    timing.

A member's training
    Every epoch but the last reports ``{val_acc, ..., rho, epoch}``; at each perturbation point
    (every ``perturbation_interval`` epochs) the report carries the trainer's full checkpoint
    (:mod:`hpo_bench.checkpoint` format, ``state.pt`` in the Tune checkpoint folder), the state PBT
    clones; a killed population resumes from there.
    When Tune restarts a member from a checkpoint — its own (a pause, a resumed experiment) or a
    top member's (an exploit) — the trainer restores that state and then sets the strategy's ρ to
    the member's current config ρ. The last epoch is reported after the row is written
    (``phase = "final"``), so a scheduler decision never falls between the end of training and
    the row; Tune's stop rule ends the member at that report, before the scheduler sees it. ρ is held fixed between perturbations: PBT is meant for fixed-ρ strategies (SAM,
    ASAM, ...); for a strategy that adapts ρ itself it only sets the attribute ``rho``.

The schedule and the row
    A member's per-epoch ``rho`` curve and a per-step ``rho`` trace (scope ``step``, like LETS's
    ρ_t) hold the ρ its model was trained with: the epochs before an exploit are those of the
    cloned member's lineage (its state is what the member continues from). ``rho_final`` is the
    member's last ρ; ``pbt_exploits`` counts the times it cloned another member.

Cost
    Each member's ledger (grad/forward evaluations, wall and device seconds) counts only the work
    its own process did: when it clones a top member it takes over that member's model and
    optimizer state but keeps its own ledger counts (kept beside the store's checkpoints in
    ``checkpoints/<run_id>.pbt.json`` while it runs). So the population's cost per replicate (one
    selection seed) is the sum over its members, and nothing is counted twice.

Resume
    The experiment is named after the population's run ids; a re-run after a kill restores it
    (``Tuner.restore``, each member from its last checkpoint, PBT's state included); a member
    whose row is stored reports it again without training.
"""
from __future__ import annotations

import json
import math
import random
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hpo_bench.checkpoint import Checkpointer, _device_seconds, _placer
from hpo_bench.engines.base import SearchSpace, TrialFactory
from hpo_bench.engines.common import finite, set_name
from hpo_bench.engines.ray_progress import run_lines
from hpo_bench.engines.ray_setup import (
    check_resources,
    ensure_ray,
    raise_write_error,
    tune_env,
)
from hpo_bench.engines.ray_trainables import (
    CHECKPOINT_FILE,
    _enter_trial,
    _node_id,
    point_value,
    register_maker,
)
from hpo_bench.execute import result_curves, result_row, trial_trainer
from hpo_bench.store import ResultsStore, atomic_write_text
from hpo_bench.trial import Trial

POPULATION_KINDS = ("pbt", "pb2")
KEEP_CHECKPOINTS = 4  # per member, in the Tune experiment: its states at the last 4 perturbation points


def initial_rhos(space: SearchSpace) -> list[float]:
    """The members' initial ρ: ``grid``, or ``n_trials`` log-uniform draws in [rho_min, rho_max]."""
    if space.grid:
        return [float(r) for r in space.grid]
    rng = np.random.RandomState(space.sampler_seed)
    lo, hi = math.log(space.rho_min), math.log(space.rho_max)
    return [float(math.exp(v)) for v in rng.uniform(lo, hi, size=space.n_trials)]


# ----------------------------------------------------------------------------- a member in its trainable

class MemberCheckpointer(Checkpointer):
    """Reports of one member through Tune: every epoch's metrics, and its full state at each perturbation
    point (every ``interval`` epochs), where PBT may clone it.

    Only those states are checkpoints, so the ``KEEP_CHECKPOINTS`` a member keeps reach back that many
    perturbation points: a top member that trains on while a bottom one is still being restarted
    never deletes the state that one clones.
    """

    def __init__(self, store: ResultsStore, trial: Trial, rho: float, interval: int = 1):
        super().__init__(store, trial.run_id, every=1, keep=False)
        self.rho, self.interval = float(rho), max(1, int(interval))
        self.side = self.path.with_suffix(".pbt.json")
        try:
            self.info = json.loads(self.side.read_text())
        except (OSError, ValueError):
            self.info = {}
        self.exploits: list = list(self.info.get("exploits", []))

    def _write_side(self, ledger: dict | None = None) -> None:
        if ledger is not None:
            self.info["ledger"] = ledger
        self.info["exploits"] = self.exploits
        atomic_write_text(self.side, json.dumps(self.info))

    def due(self, epoch: int, epochs: int) -> bool:
        return epoch + 1 < epochs  # the last epoch is reported with the row

    def save(self, trainer, ctx, result, epoch: int) -> None:
        from ray import tune
        from ray.tune import Checkpoint

        last = result.epochs[-1] if result.epochs else {}
        metrics = {k: float(v) for k, v in last.items() if isinstance(v, (int, float))}
        metrics.update(run_id=self.run_id, phase="epoch", epoch=epoch + 1, rho=self.rho,
                       val_acc=float(last.get("val_acc", 0.0)) if finite(last.get("val_acc")) else 0.0)
        ledger = trainer.ledger
        self._write_side({"grad_evals": ledger.grad_evals, "fwd_evals": ledger.fwd_evals, "wall_s": ledger.elapsed(),
                          "device_s": self.device_offset + _device_seconds(ledger)})
        if (epoch + 1) % self.interval:  # between perturbation points: metrics only
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.path, self.disabled = Path(tmp) / CHECKPOINT_FILE, False
            super().save(trainer, ctx, result, epoch)
            self.path = self.store.checkpoint_path(self.run_id)
            tune.report(metrics, checkpoint=None if self.disabled else Checkpoint.from_directory(tmp))

    def load(self, device) -> dict | None:
        """The state of the checkpoint Tune restarts this member from (its own or a cloned member's)."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=_placer(torch.device(device)),
                               weights_only=True)
        donor = state.get("run_id")
        if donor != self.run_id:  # an exploit: the clone's model and history, this member's own ledger
            state["ledger"] = self.info.get("ledger") or {"grad_evals": 0, "fwd_evals": 0, "wall_s": 0.0,
                                                          "device_s": 0.0}
            entry = {"epoch": int(state["epoch"]), "from": donor, "rho": self.rho}
            if not self.exploits or self.exploits[-1] != entry:
                self.exploits.append(entry)
                self._write_side()
            state["run_id"] = self.run_id
        return state

    def restore(self, trainer, ctx, result, state: dict) -> int:
        first = super().restore(trainer, ctx, result, state)
        trainer.strategy.rho = self.rho  # the member's current ρ (new after an exploit)
        return first

    def finish(self) -> None:
        self.side.unlink(missing_ok=True)


def add_rho_trace(result) -> None:
    """Per-step ``rho`` of the run (ρ is constant within an epoch), unless the strategy traces it itself."""
    if any("rho" in t for t in result.traces):
        return
    rho_of = {int(e["epoch"]) - 1: float(e["rho"]) for e in result.epochs}
    if result.traces:
        for t in result.traces:
            t["rho"] = rho_of.get(int(t["epoch"]), float("nan"))
        return
    start = 0
    for e in result.epochs:
        end = int(e["step"]) - 1
        for step in sorted({start, max(start, end)}):
            result.traces.append({"step": step, "epoch": int(e["epoch"]) - 1, "rho": float(e["rho"])})
        start = int(e["step"])


def train_member(trial: Trial, store: ResultsStore, rho: float, device=None, interval: int = 1) -> dict:
    """Train (or continue) one member at its current ``rho`` and write its row."""
    ckpt = MemberCheckpointer(store, trial, rho, interval)
    trainer = trial_trainer(trial, device, checkpoint=ckpt)
    trainer.strategy.rho = float(rho)
    result = trainer.fit()
    add_rho_trace(result)
    row = result_row(trial, result, trainer.device)
    row["pbt_exploits"] = float(len(ckpt.exploits))
    row["finished_at"] = time.time()
    if not store.has(trial.run_id):
        store.write_run(row, result_curves(trial.run_id, result))
    ckpt.finish()
    return row


def make_pbt_trainable(members: dict, store_root: str, device, cwd: str, threads: int, interval: int = 1):
    """Function trainable of a PBT/PB2 member: config = {"run_id": member, "rho": its current ρ}."""

    def hpo_member(config):
        from ray import tune

        _enter_trial(cwd, threads)
        trial = Trial.from_dict(members[config["run_id"]])
        store = ResultsStore(store_root)
        row = store.load_row(trial.run_id) if store.has(trial.run_id) else \
            train_member(trial, store, float(config["rho"]), device, interval)
        last_val, best = row.get("last_val_acc"), row.get("best_val_acc")
        tune.report({"run_id": trial.run_id, "phase": "final", "status": row.get("status", ""),
                     "val_acc": float(last_val) if finite(last_val) else 0.0,
                     "best_val_acc": float(best) if finite(best) else float("nan"),
                     "rho": float(row.get("rho_final", config["rho"])),
                     "grad_evals": float(row.get("grad_evals", 0) or 0), "node_id": _node_id()})

    return hpo_member


register_maker("pbt", make_pbt_trainable)


# ----------------------------------------------------------------------------- the scheduler

_SCHEDULERS: dict = {}


def _scheduler_class(kind: str):
    """PBT / PB2 that keep each member's own ``run_id`` when it clones another (made on first use)."""
    if kind in _SCHEDULERS:
        return _SCHEDULERS[kind]
    if kind == "pb2":
        try:
            import GPy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            raise RuntimeError("search.kind 'pb2' needs the packages GPy and scikit-learn (pip install "
                               "'hpo-bench[pb2]'); allowed without them: kind 'pbt'") from None
        from ray.tune.schedulers.pb2 import PB2 as base
    else:
        from ray.tune.schedulers import PopulationBasedTraining as base

    def _get_new_config(self, trial, trial_to_clone):
        new_config, operations = base._get_new_config(self, trial, trial_to_clone)
        new_config["run_id"] = trial.config["run_id"]
        lo, hi = self.rho_bounds
        new_config["rho"] = float(min(max(float(new_config["rho"]), lo), hi))
        return new_config, operations

    cls = type(f"Member{base.__name__}", (base,), {"_get_new_config": _get_new_config, "rho_bounds": (0.0, math.inf)})
    _SCHEDULERS[kind] = cls
    return cls


def make_scheduler(space: SearchSpace, search_cfg):
    from ray import tune

    common = {"time_attr": "training_iteration", "metric": "val_acc", "mode": "max",
              "perturbation_interval": search_cfg.perturbation_interval, "synch": search_cfg.pbt_synch,
              "quantile_fraction": search_cfg.quantile_fraction}
    if space.kind == "pb2":
        sched = _scheduler_class("pb2")(hyperparam_bounds={"rho": [space.rho_min, space.rho_max]}, **common)
    else:
        sched = _scheduler_class("pbt")(hyperparam_mutations={"rho": tune.loguniform(space.rho_min, space.rho_max)},
                                        resample_probability=search_cfg.resample_probability, **common)
    sched.rho_bounds = (space.rho_min, space.rho_max)
    return sched


# ----------------------------------------------------------------------------- the driver

def final_report(trial_id: str, result: dict) -> bool:
    """Tune's stop rule: a member ends at its ``phase = "final"`` report (its row is written), before the
    scheduler sees it, so a perturbation (a pause under synchronous PBT, an exploit) never restarts a
    member that has finished."""
    return result.get("phase") == "final"


@contextmanager
def seeded_random(seed: int):
    """PBT's random draws from generators of their own, seeded with ``seed``, while the scheduler runs.

    Ray's PBT draws its clone source and explore steps from the module ``random`` of
    ``ray.tune.schedulers.pbt`` (the global generator, which Ray's own machinery in the driver also
    draws from, a timing-dependent number of times), and resampled values from NumPy's global
    generator. For the scope, the PBT module's ``random`` is a private ``random.Random(seed)`` and
    NumPy's global generator is seeded; both are put back afterwards.
    """
    import ray.tune.schedulers.pbt as pbt_module

    module_random, np_state = pbt_module.random, np.random.get_state()
    pbt_module.random = random.Random(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        pbt_module.random = module_random
        np.random.set_state(np_state)


def run_population(engine, make_trial: TrialFactory, space: SearchSpace, store, progress=None) -> list[dict]:
    """Run one population per seed of ``space`` through ``engine`` (a RayEngine); the members' rows."""
    rows = []
    for seed in space.seeds:
        rows += _run_one(engine, [make_trial(rho, seed) for rho in initial_rhos(space)], space, store, progress)
    return rows


def _run_one(engine, members: list[Trial], space: SearchSpace, store, progress=None) -> list[dict]:
    from ray import tune

    by_id = {t.run_id: t for t in members}
    pending = [rid for rid in by_id if not store.has(rid)]
    if pending:
        sched = make_scheduler(space, engine.cfg)  # a missing PB2 dependency fails before Ray starts
        ensure_ray(engine.cfg.address)
        check_resources(engine.cfg.cpus_per_trial, engine.cfg.gpus_per_trial)
        name = set_name(members[0].method, space.kind, by_id)
        path = engine.ray_dir / name
        trainable = engine._trainable(path, "pbt", members={rid: t.to_dict() for rid, t in by_id.items()},
                                      store_root=str(Path(store.root).resolve()),
                                      interval=int(engine.cfg.perturbation_interval))
        lines = run_lines(store, progress)
        if progress is not None:
            progress.start_batch(len(pending), min(engine.workers, len(pending)))
        if engine.resumable(path):
            tuner = engine._restore(path, trainable, lines)
        else:
            points = {rid: {"rho": t.rho} for rid, t in by_id.items()}
            run_config = engine._run_config(name, lines)
            run_config.checkpoint_config = tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS)
            run_config.stop = final_report
            tuner = tune.Tuner(trainable, param_space={"run_id": tune.grid_search(list(by_id)),
                                                       "rho": tune.sample_from(partial(point_value, points, "rho"))},
                               tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=engine.workers,
                                                           reuse_actors=True),
                               run_config=run_config)
        with tune_env(buffered=False), seeded_random(space.sampler_seed):
            grid = tuner.fit()
        raise_write_error(grid)
    store.consolidate()
    missing = [rid for rid in by_id if not store.has(rid)]
    if missing:
        raise RuntimeError(f"ray engine: {len(missing)} member(s) of the {space.kind} population of "
                           f"{members[0].method!r} have no result (see {engine.ray_dir}; re-run to resume): "
                           f"{', '.join(missing)}")
    return [store.load_row(rid) for rid in by_id]
