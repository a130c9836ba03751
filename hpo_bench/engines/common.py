"""Helpers every engine shares: study/experiment names, the TPE point sequence, row values.

The names built here identify an engine's own bookkeeping (an Optuna study, a Ray Tune
experiment); a re-run finds the same study or experiment only if they stay exactly the same.

The TPE point sequence (:func:`tpe_rounds`, :func:`tpe_points`)
    Point k of a TPE search is a pure function of ``sampler_seed``, k and the results of the
    points before its *round*: it is drawn in a fresh in-memory Optuna study that holds those
    earlier points (ρ, mean objective over the seeds; FAIL when no seed ended ok) by a
    ``TPESampler(seed=point_seed(sampler_seed, k), n_startup_trials=TPE_STARTUP,
    constant_liar=True)``. Rounds are fixed, whatever the number of workers: points
    ``[0, TPE_STARTUP)`` (TPE's random start-up draws) form the first round, then every
    ``TPE_ROUND`` points one more. A round's points are asked one after another in point order
    (a later point of the round sees the earlier ones as running: the constant liar), all its
    (ρ, seed) runs are trained (concurrently, by any number of workers), and only then is the
    next round asked. So the same spec evaluates the same ρ values in every run, interrupted and
    resumed or not, with any ``workers``, and raising ``n_trials`` extends the same sequence.
"""
from __future__ import annotations

import hashlib
import math
import re
import warnings

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


# ----------------------------------------------------------------------------- the TPE point sequence

TPE_STARTUP = 10  # TPESampler's default n_startup_trials: these first points are seeded random draws
TPE_ROUND = 4  # later points are asked this many at a time, from the results of all points before them


def tpe_rounds(n_trials: int) -> list[tuple[int, int]]:
    """The rounds ``[(start, stop), ...]`` of the first ``n_trials`` points (a prefix of one fixed sequence)."""
    rounds, start = [], 0
    while start < n_trials:
        stop = min(n_trials, TPE_STARTUP if start < TPE_STARTUP else start + TPE_ROUND)
        rounds.append((start, stop))
        start = stop
    return rounds


def point_seed(sampler_seed: int, k: int) -> int:
    """The sampler seed of point ``k`` (independent of the process and of what ran before)."""
    return int(hashlib.sha256(f"{sampler_seed}:{k}".encode()).hexdigest()[:8], 16)


def tpe_points(space: SearchSpace, history: list[tuple[float, float | None]], start: int, stop: int) -> list[float]:
    """ρ of the points ``start..stop-1`` (one round), given ``history``: (ρ, objective or None) of points < start."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.samplers import TPESampler
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dist = {"rho": FloatDistribution(space.rho_min, space.rho_max, log=True)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        study = optuna.create_study(direction="maximize", sampler=TPESampler(seed=0))
        for rho, value in history:
            study.add_trial(create_trial(params={"rho": rho}, distributions=dist, value=value) if value is not None
                            else create_trial(params={"rho": rho}, distributions=dist, state=TrialState.FAIL))
        out = []
        for k in range(start, stop):
            study.sampler = TPESampler(seed=point_seed(space.sampler_seed, k), n_startup_trials=TPE_STARTUP,
                                       constant_liar=True)
            out.append(float(study.ask(dist).params["rho"]))  # left running: the next point sees it
    return out


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
