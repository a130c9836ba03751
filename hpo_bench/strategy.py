"""The hook protocol between the trainer and a per-run ρ strategy, and the strategy registry.

The common trainer (:mod:`hpo_bench.trainer`) owns the loop. At every step it

1. computes g = ∇L(B^tr; θ_t) (always: one grad eval),
2. asks :meth:`Strategy.perturbation` for ε (``None`` → no second pass: an ERM step),
3. if ε is given, computes ĝ = ∇L(B^tr; θ_t + ε) with BN statistics frozen (one grad eval),
4. asks :meth:`Strategy.combine` for the update direction (default: ĝ, or g without ε),
5. takes the base-optimizer step (SGD, momentum, weight decay, cosine lr),
6. calls :meth:`Strategy.after_update` (e.g. update ρ from a validation batch).

Every gradient a strategy needs is obtained through the :class:`hpo_bench.trainer.StepContext`
it receives, so the ledger counts it; a strategy never runs its own loop nor charges by hand.

Strategies live in the ``searchers`` package (one module each) and register themselves with
:func:`register_strategy`. The registry finds them through the ``hpo_bench.strategies`` entry
point group (``pyproject.toml``), so ``hpo_bench`` never imports ``searchers`` and a third-party
package can add a strategy by declaring the same entry point.

Checkpoints (``train.checkpoint_every``) save a strategy's state with :meth:`Strategy.state_dict` and
put it back with :meth:`Strategy.load_state_dict`. The default captures every instance attribute
(see :func:`capture_state` for what it can hold), so a strategy written to these rules needs no code
of its own to resume bit for bit.
"""
from __future__ import annotations

import functools
import importlib
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar

import torch

from hpo_bench.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from hpo_bench.trainer import StepContext, Trainer

Grads = list  # list[torch.Tensor], one per trainable parameter, in model.parameters() order
ENTRY_POINT_GROUP = "hpo_bench.strategies"


@dataclass
class NoParams:
    """A strategy without hyperparameters beyond ρ."""


class Diverged(RuntimeError):
    """Raised by a strategy when its own state (e.g. a learned ρ) becomes non-finite."""


@dataclass(frozen=True)
class Reduction:
    """Parameters under which a strategy trains exactly like another one, bit for bit on CPU.

    ``Strategy(rho if self.rho is None else self.rho, params)`` must give the same weights, BN
    statistics and per-epoch metrics as ``to`` with ``to_params`` at the same ρ (its ledger may
    charge more: e.g. LETS with β = 0 still computes its hypergradient).
    """

    params: dict = field(default_factory=dict)
    to: str = "sam"
    to_params: dict = field(default_factory=dict)
    rho: float | None = None


class Strategy(ABC):
    """A per-run rule for perturbing and combining gradients. Subclasses set ``name`` and ``Params``.

    ``reduces_to`` (a :class:`Reduction`) declares the parameters under which the strategy is
    exactly another one; the shared contract test (``tests/test_strategy_contract.py``) checks that
    reduction bit for bit, the ledger charge, ``trace``/``summary`` and determinism for every
    registered strategy, and fails for a strategy that declares none.
    """

    name: ClassVar[str]
    summary_doc: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    reduces_to: ClassVar[Reduction | None] = None

    def __init__(self, rho: float, params=None):
        self.rho0 = float(rho)
        self.rho = float(rho)
        self.params = params if params is not None else self.Params()

    @classmethod
    def validate_params(cls, params, where: str) -> None:
        """Cross-field checks beyond types and ranges; raise SpecError. Default: none."""

    @classmethod
    def uses_validation_split(cls, params) -> bool:
        """True if a run draws batches from the held-out validation split (it must not be empty)."""
        return False

    def setup(self, trainer: "Trainer") -> None:
        """Called once before the first step (total steps, data, model are known)."""

    @abstractmethod
    def perturbation(self, ctx: "StepContext", g: Grads) -> Grads | None:
        """ε for this step, or None to skip the second pass (ERM step)."""

    def combine(self, ctx: "StepContext", g: Grads, g_hat: Grads | None) -> Grads:
        """The update direction given g and ĝ (None on ERM steps). Default: ĝ if present, else g."""
        return g if g_hat is None else g_hat

    def after_update(self, ctx: "StepContext") -> None:
        """Called after the base-optimizer step, at θ_{t+1}."""

    def trace(self) -> dict[str, float]:
        """Per-step values stored in the curves table (e.g. ρ_t); called every ``trace_every`` steps."""
        return {}

    def summary(self) -> dict[str, float]:
        """Per-run values stored in runs.parquet (e.g. final ρ, fraction of SAM steps)."""
        return {"rho_final": self.rho}

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self, refs: dict | None = None) -> dict:
        """Everything later steps depend on, as plain data (``torch.load(weights_only=True)`` reads it).

        Default: every instance attribute, captured by :func:`capture_state`. ``refs`` names the objects
        the strategy may hold but does not own (the trainer, its model, parameters, optimizer, ...):
        they are stored as references and :meth:`load_state_dict` puts the new run's objects in their
        place; the strategy's own ``params`` is always one. Called at the end of an epoch.
        """
        shared = {id(obj): name for name, obj in {**(refs or {}), "params": self.params, "strategy": self}.items()}
        memo: dict = {}
        return {key: capture_state(value, shared, memo, f"{type(self).__name__}.{key}")
                for key, value in vars(self).items()}

    def load_state_dict(self, state: dict, refs: dict | None = None) -> None:
        """Put back what :meth:`state_dict` captured (after :meth:`setup`, on a freshly built trainer)."""
        objects = {**(refs or {}), "params": self.params, "strategy": self}
        memo: dict = {}
        for key, value in state.items():
            setattr(self, key, restore_state(value, objects, memo))


# ----------------------------------------------------------------------------- state as plain data
_REF, _OBJECT, _GENERATOR, _LEAF = "__state_ref__", "__state_object__", "__state_generator__", "__state_leaf__"
_CODE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType, functools.partial, type)


def capture_state(value, refs: dict, memo: dict, where: str = "state"):
    """A copy of ``value`` made of None, bool, int, float, str, tensors, lists, tuples and dicts only.

    What it can hold: those types (tensors are detached copies; a leaf that requires grad stays one),
    ``torch.Generator`` (its state), and plain objects, dataclasses included, whose attributes are
    again such values (stored as their class's import path and attributes, rebuilt without calling
    ``__init__``). An object whose ``id`` is in ``refs`` is stored as a reference by name. Sharing is
    kept: an object reached twice is one object after :func:`restore_state`. Anything else (a module,
    an optimizer, a function, an object with ``__slots__``) raises TypeError naming ``where``: such a
    strategy overrides ``state_dict``/``load_state_dict``.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    for plain in (bool, int, float, str):  # a subclass (numpy.float64, an IntEnum, ...) as its plain value
        if isinstance(value, plain):
            return plain(value)
    key = id(value)
    if key in refs:
        return {_REF: refs[key]}
    if key in memo:
        return memo[key]
    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        out = {_LEAF: out} if value.requires_grad and value.is_leaf else out
    elif isinstance(value, torch.Generator):
        out = {_GENERATOR: value.get_state(), "device": str(value.device)}
    elif isinstance(value, list):
        out = memo[key] = []
        out.extend(capture_state(v, refs, memo, f"{where}[{i}]") for i, v in enumerate(value))
    elif isinstance(value, tuple):
        out = tuple(capture_state(v, refs, memo, f"{where}[{i}]") for i, v in enumerate(value))
    elif isinstance(value, dict):
        out = memo[key] = {}
        for k, v in value.items():
            if not isinstance(k, (bool, int, float, str)):
                raise TypeError(f"{where}: a dict key of type {type(k).__name__}; a checkpoint holds str/int/float keys")
            out[k] = capture_state(v, refs, memo, f"{where}[{k!r}]")
    elif isinstance(value, (torch.nn.Module, torch.optim.Optimizer, _CODE)) or not hasattr(value, "__dict__"):
        raise TypeError(f"{where}: a {type(value).__name__} is not checkpointed by the default Strategy.state_dict; "
                        "override state_dict/load_state_dict (or pass it in refs)")
    else:
        cls = type(value)
        out = memo[key] = {_OBJECT: f"{cls.__module__}:{cls.__qualname__}", "attrs": {}}
        for k, v in vars(value).items():
            out["attrs"][k] = capture_state(v, refs, memo, f"{where}.{k}")
    memo[key] = out
    return out


def _class(path: str) -> type:
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{path} is not a class")
    return obj


def restore_state(value, objects: dict, memo: dict):
    """The value :func:`capture_state` captured; references resolved by name in ``objects``."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, list):
        out = memo[key] = []
        out.extend(restore_state(v, objects, memo) for v in value)
    elif isinstance(value, tuple):
        out = tuple(restore_state(v, objects, memo) for v in value)
    elif _REF in value:
        out = objects[value[_REF]]
    elif _LEAF in value:
        out = value[_LEAF].requires_grad_(True)
    elif _GENERATOR in value:
        out = torch.Generator(device=value["device"])
        out.set_state(value[_GENERATOR])
    elif _OBJECT in value:
        cls = _class(value[_OBJECT])
        out = memo[key] = cls.__new__(cls)
        for k, v in value["attrs"].items():
            object.__setattr__(out, k, restore_state(v, objects, memo))
    else:
        out = memo[key] = {}
        for k, v in value.items():
            out[k] = restore_state(v, objects, memo)
    memo[key] = out
    return out


def load_plugins() -> None:
    """Import every package declared under the ``hpo_bench.strategies`` entry point (registration)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "strategy", load=load_plugins)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``."""
    return STRATEGIES.register(cls.name, cls)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def get_strategy_class(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


def create_strategy(name: str, rho: float, params: dict | None = None) -> Strategy:
    cls = get_strategy_class(name)
    return cls(rho, cls.Params(**(params or {})))
