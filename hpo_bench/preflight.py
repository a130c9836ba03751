"""Checks that need the data or the machine, run after the spec validates and before anything is written.

:func:`hpo_bench.config.load_spec` checks each field and the spec's own cross-field rules; these
checks look at what a setting will meet when it runs: its data (loaded and cached, so the runs
reuse it), the split sizes, the model's fit to the data, the device. Each failure is one
:class:`~hpo_bench.errors.SpecError` line naming the field and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from hpo_bench.config import ExperimentSpec, settings
from hpo_bench.errors import SpecError
from hpo_bench.execute import data_for
from hpo_bench.loggers import check_loggers
from hpo_bench.models import create_model
from hpo_bench.storage_url import is_rdb_url, redact
from hpo_bench.strategy import get_strategy_class

SELECTING_KINDS = ("grid", "tpe", "asha")  # searches that select ρ* on the validation split


def _where(setting: dict) -> str:
    return "" if not setting else " (setting " + ", ".join(f"{k}={v}" for k, v in setting.items()) + ")"


def _needs_validation(method) -> str:
    """Why ``method`` needs a non-empty validation split ('' if it does not)."""
    if method.search is not None and method.search["kind"] in SELECTING_KINDS:
        return f"method {method.label!r} selects rho on it"
    cls = get_strategy_class(method.strategy)
    if cls.uses_validation_split(cls.Params(**method.params)):
        return f"method {method.label!r} draws validation batches from it"
    return ""


def preflight(spec: ExperimentSpec) -> None:
    """Raise SpecError unless every setting of ``spec`` can run on this machine with its data."""
    for i, method in enumerate(spec.methods):
        if method.search is not None:
            _check_search(method.search, f"methods[{i}].search")
    for setting, sspec in settings(spec):
        where = _where(setting)
        if sspec.train.device == "cuda" and not torch.cuda.is_available():
            raise SpecError(f"train.device: 'cuda' requested{where} but no CUDA GPU is available; allowed: auto, cpu")
        data = data_for(dataclasses.asdict(sspec.data))
        if len(data.train_y) == 0:
            raise SpecError(f"data.val_fraction: {sspec.data.val_fraction} leaves no training examples{where}; "
                            "allowed: a smaller val_fraction or more data.num_samples")
        if len(data.val_y) == 0:
            reasons = [r for r in map(_needs_validation, sspec.methods) if r]
            if reasons:
                raise SpecError(f"data.val_fraction: the validation split is empty{where} but {reasons[0]}; "
                                "allowed: val_fraction > 0 (e.g. 0.1)")
        _check_model_fits(sspec, data, where)


def _check_model_fits(sspec: ExperimentSpec, data, where: str) -> None:
    """One forward pass of the model on two training inputs; a shape mismatch is a SpecError."""
    model = create_model(sspec.model.name, data.num_classes, data.input_shape)
    x = data.normalize(data.train_x[:2]).to(torch.float32)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as err:
        raise SpecError(f"model.name: {sspec.model.name!r} does not fit data.dataset {sspec.data.dataset!r}{where} "
                        f"(inputs {tuple(data.input_shape)}: {str(err).splitlines()[0][:120]}); "
                        "allowed: a model for this dataset (hpo-bench list)") from None
    if out.shape != (len(x), data.num_classes):
        raise SpecError(f"model.name: {sspec.model.name!r} gives outputs {tuple(out.shape[1:])} for "
                        f"{data.num_classes} classes of {sspec.data.dataset!r}{where}; allowed: a model for this dataset")


def _check_search(search: dict, where: str) -> None:
    """What a search needs from this machine: a local Ray that can hold one trial, an Optuna file storage
    whose folder can be written, the packages and classes of its loggers. (A remote Ray cluster is checked
    by the engine when it connects.)"""
    check_loggers(search.get("loggers", []), search["engine"], f"{where}.loggers")
    if search["engine"] == "ray" and search["address"] in ("", "local"):
        for name, need, have, what in (("gpus_per_trial", search["gpus_per_trial"], torch.cuda.device_count(), "GPU(s)"),
                                       ("cpus_per_trial", search["cpus_per_trial"], os.cpu_count() or 1, "CPU(s)")):
            if need > have:
                raise SpecError(f"{where}.{name}: {need:g}, but the local Ray has {have} {what}, so a trial would wait "
                                f"forever; allowed: at most {have}")
    url = search["storage"]
    if search["engine"] == "optuna" and url.startswith(("journal:", "sqlite:")):
        path = Path(url[len("journal://"):] if url.startswith("journal:") else url.split(":///", 1)[1])
        folder = path.parent if url.startswith("journal:") else path.parent.absolute()
        while not folder.exists() and folder != folder.parent and url.startswith("journal:"):
            folder = folder.parent  # a journal's folders are created; an SQLite file's folder must exist
        if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise SpecError(f"{where}.storage: {url!r} cannot be created (its folder {str(folder)!r} is missing or not "
                            "writable); allowed: a file in a writable folder")
    if search["engine"] == "optuna" and is_rdb_url(url) and not url.startswith("sqlite"):
        check_database(url, f"{where}.storage")


# ----------------------------------------------------------------------------- database storages

DB_CONNECT_TIMEOUT_S = 5
DRIVER_HINT = ("allowed: pip install 'hpo-bench[postgres]' (psycopg 3) and a postgresql+psycopg://USER@HOST/DB URL, "
               "or install the driver this URL names")


def check_database(url: str, where: str = "search.storage", timeout: int = DB_CONNECT_TIMEOUT_S) -> None:
    """One-line SpecError (secrets redacted) unless the database of ``url`` has its Python driver installed
    and accepts a connection within ``timeout`` seconds. Nothing is created in the database."""
    import sqlalchemy
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    shown = repr(redact(url))
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except Exception as err:  # ArgumentError, NoSuchModuleError (an unknown '+driver')
        raise SpecError(f"{where}: {shown} is not a URL SQLAlchemy can use ({redact(str(err).splitlines()[0])[:120]}); "
                        f"{DRIVER_HINT}") from None
    try:
        (dialect.import_dbapi if hasattr(dialect, "import_dbapi") else dialect.dbapi)()
    except ImportError as err:
        module = getattr(err, "name", None) or str(err)
        raise SpecError(f"{where}: {shown} needs the database driver {module!r} ({parsed.get_backend_name()}"
                        f"+{parsed.get_driver_name()}), which is not installed; {DRIVER_HINT}") from None
    args = {"connect_timeout": timeout} if parsed.get_backend_name() in ("postgresql", "mysql", "mariadb") else {}
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as err:
        cause = getattr(err, "orig", None) or err
        reason = " ".join(str(cause).split())[:160] or type(cause).__name__
        raise SpecError(f"{where}: cannot connect to {shown} within {timeout} s ({redact(reason)}); allowed: the URL "
                        "of a running database server that this machine can reach") from None
    finally:
        engine.dispose()
