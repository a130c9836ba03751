"""From a validated spec to finished runs: trials, one-run execution, and the experiment loop.

A :class:`Trial` is the unit every engine schedules: (data, model, train config, strategy,
its params, ρ (or ρ₀), seed). Its ``run_id`` is a hash of exactly those fields plus the method
label, so the same trial gets the same id whichever engine runs it, and a re-run skips it.
Train fields added after the first results were stored (:data:`LATER_TRAIN_DEFAULTS`) enter the
hash only when set away from their default, so stores written before they existed stay valid.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from hpo_bench.config import DataConfig, ExperimentSpec, MethodConfig, settings, stable_hash
from hpo_bench.data import load_data
from hpo_bench.store import ResultsStore
from hpo_bench.trainer import Trainer, resolve_device
from searchers import create_strategy


# train-config fields added after results were first stored, with the value they had implicitly
LATER_TRAIN_DEFAULTS = {"dtype": "float32"}


@dataclass
class Trial:
    method: str
    strategy: str
    params: dict
    rho: float
    seed: int
    data: dict
    model: dict
    train: dict
    setting: dict = field(default_factory=dict)
    search: str = ""

    @property
    def run_id(self) -> str:
        ident = dataclasses.asdict(self)
        ident["train"] = {k: v for k, v in ident["train"].items() if LATER_TRAIN_DEFAULTS.get(k, ...) != v}
        return stable_hash(ident)[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        return cls(**d)


def make_trial(spec: ExperimentSpec, method: MethodConfig, rho: float, seed: int, setting: dict,
               search: str = "") -> Trial:
    return Trial(method=method.label, strategy=method.strategy, params=dict(method.params), rho=float(rho),
                 seed=int(seed), data=dataclasses.asdict(spec.data), model=dataclasses.asdict(spec.model),
                 train=dataclasses.asdict(spec.train), setting=dict(setting), search=search)


@functools.lru_cache(maxsize=4)
def _cached_data(data_json: str):
    return load_data(DataConfig(**json.loads(data_json)))


def data_for(data_cfg: dict):
    """The (cached) data bundle of a data config given as a dict; raises ValueError naming the field."""
    return _cached_data(json.dumps(data_cfg, sort_keys=True))


def trial_data(trial: Trial):
    return data_for(trial.data)


def run_trial(trial: Trial, device: str | None = None, on_epoch=None, progress=None) -> tuple[dict, pd.DataFrame]:
    """Train one trial to completion (or divergence/timeout/oom); return (runs row, curves frame)."""
    from types import SimpleNamespace

    train_cfg = SimpleNamespace(**trial.train)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    dev = resolve_device(device or train_cfg.device)
    strategy = create_strategy(trial.strategy, trial.rho, trial.params)
    trainer = Trainer(trial_data(trial), trial.model["name"], train_cfg, strategy, trial.seed, dev,
                      on_epoch=on_epoch, progress=progress)
    result = trainer.fit()
    return result_row(trial, result, dev), result_curves(trial.run_id, result)


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


def execute_trial(trial: Trial, store: ResultsStore, device=None, progress=None, on_epoch=None) -> dict:
    """Run ``trial`` unless the store already has it; return its row."""
    if store.has(trial.run_id):
        return store.load_row(trial.run_id)
    row, curves = run_trial(trial, device=device, progress=progress, on_epoch=on_epoch)
    row["finished_at"] = time.time()
    store.write_run(row, curves)
    return row


def method_trials(spec: ExperimentSpec, method: MethodConfig, setting: dict) -> list[Trial]:
    """Trials of a method without a search: every ρ value (or ρ₀) × every seed."""
    rhos = method.rho if isinstance(method.rho, list) else [method.rho]
    return [make_trial(spec, method, rho, seed, setting) for rho in rhos for seed in spec.seeds]


def dispatch_sweep(spec, method, setting, store, device=None, progress=None) -> list[dict]:
    """Run a plain method's trials (ρ values × seeds) through ``method.search.engine``, without selection.

    The trials are exactly :func:`method_trials` (same run ids as a local run), so the rows are
    ordinary runs of the method; only where they execute changes (e.g. Ray Tune on a cluster).
    """
    from hpo_bench.config import SearchConfig
    from hpo_bench.engines import get_engine

    cfg = SearchConfig(**method.search)
    return get_engine(cfg.engine, cfg, store.root, device).run_trials(method_trials(spec, method, setting), store, progress)


def run_experiment(spec: ExperimentSpec, store: ResultsStore, device: str | None = None, show_progress: bool = True):
    """Run every setting × method of ``spec`` into ``store`` (skipping done runs); return runs frame."""
    from hpo_bench.progress import RunProgress
    from hpo_bench.search import run_search

    search_rows = []
    with RunProgress(enabled=show_progress) as progress:
        for setting, sspec in settings(spec):
            rho_star = {}
            for method in sspec.methods:
                if method.rho_from:  # run at the ρ* an earlier search selected in this setting
                    method = dataclasses.replace(method, rho=rho_star[method.rho_from])
                if method.search is not None and method.search["kind"] == "sweep":
                    dispatch_sweep(sspec, method, setting, store, device, progress)
                    continue
                if method.search is not None:
                    found = run_search(sspec, method, setting, store, device, progress)
                    rho_star[method.label] = found[0]["summary"]["rho_star"]
                    search_rows.extend(found)
                    continue
                for trial in method_trials(sspec, method, setting):
                    progress.start(trial)
                    row = execute_trial(trial, store, device=device, progress=progress.bar)
                    progress.finish(row)
                    store.consolidate()
    runs = store.consolidate()
    if search_rows:
        store.write_table("searches", pd.DataFrame([r["summary"] for r in search_rows]))
        store.write_table("anytime", pd.concat([r["anytime"] for r in search_rows], ignore_index=True))
    return runs
