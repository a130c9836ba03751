"""Helpers every engine shares: running one trial with progress, study/experiment names, row values.

The names built here identify an engine's own bookkeeping (an Optuna study, a Ray Tune
experiment); a re-run finds the same study or experiment only if they stay exactly the same.
"""
from __future__ import annotations

import hashlib
import math
import re

from hpo_bench.engines.base import SearchSpace, TrialFactory
from hpo_bench.trial import Trial

# ----------------------------------------------------------------------------- names

def study_slug(label: str) -> str:
    """A method label as a file-name-safe part of a study or experiment name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "method"


def digest(items) -> str:
    return hashlib.sha1("\n".join(map(str, items)).encode()).hexdigest()[:10]


def set_name(label: str, kind: str, run_ids) -> str:
    """Name of the study/experiment running exactly the trials ``run_ids`` of method ``label``."""
    return f"{study_slug(label)}-{kind}-{digest(sorted(run_ids))}"


# ----------------------------------------------------------------------------- TPE identity and rows

def trial_template(make_trial: TrialFactory, space: SearchSpace) -> dict:
    """The search's trial as a dict (picklable for worker processes); ρ and seed are filled per point."""
    return make_trial(1.0, space.seeds[0]).to_dict()


def from_template(template: dict, rho: float, seed: int) -> Trial:
    return Trial.from_dict({**template, "rho": float(rho), "seed": int(seed)})


def tpe_name(template: dict, space: SearchSpace, *extra) -> str:
    """Name of a TPE search: everything that defines a trial but ρ and seed, the seeds and the space."""
    key = sorted((k, v) for k, v in template.items() if k not in ("rho", "seed"))
    ident = [key, list(space.seeds), space.rho_min, space.rho_max, space.sampler_seed, *extra]
    return f"{study_slug(template['method'])}-tpe-{digest([repr(ident)])}"


def collect_rows(store, template: dict, rhos, seeds) -> tuple[list[dict], list[str]]:
    """Stored rows of every (ρ, seed) of the evaluated ``rhos`` (each once), and the run ids without one."""
    rows, missing = {}, []
    for rho in rhos:
        for seed in seeds:
            rid = from_template(template, rho, seed).run_id
            if store.has(rid):
                rows.setdefault(rid, store.load_row(rid))
            else:
                missing.append(rid)
    return list(rows.values()), missing


# ----------------------------------------------------------------------------- row values

def finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def row_value(row: dict) -> float | None:
    """The objective of one run (best validation accuracy), or None when it did not end ok."""
    v = row.get("best_val_acc")
    return float(v) if row.get("status") == "ok" and finite(v) else None


def mean_value(rows: list[dict]) -> float | None:
    """Mean objective over the seeds of one ρ point that ended ok; None when none did."""
    values = [v for v in map(row_value, rows) if v is not None]
    return sum(values) / len(values) if values else None
