"""Ray Tune trainables of the Ray engine, and what a user needs to restore or read an experiment.

Every Tune experiment of a search runs one function trainable: ``hpo_trial`` (grid, sweep, ASHA:
one run per Tune trial; config ``{"run_id", "method", "rho", "seed"}``) or ``hpo_rho`` (TPE: one ρ
per Tune trial running every seed; config ``{"rho"}``), or, for PBT/PB2, ``hpo_member``
(:mod:`hpo_bench.engines.ray_pbt`; config ``{"run_id", "rho"}``). Before ``fit()`` the engine writes what
the trainable needs into ``<experiment>/hpo_bench_trainable.json`` (the trials by run id, the
results folder, device, threads, resources), so the same trainable can be rebuilt later::

    from ray import tune
    from hpo_bench.engines.ray_trainables import restore_trainable
    path = "runs/<spec>-<digest>/ray/<experiment>"
    results = tune.Tuner.restore(path, trainable=restore_trainable(path)).get_results()
    tune.ExperimentAnalysis(path).get_best_config(metric="best_val_acc", mode="max")  # no trainable needed

Reporting (grid/ASHA): each epoch except the last is reported with ``tune.report({**epoch_row,
"grad_evals": cumulative, ...})`` from ``run_trial``'s ``on_epoch`` callback; after the row is
written a final report (``phase = "final"``) carries the run's status, best/last validation
accuracy, cost, and the Ray node that ran it (``node_id``). So a scheduler decision can never
interrupt a run between its last epoch and the write of its row.

Checkpoints (grid/ASHA, ``train.checkpoint_every``): the epoch report after which the run wrote its
checkpoint to the results store carries that state as a Tune checkpoint (``state.pt``), so Tune keeps
it with the trial. When Tune restarts the trial (``FailureConfig`` retries, ``Tuner.restore``), the
trainable puts ``tune.get_checkpoint()`` where the run resumes from unless the store already has a
checkpoint of the run (:func:`adopt_tune_checkpoint`): on a node that does not share the store's
filesystem the run still resumes mid-run, with the same bits.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hpo_bench.engines.common import finite, from_template, mean_value, row_value
from hpo_bench.execute import execute_trial, result_curves, result_row, trial_checkpointer, trial_trainer
from hpo_bench.store import ResultsStore, atomic_path, atomic_write_text
from hpo_bench.trainer import RunResult, resolve_device
from hpo_bench.trial import Trial

TRAINABLE_FILE = "hpo_bench_trainable.json"
CHECKPOINT_FILE = "state.pt"  # a run's checkpoint (hpo_bench.checkpoint format) inside a Tune checkpoint


def _enter_trial(cwd: str, threads: int) -> None:
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(max(1, threads))


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not in a Ray worker
        return ""


def point_value(points: dict, key: str, config: dict):
    """``points[config["run_id"]][key]``: a grid trial's ρ / seed / method in its Tune config (``tune.sample_from``)."""
    return points[config["run_id"]][key]


def make_grid_trainable(trials_by_id: dict, store_root: str, device, cwd: str, threads: int):
    """Function trainable for grid/ASHA: config = {"run_id": ..., "method", "rho", "seed"}; runs that trial once."""

    def hpo_trial(config):
        from ray import tune

        _enter_trial(cwd, threads)
        trial = Trial.from_dict(trials_by_id[config["run_id"]])
        rid, epochs = trial.run_id, int(trial.train["epochs"])
        store = ResultsStore(store_root)
        ckpt = trial_checkpointer(trial, store)
        adopt_tune_checkpoint(ckpt, tune.get_checkpoint())
        c0 = time.process_time()

        def on_epoch(row):
            if row["epoch"] >= epochs:  # the last epoch is reported after the row is written
                return
            metrics = {**row, "run_id": rid, "phase": "epoch", "cpu_s": time.process_time() - c0,
                       "epoch_keys": ",".join(row)}
            if not (ckpt.due(row["epoch"] - 1, epochs) and ckpt.path.is_file()):
                tune.report(metrics)
                return
            with tempfile.TemporaryDirectory() as folder:  # the checkpoint just written, as Tune's own
                shutil.copyfile(ckpt.path, Path(folder) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

        row = execute_trial(trial, store, device=device, on_epoch=on_epoch, checkpoint=ckpt)
        last_val = row.get("last_val_acc")
        tune.report({"run_id": rid, "phase": "final", "status": row.get("status", ""),
                     "val_acc": float(last_val) if finite(last_val) else 0.0,
                     "best_val_acc": float(row["best_val_acc"]) if finite(row.get("best_val_acc")) else float("nan"),
                     "grad_evals": float(row.get("grad_evals", 0) or 0), "epoch_done": int(row.get("epochs_done", 0)),
                     "node_id": _node_id()})

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
                         "seeds_done": i + 1, "seed": int(seed), "run_id": row["run_id"],
                         "n_ok": sum(1 for r in rows if row_value(r) is not None), "node_id": _node_id()})

    return hpo_rho


def adopt_tune_checkpoint(ckpt, checkpoint) -> bool:
    """Put the state of Tune's ``checkpoint`` (a grid trial restarted by ``FailureConfig`` or
    ``Tuner.restore``, possibly on another node) where the run resumes from, unless the results store
    already holds a checkpoint of the run (the same or a later state); whether it did."""
    if checkpoint is None or ckpt.path.is_file():
        return False
    with checkpoint.as_directory() as folder:
        source = Path(folder) / CHECKPOINT_FILE
        if not source.is_file():
            return False
        ckpt.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt.path) as tmp:
            shutil.copyfile(source, tmp)
    return True


_MAKERS = {"grid": make_grid_trainable, "tpe": make_tpe_trainable}


def register_maker(kind: str, maker) -> None:
    """Add the trainable maker of another kind of experiment (``"pbt"``: :mod:`hpo_bench.engines.ray_pbt`)."""
    _MAKERS[kind] = maker


def save_trainable(path, kind: str, resources: dict, **kwargs) -> None:
    """Write what :func:`restore_trainable` needs to rebuild the trainable of experiment ``path``."""
    Path(path).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path) / TRAINABLE_FILE, json.dumps({"kind": kind, "resources": resources, "kwargs": kwargs},
                                                              default=str))


def build_trainable(kind: str, resources: dict, **kwargs):
    """The (resource-wrapped) trainable of a search of ``kind`` ('grid' or 'tpe')."""
    from ray import tune

    return tune.with_resources(_MAKERS[kind](**kwargs), resources)


def restore_trainable(path):
    """The trainable of the Tune experiment at ``path`` (a folder under ``<run dir>/ray/``), for
    ``tune.Tuner.restore(path, trainable=restore_trainable(path))``."""
    saved = json.loads((Path(path) / TRAINABLE_FILE).read_text())
    return build_trainable(saved["kind"], saved["resources"], **saved["kwargs"])


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
