"""Experiment specs: dataclasses, TOML loading, validation and dotted overrides.

A spec is a TOML file (see ``experiments/``) with five parts::

    name = "quick"          # names the output directory
    seeds = [0, 1]          # every method runs once per seed
    [data]   ...            # DataConfig
    [model]  ...            # ModelConfig
    [train]  ...            # TrainConfig (the common trainer's conventions)
    [vary]   "data.label_noise" = [0.2, 0.4]   # optional: one setting per value (cartesian product)
    [[methods]]             # MethodConfig, one table per compared method
    label = "SAM"; strategy = "sam"; rho = 0.05
    [methods.params]  ...   # strategy-specific hyperparameters (validated by the strategy)
    [methods.search]  ...   # optional SearchConfig: grid/TPE/ASHA over rho through an engine

Every error raised while loading is a :class:`SpecError` whose message is one line
naming the dotted field and what is allowed. Nothing is written before a spec validates.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hpo_bench.errors import SpecError
from hpo_bench.fields import (  # noqa: F401 - spec_field, check_value and build_dataclass are used through config too
    INT_MAX,
    NAME_PATTERN,
    _key,
    _short,
    build_dataclass,
    check_value,
    spec_field,
)
from hpo_bench.identity import stable_hash
from hpo_bench.loggers import validate_loggers
from hpo_bench.models import list_models
from hpo_bench.storage_url import validate_storage_url
from hpo_bench.strategy import get_strategy_class, list_strategies
from hpo_bench.trial import KEEPING_TRAIN_FIELDS


MAX_SAMPLES = 1_000_000  # MNIST-1D is generated in memory at preflight: 10**6 samples is ~160 MB
MAX_WORKERS = 1024  # threads, processes or concurrent trials: more would exhaust the OS, not speed a run up


@dataclass
class DataConfig:
    dataset: str = spec_field("mnist1d", choices=["mnist1d", "cifar10", "cifar100", "fashion-mnist"])
    data_root: str = spec_field(".cache/data", text="path", doc="directory of the MNIST-1D cache / CIFAR batches / Fashion-MNIST idx files (left at this default, Fashion-MNIST is read from /usr/share/datasets/fashion-mnist: apt-get install dataset-fashion-mnist)")
    num_samples: int = spec_field(5000, lo=100, hi=MAX_SAMPLES, doc="MNIST-1D samples in total (80% train, 20% test); Fashion-MNIST: training images drawn with data_seed from the 60000 (60000 = all) before the validation split, the test set is always all 10000; ignored for CIFAR")
    data_seed: int = spec_field(42, lo=0, doc="MNIST-1D generation seed; Fashion-MNIST subset seed")
    val_fraction: float = spec_field(0.1, lo=0.0, hi=1.0, hi_open=True)
    split_seed: int = spec_field(0, lo=0)
    label_noise: float = spec_field(0.0, lo=0.0, hi=1.0, hi_open=True)
    noise_seed: int = spec_field(0, lo=0)
    download: bool = spec_field(False)
    augment: bool = spec_field(True, doc="random crop (zero padding: CIFAR 4 px, Fashion-MNIST 2 px) + horizontal flip (ignored for MNIST-1D)")
    verify_md5: bool = spec_field(True, doc="torchvision's CIFAR MD5 check")


@dataclass
class ModelConfig:
    name: str = spec_field("mnist1d_cnn")


@dataclass
class TrainConfig:
    epochs: int = spec_field(30, lo=1)
    batch_size: int = spec_field(100, lo=1)
    lr: float = spec_field(0.1, lo=0.0, lo_open=True)
    momentum: float = spec_field(0.9, lo=0.0, hi=1.0, hi_open=True)
    weight_decay: float = spec_field(5e-4, lo=0.0)
    schedule: str = spec_field("cosine", choices=["cosine", "constant"])
    eval_every: int = spec_field(1, lo=1, doc="evaluate train/val/test every N epochs")
    eval_batch_size: int = spec_field(1000, lo=1)
    trace_every: int = spec_field(1, lo=1, doc="record per-step strategy traces every N steps")
    device: str = spec_field("auto", choices=["auto", "cpu", "cuda"])
    amp: bool = spec_field(True, doc="bf16 autocast + channels_last on CUDA (never on CPU, never with float64)")
    dtype: str = spec_field("float32", choices=["float32", "float64"],
                            doc="weights and compute; float64 for reference runs and parity checks")
    threads: int = spec_field(0, lo=0, hi=MAX_WORKERS, doc="torch CPU threads for a run (0 = leave as is)")
    max_wall_s: float = spec_field(0.0, lo=0.0, doc="per-run wall-time budget in s (0 = none) -> status 'timeout'")
    max_mem_mb: float = spec_field(0.0, lo=0.0, doc="per-run memory budget in MiB (0 = none): CUDA allocation on GPU, process RSS on CPU -> status 'oom'")
    checkpoint_every: int = spec_field(0, lo=0, doc="write the run's full state every N epochs (0 = never): a killed run resumes from it, same bits (not in the run id)")
    keep_checkpoints: bool = spec_field(False, doc="keep checkpoints/<run_id>.pt (the final state) after the run finishes (not in the run id)")


@dataclass
class SearchConfig:
    kind: str = spec_field("grid", choices=["grid", "tpe", "asha", "sweep", "pbt", "pb2"],
                           doc="sweep: run the method's rho value(s) x seeds through the engine, no selection; "
                               "pbt/pb2: a population of rho schedules (ray)")
    engine: str = spec_field("local", choices=["local", "optuna", "ray"])
    grid: list = spec_field([], doc="rho values for kind='grid' / 'asha'")
    rho_min: float = spec_field(1e-3, lo=0.0, lo_open=True, doc="TPE log-uniform lower bound")
    rho_max: float = spec_field(2.0, lo=0.0, lo_open=True, doc="TPE log-uniform upper bound")
    n_trials: int = spec_field(8, lo=1, doc="TPE trial budget (rho points; each runs every seed)")
    sampler_seed: int = spec_field(0, lo=0)
    storage: str = spec_field("", doc="Optuna storage: '' = journal file in the run dir, or an RDB URL")
    workers: int = spec_field(0, lo=0, hi=MAX_WORKERS, doc="concurrent trials (optuna: processes; ray: max_concurrent_trials); 0 = --jobs")
    cpus_per_trial: float = spec_field(1.0, lo=0.0, lo_open=True)
    gpus_per_trial: float = spec_field(0.0, lo=0.0)
    address: str = spec_field("", doc="Ray cluster address ('' = start a local Ray, 'auto' = join)")
    asha_grace: int = spec_field(1, lo=1, doc="ASHA grace period / Optuna pruner min_resource, in epochs")
    asha_reduction: float = spec_field(2.0, lo=1.0, lo_open=True)
    pruner: str = spec_field("none", choices=["none", "successive-halving", "hyperband"],
                             doc="optuna grid: stop runs at epoch rungs (min epochs asha_grace, reduction asha_reduction)")
    perturbation_interval: int = spec_field(1, lo=1, doc="PBT/PB2: epochs between exploit/explore steps")
    quantile_fraction: float = spec_field(0.25, lo=0.0, hi=0.5, lo_open=True, doc="PBT: bottom fraction that clones the top")
    pbt_synch: bool = spec_field(True, doc="PBT/PB2: synchronous (every member reaches a perturbation point before "
                                           "any exploits: decisions fixed by the spec and sampler_seed); false: Ray's "
                                           "asynchronous default")
    resample_probability: float = spec_field(0.25, lo=0.0, hi=1.0, doc="PBT: chance an explore step redraws rho")
    batched: bool = spec_field(False, doc="train the grid's points and seeds as populations in one vectorized pass (erm, sam, asam, samar, lets)")
    selection_seeds: list = spec_field([], doc="seeds rho* is selected on; [] = 1000 + each spec seed. The spec's seeds "
                                              "then train the evaluation runs at rho* (disjoint: nested selection)")
    loggers: list = spec_field([], doc="trackers/callbacks of the search (bookkeeping only): ray: tensorboard, mlflow, "
                                       "wandb, 'module:Class'; optuna: mlflow, 'module:function' (hpo_bench.loggers)")


SCHEDULING_FIELDS = ("workers", "cpus_per_trial", "gpus_per_trial", "address", "storage", "loggers")


@dataclass
class MethodConfig:
    label: str = spec_field("", text="line")
    strategy: str = spec_field("sam")
    rho: Any = spec_field(0.05, doc="perturbation radius, or initial radius rho_0; a list runs one per value")
    params: dict = spec_field({})
    search: dict | None = spec_field(None)
    rho_from: str = spec_field("", text="line", doc="label of an earlier search method: run at its selected rho* (per setting)")
    batched: bool = spec_field(True, doc="without a search: train the method's rho values x seeds as one population "
                                         "(one vectorized pass) when its strategy and model allow; false: one run each")


@dataclass
class ExperimentSpec:
    name: str = spec_field("experiment")
    description: str = spec_field("")
    seeds: list = spec_field([0])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vary: dict = spec_field({})
    methods: list = spec_field([])
    report: bool = spec_field(True, doc="write report.md at the end of `hpo-bench run`")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short content hash of what the spec computes; names the output directory.

        How trials are scheduled, where an engine keeps its own bookkeeping (:data:`SCHEDULING_FIELDS`
        of a search) and how often a run checkpoints itself (``KEEPING_TRAIN_FIELDS``) do not enter
        it: changing them finds the same results and retrains nothing.
        """
        ident = self.to_dict()
        ident["train"] = {k: v for k, v in ident["train"].items() if k not in KEEPING_TRAIN_FIELDS}
        for method in ident["methods"]:
            if method.get("search"):
                method["search"] = {k: v for k, v in method["search"].items() if k not in SCHEDULING_FIELDS}
        return stable_hash(ident)[:8]


# ----------------------------------------------------------------------------- validation

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _validate_rho(where: str, rho) -> list[float]:
    values = rho if isinstance(rho, list) else [rho]
    if not values:
        raise SpecError(f"{where}: empty list; allowed: a positive number or a non-empty list of them")
    out = [check_value(where, v, float, dict(lo=0.0, lo_open=True)) for v in values]
    if len(set(out)) != len(out):
        raise SpecError(f"{where}: duplicate values {out}; allowed: distinct positive numbers")
    return out


def validate_search(raw: dict, where: str) -> SearchConfig:
    search = build_dataclass(SearchConfig, raw, where)
    if search.kind in ("grid", "asha"):
        search.grid = _validate_rho(f"{where}.grid", search.grid)
    if search.kind == "tpe":
        if search.engine == "local":
            raise SpecError(f"{where}.engine: 'local' cannot run kind 'tpe'; allowed: optuna, ray")
        if search.rho_min >= search.rho_max:
            raise SpecError(f"{where}.rho_min: {search.rho_min} must be < rho_max {search.rho_max}")
    if search.pruner != "none":
        if search.engine != "optuna" or search.kind != "grid":
            raise SpecError(f"{where}.pruner: {search.pruner!r} needs engine 'optuna' and kind 'grid' "
                            f"(got {search.engine!r}, {search.kind!r}); allowed with them: none")
        if search.asha_reduction != int(search.asha_reduction) or search.asha_reduction < 2:
            raise SpecError(f"{where}.asha_reduction: {search.asha_reduction} with a pruner; allowed: an integer >= 2")
    if search.kind in ("asha", "pbt", "pb2") and search.engine != "ray":
        raise SpecError(f"{where}.engine: kind {search.kind!r} needs engine 'ray'; allowed: ray")
    if search.kind in ("pbt", "pb2"):  # initial rho values: search.grid, or n_trials drawn in [rho_min, rho_max]
        search.grid = _validate_rho(f"{where}.grid", search.grid) if search.grid != [] else []
        if len(search.grid or [0] * search.n_trials) < 2 or search.rho_min >= search.rho_max:
            raise SpecError(f"{where}.grid: a population needs >= 2 members (grid values or n_trials) and "
                            f"rho_min < rho_max; allowed: e.g. grid = [0.01, 0.05, 0.1, 0.2]")
    if search.kind == "sweep" and search.grid != []:
        raise SpecError(f"{where}.grid: a sweep runs the method's rho values; allowed: no grid (set methods[].rho)")
    if search.kind == "tpe" and search.grid != []:
        raise SpecError(f"{where}.grid: kind 'tpe' draws rho from [rho_min, rho_max]; allowed: no grid")
    if search.batched and (search.kind != "grid" or search.engine != "local"):
        raise SpecError(f"{where}.batched: only for kind 'grid' with engine 'local'; allowed: false")
    if search.storage:
        validate_storage_url(search.storage, f"{where}.storage")
    _check_address(search.address, f"{where}.address")
    search.loggers = validate_loggers(search.loggers, search.engine, f"{where}.loggers")
    return search


def _check_address(address: str, where: str) -> None:
    """A Ray address must be '' / 'auto' / 'local' or ``[ray://]HOST:PORT`` (reachability is the engine's check)."""
    if address in ("", "auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not (sep and host.strip("[]") and host.isprintable() and " " not in host
            and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise SpecError(f"{where}: {_short(address)} is not HOST:PORT; allowed: '' (start a local Ray), 'auto' "
                        "or HOST:PORT of a running Ray head node")


def validate_spec(raw: dict) -> ExperimentSpec:
    """Turn a parsed TOML dict into a validated :class:`ExperimentSpec` (raises SpecError)."""
    raw = copy.deepcopy(raw)
    top = {k: v for k, v in raw.items() if k not in _SECTIONS}
    spec = build_dataclass(ExperimentSpec, top, "")
    for name, cls in _SECTIONS.items():
        setattr(spec, name, build_dataclass(cls, raw.get(name, {}), name))
    _check_model("model.name", spec.model.name)
    if not NAME_PATTERN.fullmatch(spec.name):
        raise SpecError(f"name: {_short(spec.name)} cannot name an output folder; allowed: 1-80 letters, digits, "
                        "'.', '_' or '-', starting with a letter or digit")
    if not isinstance(spec.seeds, list) or not spec.seeds:
        raise SpecError("seeds: expected a non-empty list of non-negative integers")
    for i, s in enumerate(spec.seeds):
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= INT_MAX:
            raise SpecError(f"seeds[{i}]: {_short(s)} is not allowed; allowed: integers in [0, {INT_MAX}]")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise SpecError(f"seeds: duplicate values {spec.seeds}; allowed: distinct integers")
    _validate_vary(spec)
    if not isinstance(spec.methods, list) or not spec.methods:
        raise SpecError("methods: expected at least one [[methods]] table")
    methods, labels = [], set()
    for i, m in enumerate(spec.methods):
        where = f"methods[{i}]"
        mc = build_dataclass(MethodConfig, m, where)
        if mc.strategy not in list_strategies():
            raise SpecError(f"{where}.strategy: unknown strategy {mc.strategy!r}; allowed: {', '.join(list_strategies())}")
        mc.label = mc.label or mc.strategy
        if mc.label in labels:
            raise SpecError(f"{where}.label: duplicate label {mc.label!r}; allowed: a label unique within the spec")
        labels.add(mc.label)
        rhos = _validate_rho(f"{where}.rho", mc.rho)
        mc.rho = rhos if isinstance(mc.rho, list) else rhos[0]
        cls = get_strategy_class(mc.strategy)
        mc.params = dataclasses.asdict(build_dataclass(cls.Params, mc.params, f"{where}.params"))
        cls.validate_params(cls.Params(**mc.params), f"{where}.params")
        if mc.rho_from:
            searched = [m.label for m in methods if m.search is not None and m.search["kind"] != "sweep"]
            if mc.rho_from not in searched:
                raise SpecError(f"{where}.rho_from: {mc.rho_from!r} is not an earlier search method; allowed: "
                                f"{', '.join(map(repr, searched)) or 'none (add a [methods.search] method before it)'}")
            if mc.search is not None or isinstance(mc.rho, list):
                raise SpecError(f"{where}.rho_from: cannot be combined with a search or a rho list; allowed: one of them")
        if mc.search is not None:
            search = validate_search(mc.search, f"{where}.search")
            if isinstance(mc.rho, list) and search.kind != "sweep":
                raise SpecError(f"{where}.rho: a list of rho values cannot be combined with a search; allowed: one number")
            mc.search = dataclasses.asdict(search)
            if search.kind != "sweep":
                _check_selection_seeds(spec.seeds, search.selection_seeds, f"{where}.search.selection_seeds")
        methods.append(mc)
    spec.methods = methods
    return spec


SELECTION_SEED_OFFSET = 1000  # default selection seeds: 1000 + each spec seed


def selection_seeds(seeds: list, search: dict) -> list[int]:
    """The seeds a search selects ρ* on: ``search.selection_seeds``, or 1000 + each of ``seeds``."""
    return list(search.get("selection_seeds") or [SELECTION_SEED_OFFSET + s for s in seeds])


def _check_selection_seeds(seeds: list, given: list, where: str) -> None:
    chosen = selection_seeds(seeds, {"selection_seeds": given})
    if not isinstance(given, list):
        raise SpecError(f"{where}: expected a list of integers, got {_short(given)}")
    for i, s in enumerate(chosen):
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= INT_MAX:
            raise SpecError(f"{where}[{i}]: {_short(s)} is not allowed; allowed: integers in [0, {INT_MAX}]")
    if len(set(chosen)) != len(chosen):
        raise SpecError(f"{where}: duplicate values {_short(chosen)}; allowed: distinct integers")
    shared = sorted(set(chosen) & set(seeds))
    if shared:
        raise SpecError(f"{where}: {_short(shared)} {'are' if len(shared) > 1 else 'is'} also evaluation seed(s) "
                        f"(seeds); allowed: integers disjoint from seeds{' (set them explicitly)' if not given else ''}")


def _validate_vary(spec: ExperimentSpec):
    if not isinstance(spec.vary, dict):
        raise SpecError("vary: expected a table of dotted field -> list of values")
    for key, values in spec.vary.items():
        section, _, name = key.partition(".")
        fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])} if section in _SECTIONS else {}
        if name not in fields:
            raise SpecError(f"vary.{_key(key)}: unknown field; allowed: data.*, model.*, train.* fields")
        if not isinstance(values, list) or not values:
            raise SpecError(f"vary.{key}: expected a non-empty list of values, got {_short(values)}")
        # each value must be valid for the field; store it coerced (an integer field gets ints)
        tp = typing.get_type_hints(_SECTIONS[section])[name]
        values = [check_value(f"vary.{key}[{i}]", v, tp, fields[name].metadata) for i, v in enumerate(values)]
        if key == "model.name":
            for i, v in enumerate(values):
                _check_model(f"vary.{key}[{i}]", v)
        if len(set(map(repr, values))) != len(values):
            raise SpecError(f"vary.{key}: duplicate values {_short(values)}; allowed: distinct values")
        spec.vary[key] = values


def _check_model(where: str, name: str) -> None:
    if name not in list_models():
        raise SpecError(f"{where}: unknown model {_short(name)}; allowed: {', '.join(list_models())}")


def settings(spec: ExperimentSpec) -> list[tuple[dict, ExperimentSpec]]:
    """Expand ``spec.vary`` into (varied values, resolved spec) pairs; one pair when nothing varies."""
    if not spec.vary:
        return [({}, spec)]
    keys = list(spec.vary)
    out = []
    for combo in itertools.product(*(spec.vary[k] for k in keys)):
        s = copy.deepcopy(spec)
        for key, value in zip(keys, combo):
            section, _, name = key.partition(".")
            setattr(getattr(s, section), name, value)
        out.append((dict(zip(keys, combo)), s))
    return out


# ----------------------------------------------------------------------------- loading

def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value in TOML syntax; bare words are strings)."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected key=value, e.g. train.epochs=5")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")) or not key.isprintable():
        raise SpecError(f"--set {_short(text)}: expected a dotted key such as train.epochs")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    except RecursionError:
        raise SpecError(f"--set {key}: the value nests too deeply; allowed: a TOML value such as 5, 0.1, [1, 2]") from None
    except ValueError:  # an integer literal beyond sys.get_int_max_str_digits()
        raise SpecError(f"--set {key}: {_short(value)} has too many digits; allowed: a TOML value such as 5, 0.1") from None
    return key.split("."), parsed


def _index(part: str, node: list, where: str) -> int:
    """``part`` as an index of the list ``node`` (ASCII digits only), else a SpecError naming ``where``."""
    if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
        raise SpecError(f"--set {where}: no such list element; allowed: "
                        + (f"0..{len(node) - 1}" if node else "none (the list is empty)"))
    return int(part)


def apply_override(raw: dict, parts: list[str], value):
    """Set ``raw[parts...] = value``; list indices allowed (``methods.0.rho``). Unknown paths are SpecErrors."""
    node = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
        else:
            if part not in node:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise SpecError(f"--set {where}: is a value, not a table; allowed: a key of a table, e.g. train.epochs")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, ".".join(parts))] = value
    else:
        node[last] = value


def load_spec(path: str | Path, overrides: list[str] = ()) -> ExperimentSpec:
    """Read a TOML spec, apply ``--set`` overrides, validate. Raises SpecError (one line)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec: file {str(path)!r} not found; allowed: a path to a .toml spec (see experiments/)")
    if path.suffix != ".toml":
        raise SpecError(f"spec: {str(path)!r} has suffix {path.suffix!r}; allowed: .toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"spec: malformed TOML in {str(path)!r}: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise SpecError(f"spec: {str(path)!r} nests tables or arrays too deeply; allowed: a spec like experiments/*.toml") from None
    except OSError as err:
        raise SpecError(f"spec: cannot read {str(path)!r} ({err.strerror}); allowed: a readable .toml file") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec: {str(path)!r} is not UTF-8 text; allowed: a TOML file") from None
    except ValueError:  # an integer literal beyond sys.get_int_max_str_digits()
        raise SpecError(f"spec: {str(path)!r} holds a number with too many digits; allowed: "
                        f"integers with |value| <= {INT_MAX}") from None
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
    return validate_spec(raw)
