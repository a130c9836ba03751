"""A :class:`Trial`: the unit every engine schedules, and its identity. Importable without torch.

A trial is (data, model, train config, strategy, its params, ρ (or ρ₀), seed) plus the method
label, the setting it belongs to and the search that asked for it. Its ``run_id`` is a hash of
exactly those fields, so the same trial gets the same id whichever engine runs it, and a re-run
skips it. Train fields added after the first results were stored (:data:`LATER_TRAIN_DEFAULTS`)
enter the hash only when set away from their default, so stores written before they existed
stay valid. Train fields that decide how a run is kept, not what it computes
(:data:`KEEPING_TRAIN_FIELDS`: mid-run checkpoints), never enter it: the same run has the same id
with checkpoints on or off, and a run resumed from a checkpoint is that run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpo_bench.identity import stable_hash

if TYPE_CHECKING:  # pragma: no cover
    from hpo_bench.config import ExperimentSpec, MethodConfig

# train-config fields added after results were first stored, with the value they had implicitly
LATER_TRAIN_DEFAULTS = {"dtype": "float32"}
# train-config fields that never enter the run id: how a run is kept, not what it computes
KEEPING_TRAIN_FIELDS = frozenset({"checkpoint_every", "keep_checkpoints"})


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
        ident["train"] = {k: v for k, v in ident["train"].items()
                          if k not in KEEPING_TRAIN_FIELDS and LATER_TRAIN_DEFAULTS.get(k, ...) != v}
        return stable_hash(ident)[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        return cls(**d)


def make_trial(spec: "ExperimentSpec", method: "MethodConfig", rho: float, seed: int, setting: dict,
               search: str = "") -> Trial:
    return Trial(method=method.label, strategy=method.strategy, params=dict(method.params), rho=float(rho),
                 seed=int(seed), data=dataclasses.asdict(spec.data), model=dataclasses.asdict(spec.model),
                 train=dataclasses.asdict(spec.train), setting=dict(setting), search=search)


def method_trials(spec: "ExperimentSpec", method: "MethodConfig", setting: dict) -> list[Trial]:
    """Trials of a method without a search: every ρ value (or ρ₀) × every seed."""
    rhos = method.rho if isinstance(method.rho, list) else [method.rho]
    return [make_trial(spec, method, rho, seed, setting) for rho in rhos for seed in spec.seeds]


def grid_trials(spec: "ExperimentSpec", method: "MethodConfig", setting: dict, tag: str,
                grid: list | None = None) -> list[Trial]:
    """Trials of a grid search: every ρ of ``grid`` (default: the method's ``search.grid``) × every seed."""
    rhos = grid if grid is not None else method.search["grid"]
    return [make_trial(spec, method, rho, seed, setting, search=tag) for rho in rhos for seed in spec.seeds]
