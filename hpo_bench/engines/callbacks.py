"""The loggers of ``search.loggers`` (:mod:`hpo_bench.loggers`) as Ray Tune callbacks and Optuna callbacks.

Ray Tune: they join the JSON/CSV loggers and the per-run console lines in the experiment's
``RunConfig.callbacks`` and run in the driver. ``"mlflow"`` logs to ``MLFLOW_TRACKING_URI`` (default:
``<run dir>/mlruns``) under the experiment ``MLFLOW_EXPERIMENT_NAME`` (default: the run folder's
name); ``"wandb"`` to the project ``WANDB_PROJECT`` (default: the run folder's name), one group per
Tune experiment. A restored experiment (``Tuner.restore``) keeps the loggers it was started with.

Optuna: each callback is called as ``callback(study, frozen_trial)`` in the driver after each trial
it tells (a grid/sweep point told COMPLETE or FAIL with its run's result; a TPE point added to the
study), never for trials given up as duplicates or reaped as interrupted. A callback that raises is
logged once (one warning line) and the search goes on: loggers never stop a search.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hpo_bench.loggers import BUILTIN, load_object

log = logging.getLogger("hpo_bench")


def tune_callbacks(names: list[str], run_dir: Path, experiment: str) -> list:
    """New Tune callbacks for the loggers ``names`` of a search writing into ``run_dir``."""
    out = []
    for name in names:
        if name == "tensorboard":
            out.append(load_object(BUILTIN["ray"][name][1])())
        elif name == "mlflow":
            out.append(load_object(BUILTIN["ray"][name][1])(
                tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").as_uri(),
                experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or run_dir.name))
        elif name == "wandb":
            out.append(load_object(BUILTIN["ray"][name][1])(
                project=os.environ.get("WANDB_PROJECT") or run_dir.name, group=experiment))
        else:
            out.append(load_object(name)())
    return out


def optuna_callbacks(names: list[str], run_dir: Path) -> list:
    """The callables ``(study, frozen_trial)`` of the loggers ``names`` of an Optuna search."""
    out = []
    for name in names:
        if name == "mlflow":
            out.append(load_object(BUILTIN["optuna"][name][1])(
                tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").as_uri(),
                metric_name="val_acc"))
        else:
            out.append(load_object(name))
    return out


def call_all(callbacks: list, study, trial_id: int, failed: set | None = None) -> None:
    """Call each of ``callbacks`` with ``(study, frozen trial trial_id)``; one that raises is logged once."""
    if not callbacks:
        return
    frozen = study._storage.get_trial(trial_id)
    for cb in callbacks:
        try:
            cb(study, frozen)
        except Exception as err:  # noqa: BLE001 - bookkeeping must not stop the search
            key = id(cb)
            if failed is None or key not in failed:
                log.warning("search.loggers: %r raised %s: %s (the search goes on)",
                            getattr(cb, "__qualname__", type(cb).__name__), type(err).__name__,
                            " ".join(str(err).split())[:160])
            if failed is not None:
                failed.add(key)
