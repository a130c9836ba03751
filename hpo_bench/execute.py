"""Executing one trial: its data, its training run through the common trainer, its stored row.

``execute_trial`` is what every engine calls for a trial: it skips a trial the store already has,
otherwise builds the typed :class:`~hpo_bench.config.TrainConfig`, the strategy and the
:class:`~hpo_bench.trainer.Trainer`, trains, and writes the row and curves through the store.
A trial with a mid-run checkpoint (``train.checkpoint_every``, :mod:`hpo_bench.checkpoint`) resumes
from it; the checkpoint is removed once the row is written (unless ``train.keep_checkpoints``).
"""
from __future__ import annotations

import functools
import json
import math
import time

import pandas as pd
import torch

from hpo_bench.checkpoint import CheckpointError, Checkpointer
from hpo_bench.config import DataConfig, TrainConfig
from hpo_bench.data import load_data
from hpo_bench.store import ResultsStore
from hpo_bench.strategy import create_strategy
from hpo_bench.trainer import Trainer, resolve_device
from hpo_bench.trial import Trial


@functools.lru_cache(maxsize=4)
def _cached_data(data_json: str):
    return load_data(DataConfig(**json.loads(data_json)))


def data_for(data_cfg: dict):
    """The (cached) data bundle of a data config given as a dict; raises ValueError naming the field."""
    return _cached_data(json.dumps(data_cfg, sort_keys=True))


def trial_data(trial: Trial):
    return data_for(trial.data)


def trial_checkpointer(trial: Trial, store: ResultsStore) -> Checkpointer:
    """The checkpoint of ``trial`` in ``store`` (``train.checkpoint_every``, ``train.keep_checkpoints``)."""
    cfg = TrainConfig(**trial.train)
    return Checkpointer(store, trial.run_id, cfg.checkpoint_every, cfg.keep_checkpoints)


def trial_trainer(trial: Trial, device: str | None = None, on_epoch=None, progress=None,
                  max_steps: int = 0, checkpoint: Checkpointer | None = None) -> Trainer:
    """The trainer of ``trial``: its data, model, typed train config, strategy and seed."""
    train_cfg = TrainConfig(**trial.train)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    dev = resolve_device(device or train_cfg.device)
    strategy = create_strategy(trial.strategy, trial.rho, trial.params)
    return Trainer(trial_data(trial), trial.model["name"], train_cfg, strategy, trial.seed, dev,
                   on_epoch=on_epoch, progress=progress, max_steps=max_steps, checkpoint=checkpoint)


def run_trial(trial: Trial, device: str | None = None, on_epoch=None, progress=None,
              checkpoint: Checkpointer | None = None) -> tuple[dict, pd.DataFrame]:
    """Train one trial to completion (or divergence/timeout/oom); return (runs row, curves frame).

    With ``checkpoint`` the run resumes from its checkpoint, if any, and writes new ones; a checkpoint
    that does not fit the run is set aside and the run starts over on a fresh trainer.
    """
    trainer = trial_trainer(trial, device, on_epoch=on_epoch, progress=progress, checkpoint=checkpoint)
    try:
        result = trainer.fit()
    except CheckpointError as err:
        checkpoint.set_aside(str(err))
        trainer = trial_trainer(trial, device, on_epoch=on_epoch, progress=progress, checkpoint=checkpoint)
        result = trainer.fit()
    return result_row(trial, result, trainer.device), result_curves(trial.run_id, result)


def result_row(trial: Trial, result, device) -> dict:
    """One runs.parquet row: identity, selection-epoch metrics, ledger, strategy summary, status."""
    epochs = result.epochs
    row = {"run_id": trial.run_id, "method": trial.method, "strategy": trial.strategy, "search": trial.search,
           "rho0": trial.rho, "seed": trial.seed, "dataset": trial.data["dataset"], "model": trial.model["name"],
           "label_noise": trial.data["label_noise"], "device": device.type,
           "params": json.dumps(trial.params, sort_keys=True), "status": result.status, "reason": result.reason,
           "stop_step": result.stop_step, "epochs_done": epochs[-1]["epoch"] if epochs else 0}
    row.update({f"setting.{k}": v for k, v in trial.setting.items()})
    nan = float("nan")
    if epochs and result.status == "ok":
        val = [e["val_acc"] for e in epochs]
        best = max(range(len(epochs)), key=lambda i: (val[i] if not math.isnan(val[i]) else -1.0, i))
        last = epochs[-1]
        row.update(best_epoch=epochs[best]["epoch"], best_val_acc=epochs[best]["val_acc"],
                   test_acc=epochs[best]["test_acc"], last_val_acc=last["val_acc"], last_test_acc=last["test_acc"],
                   last_train_loss=last["train_loss"], last_train_acc=last["train_acc"],
                   last_val_loss=last["val_loss"], last_test_loss=last["test_loss"])
    else:  # a diverged / stopped run is recorded as such, never as a number
        row.update(best_epoch=-1, best_val_acc=nan, test_acc=nan, last_val_acc=nan, last_test_acc=nan,
                   last_train_loss=nan, last_train_acc=nan, last_val_loss=nan, last_test_loss=nan)
    row.update(result.ledger)
    row.update({k: float(v) for k, v in result.summary.items()})
    return row


def result_curves(run_id: str, result) -> pd.DataFrame:
    """Long format: run_id, scope ('epoch' | 'step'), epoch, step, metric, value."""
    frames = []
    for scope, rows in (("epoch", result.epochs), ("step", result.traces)):
        if rows:
            wide = pd.DataFrame(rows)
            long = wide.melt(id_vars=["epoch", "step"], var_name="metric", value_name="value")
            long.insert(0, "scope", scope)
            frames.append(long)
    if not frames:
        return pd.DataFrame({"run_id": pd.Series(dtype=str), "scope": pd.Series(dtype=str),
                             "epoch": pd.Series(dtype="int64"), "step": pd.Series(dtype="int64"),
                             "metric": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "run_id", run_id)
    out["value"] = out["value"].astype(float)
    return out[["run_id", "scope", "epoch", "step", "metric", "value"]]


def execute_trial(trial: Trial, store: ResultsStore, device=None, progress=None, on_epoch=None,
                  checkpoint: Checkpointer | None = None) -> dict:
    """Run ``trial`` unless the store already has it (resuming from its checkpoint, if any); return its row.

    ``checkpoint``: the run's :class:`Checkpointer` when the caller needs the same one (its ``on_epoch``
    reads it); by default :func:`trial_checkpointer`.
    """
    if store.has(trial.run_id):
        return store.load_row(trial.run_id)
    checkpoint = checkpoint or trial_checkpointer(trial, store)
    row, curves = run_trial(trial, device=device, progress=progress, on_epoch=on_epoch, checkpoint=checkpoint)
    row["finished_at"] = time.time()
    store.write_run(row, curves)
    checkpoint.finish()
    return row
