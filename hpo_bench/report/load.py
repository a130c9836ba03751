"""Loading a results directory into a :class:`Results`, read only and only through ``ResultsStore``.

A directory that is not one ``hpo-bench run`` wrote raises a one-line
``ValueError("RUN_DIR: '<dir>' <problem>; allowed: a directory written by hpo-bench run")``, except
the directory of ``hpo-bench fidelity`` (``fidelity.parquet``, no metadata and no runs), which loads
as a fidelity-only :class:`Results` (``runs`` empty).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hpo_bench.store import ResultsStore

ALLOWED = "allowed: a directory written by hpo-bench run"
REQUIRED_RUN_COLUMNS = ("run_id", "method", "strategy", "status", "rho0", "seed", "test_acc")
NOISE_COL = "setting.data.label_noise"


@dataclass
class Results:
    root: Path
    meta: dict
    runs: pd.DataFrame
    searches: pd.DataFrame
    anytime: pd.DataFrame
    fidelity: pd.DataFrame
    setting_cols: list
    notes: list = field(default_factory=list)
    fidelity_steps: pd.DataFrame = field(default_factory=pd.DataFrame)  # fidelity.parquet: one row per probed step

    @property
    def fidelity_only(self) -> bool:
        return self.runs.empty


def _bad(root, problem: str) -> ValueError:
    return ValueError(f"RUN_DIR: {str(root)!r} {problem}; {ALLOWED}")


def _read_table(store: ResultsStore, name: str) -> pd.DataFrame:
    try:
        return store.read_table(name)
    except Exception as err:  # a torn / foreign file: one line, no traceback
        raise _bad(store.root, f"has an unreadable {name}.parquet ({type(err).__name__})") from None


def _read_metadata(store: ResultsStore) -> dict:
    if not store.has_metadata():
        raise _bad(store.root, "has no metadata.json")
    try:
        meta = store.read_metadata()
    except (ValueError, UnicodeDecodeError):
        raise _bad(store.root, "has a malformed metadata.json") from None
    if not isinstance(meta, dict):
        raise _bad(store.root, "has a malformed metadata.json")
    return meta


def load_results(run_dir) -> Results:
    """Read a results directory; raise a one-line ValueError naming RUN_DIR when it is not one."""
    root = Path(run_dir)
    if not root.is_dir():
        raise _bad(root, "is not a directory")
    store = ResultsStore(root)
    if (not store.has_metadata() and not (root / "runs.parquet").exists() and not store.trials.exists()
            and (root / "fidelity.parquet").is_file()):  # written by hpo-bench fidelity
        steps = _read_table(store, "fidelity")
        return Results(root=root, meta={}, runs=pd.DataFrame(), searches=pd.DataFrame(), anytime=pd.DataFrame(),
                       fidelity=_read_table(store, "fidelity_summary"), setting_cols=[], fidelity_steps=steps)
    meta = _read_metadata(store)
    notes = []
    runs = _read_table(store, "runs")
    if runs.empty:  # a run in progress: read the finished trials, write nothing
        runs = store.finished_rows()
        if len(runs):
            notes.append(f"runs.parquet is absent: the report reads the {len(runs)} finished trials in trials/.")
    if runs.empty:
        raise _bad(root, "has no finished runs (runs.parquet or trials/*.json)")
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in runs]
    if missing:
        raise _bad(root, f"runs.parquet lacks columns {', '.join(missing)}")
    runs = runs.copy()
    for col, default in (("search", ""), ("params", "{}"), ("reason", ""), ("label_noise", math.nan)):
        if col not in runs:
            runs[col] = default
        runs[col] = runs[col].fillna(default) if isinstance(default, str) else runs[col]
    runs["search"] = runs["search"].astype(str)
    for col in ("grad_evals", "fwd_evals", "wall_s", "device_s", "peak_mem_bytes", "rho_final", "stop_step",
                "best_val_acc", "finished_at", "epochs_done", "steps"):
        if col not in runs:
            runs[col] = math.nan
    searches = _read_table(store, "searches")
    anytime = _read_table(store, "anytime")
    setting_cols = [c for c in runs.columns if c.startswith("setting.")]
    if NOISE_COL not in setting_cols and runs["label_noise"].nunique() > 1:  # merged directories
        runs[NOISE_COL] = runs["label_noise"]
        setting_cols.append(NOISE_COL)
    for col in setting_cols:
        if not searches.empty and col not in searches:
            searches[col] = math.nan
    return Results(root=root, meta=meta, runs=runs, searches=searches, anytime=anytime,
                   fidelity=_read_table(store, "fidelity_summary"), setting_cols=setting_cols, notes=notes,
                   fidelity_steps=_read_table(store, "fidelity"))
