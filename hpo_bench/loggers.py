"""``search.loggers``: opt-in experiment trackers and user callbacks of a search (bookkeeping only).

Each entry is a built-in name or a ``"module:attr"`` import path:

* engine ``ray``: ``"tensorboard"`` (Tune's ``TBXLoggerCallback``; needs ``tensorboardX``),
  ``"mlflow"`` (``MLflowLoggerCallback``; needs ``mlflow``), ``"wandb"`` (``WandbLoggerCallback``;
  needs ``wandb`` and ``WANDB_API_KEY``, or ``WANDB_MODE=offline``), or ``"module:Class"``: a
  subclass of ``ray.tune.Callback``, instantiated without arguments;
* engine ``optuna``: ``"mlflow"`` (``optuna_integration.MLflowCallback``; needs
  ``optuna-integration`` and ``mlflow``), or ``"module:function"``: a callable (not a class) called
  as ``callback(study, frozen_trial)`` after each trial the search tells.

Loggers only watch: they are not part of the spec digest (``SCHEDULING_FIELDS``) and never change
what a trial computes. :func:`validate_loggers` checks the shape of the list when the spec loads;
:func:`check_loggers` (preflight) checks that each entry can be loaded on this machine, so a bad
value is one :class:`~hpo_bench.errors.SpecError` line before anything is written.
"""
from __future__ import annotations

import importlib
import os
import re

from hpo_bench.errors import SpecError

# name -> (Python packages it needs, "module:attr" of the class that implements it)
BUILTIN = {
    "ray": {"tensorboard": (("tensorboardX",), "ray.tune.logger:TBXLoggerCallback"),
            "mlflow": (("mlflow",), "ray.air.integrations.mlflow:MLflowLoggerCallback"),
            "wandb": (("wandb",), "ray.air.integrations.wandb:WandbLoggerCallback")},
    "optuna": {"mlflow": (("optuna_integration", "mlflow"), "optuna_integration:MLflowCallback")},
}
PIP_NAMES = {"optuna_integration": "optuna-integration"}
WANDB_OFFLINE = ("offline", "disabled", "dryrun")
_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _allowed(engine: str) -> str:
    if engine not in BUILTIN:
        return f"none (engine {engine!r} has no loggers; use engine 'optuna' or 'ray')"
    what = "a ray.tune.Callback subclass" if engine == "ray" else "a function (study, trial)"
    return f"{', '.join(BUILTIN[engine])}, or 'module:attr' naming {what}"


def validate_loggers(value, engine: str, where: str) -> list[str]:
    """The list ``value`` of ``search.loggers`` if each entry has a known name or ``module:attr`` form."""
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected a list of strings, got {type(value).__name__}; allowed: {_allowed(engine)}")
    for i, entry in enumerate(value):
        if engine not in BUILTIN or not isinstance(entry, str) or not (
                entry in BUILTIN[engine] or _PATH.fullmatch(entry)):
            shown = repr(entry) if len(repr(entry)) <= 60 else repr(entry)[:57] + "..."
            raise SpecError(f"{where}[{i}]: {shown} is not allowed; allowed: {_allowed(engine)}")
    if len(set(value)) != len(value):
        raise SpecError(f"{where}: duplicate entries {value!r}; allowed: each logger once")
    return list(value)


def load_object(path: str):
    """The object ``module:attr`` names (``attr`` may be dotted)."""
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def check_loggers(names: list[str], engine: str, where: str) -> None:
    """Raise a one-line SpecError unless every logger of ``names`` can be loaded here (module doc)."""
    for i, entry in enumerate(names):
        at = f"{where}[{i}]"
        if entry in BUILTIN.get(engine, {}):
            packages, _ = BUILTIN[engine][entry]
            for package in packages:
                try:
                    importlib.import_module(package)
                except Exception:  # noqa: BLE001 - ImportError, or a package broken on import
                    raise SpecError(f"{at}: {entry!r} needs the Python package {package!r}, which cannot be "
                                    f"imported; allowed: pip install {PIP_NAMES.get(package, package)}, or leave "
                                    f"{entry!r} out") from None
            offline = os.environ.get("WANDB_MODE") in WANDB_OFFLINE
            if entry == "wandb" and not os.environ.get("WANDB_API_KEY") and not offline:
                raise SpecError(f"{at}: 'wandb' needs WANDB_API_KEY in the environment; allowed: set it, or "
                                "WANDB_MODE=offline")
            continue
        try:
            obj = load_object(entry)
        except Exception as err:  # noqa: BLE001 - ImportError, AttributeError, or the module failed on import
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            raise SpecError(f"{at}: cannot load {entry!r} ({type(err).__name__}: {reason}); allowed: an importable "
                            "'module:attr'") from None
        if engine == "ray":
            from ray.tune import Callback

            if not (isinstance(obj, type) and issubclass(obj, Callback)):
                raise SpecError(f"{at}: {entry!r} is of type {type(obj).__name__}, not a ray.tune.Callback subclass; "
                                "allowed: 'module:Class' of a ray.tune.Callback subclass (made without arguments)")
        elif isinstance(obj, type) or not callable(obj):
            raise SpecError(f"{at}: {entry!r} is of type {type(obj).__name__}, not a function; allowed: "
                            "'module:function' called as function(study, frozen_trial)")
