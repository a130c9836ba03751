"""``search.loggers``: user callbacks see every Ray Tune trial and every told Optuna trial, the run folder is
the same with or without loggers, and a bad value is one line, exit 2, nothing written."""
from __future__ import annotations

import json
import re
import sys

import pytest

from hpo_bench.cli import main
from hpo_bench.config import SearchConfig, validate_spec
from hpo_bench.engines import get_engine
from hpo_bench.store import ResultsStore
from hpo_bench.trial import grid_trials

from conftest import ROOT

DATA_ROOT = str(ROOT / ".cache" / "data")


def raw_spec(engine="ray", loggers=(), grid=(0.02, 0.2)) -> dict:
    return {"name": "loggers", "seeds": [0], "report": False,
            "data": {"dataset": "mnist1d", "num_samples": 500, "data_root": DATA_ROOT},
            "model": {"name": "mnist1d_mlp"},
            "train": {"epochs": 1, "batch_size": 50, "threads": 1, "device": "cpu"},
            "methods": [{"label": "SAM", "strategy": "sam",
                         "search": {"kind": "grid", "engine": engine, "grid": list(grid), "loggers": list(loggers)}}]}


def toml_text(raw: dict) -> str:
    """``raw_spec`` as TOML (JSON strings and lists are TOML values)."""
    method = raw["methods"][0]
    lines = [f"{k} = {json.dumps(v)}" for k, v in raw.items() if not isinstance(v, (dict, list)) or k == "seeds"]
    for section in ("data", "model", "train"):
        lines += [f"[{section}]"] + [f"{k} = {json.dumps(v)}" for k, v in raw[section].items()]
    lines += ["[[methods]]"] + [f"{k} = {json.dumps(v)}" for k, v in method.items() if k != "search"]
    lines += ["[methods.search]"] + [f"{k} = {json.dumps(v)}" for k, v in method["search"].items()]
    return "\n".join(lines) + "\n"


def run_grid(tmp_path, monkeypatch, engine: str, loggers: list) -> tuple[list[str], list]:
    record = tmp_path / "record.txt"
    monkeypatch.setenv("HPO_BENCH_TEST_RECORD", str(record))
    spec = validate_spec(raw_spec(engine, loggers))
    trials = grid_trials(spec, spec.methods[0], {}, f"grid/{engine}")
    store = ResultsStore(tmp_path / "run")
    get_engine(engine, SearchConfig(**spec.methods[0].search), store.root).run_trials(trials, store)
    return record.read_text().splitlines(), trials


def test_a_user_tune_callback_sees_every_trial(tmp_path, monkeypatch, ray_session):
    lines, trials = run_grid(tmp_path, monkeypatch, "ray", ["tensorboard", "helpers_loggers:Recorder"])
    for t in trials:
        assert f"complete {t.run_id}" in lines and f"result {t.run_id}" in lines
    assert sum(line.startswith("complete") for line in lines) == 2
    assert len(list((tmp_path / "run" / "ray").rglob("events.out.tfevents.*"))) == 2  # one per trial


def test_an_optuna_callback_is_called_once_per_told_trial(tmp_path, monkeypatch):
    lines, trials = run_grid(tmp_path, monkeypatch, "optuna", ["helpers_loggers:record_trial"])
    assert sorted(line.split()[-1] for line in lines) == sorted(t.run_id for t in trials)
    assert all(line.split()[2] == "COMPLETE" for line in lines)


def test_an_optuna_callback_sees_each_tpe_point(tmp_path, monkeypatch):
    from hpo_bench.engines import SearchSpace
    from hpo_bench.trial import make_trial

    monkeypatch.setenv("HPO_BENCH_TEST_RECORD", str(tmp_path / "record.txt"))
    raw = raw_spec("optuna", ["helpers_loggers:record_trial"], grid=())
    raw["methods"][0]["search"].update(kind="tpe", n_trials=2)
    spec = validate_spec(raw)
    method, store = spec.methods[0], ResultsStore(tmp_path / "run")
    engine = get_engine("optuna", SearchConfig(**method.search), store.root)
    rows = engine.run_adaptive(lambda rho, seed: make_trial(spec, method, rho, seed, {}, search="tpe/optuna"),
                               SearchSpace(kind="tpe", seeds=(0,), n_trials=2), store)
    lines = (tmp_path / "record.txt").read_text().splitlines()
    assert len(rows) == 2 and [line.split()[:2] for line in lines] == [["trial", "0"], ["trial", "1"]]


def test_loggers_do_not_change_the_run_folder():
    for engine, loggers in (("ray", ["tensorboard", "helpers_loggers:Recorder"]),
                            ("optuna", ["helpers_loggers:record_trial"])):
        assert validate_spec(raw_spec(engine, loggers)).digest() == validate_spec(raw_spec(engine)).digest()


@pytest.mark.parametrize("engine, value, message", [
    ("ray", "nope", r"loggers\[0\]: 'nope' is not allowed; allowed: tensorboard, mlflow, wandb, or 'module:attr'"),
    ("optuna", "tensorboard", r"loggers\[0\]: 'tensorboard' is not allowed; allowed: mlflow, or 'module:attr'"),
    ("local", "tensorboard", r"loggers\[0\]: 'tensorboard' is not allowed; allowed: none \(engine 'local'"),
    ("ray", "no_such_module_xyz:Foo", r"loggers\[0\]: cannot load 'no_such_module_xyz:Foo' \(ModuleNotFoundError"),
    ("ray", "helpers_loggers:Missing", r"loggers\[0\]: cannot load 'helpers_loggers:Missing' \(AttributeError"),
    ("ray", "helpers_loggers:record_trial", r"is of type function, not a ray\.tune\.Callback subclass"),
    ("optuna", "helpers_loggers:NOT_A_CALLBACK", r"is of type int, not a function"),
    ("optuna", "helpers_loggers:Recorder", r"is of type \w+, not a function"),
    ("ray", "tensorboard", r"'tensorboard' needs the Python package 'tensorboardX'.*pip install tensorboardX"),
    ("optuna", "mlflow", r"loggers\[0\]: 'mlflow' needs the Python package"),
])
def test_a_bad_logger_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, engine, value, message):
    if value == "tensorboard" and engine == "ray":
        monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if it were not installed
    if value == "mlflow":
        monkeypatch.setitem(sys.modules, "optuna_integration", None)
    spec = tmp_path / "spec.toml"
    spec.write_text(toml_text(raw_spec(engine, [value])))
    out = tmp_path / "out"
    assert main(["run", str(spec), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "methods[0].search.loggers" in err[0] and re.search(message, err[0]), err
    assert not out.exists()


def test_duplicate_and_non_list_loggers_are_spec_errors():
    from hpo_bench.errors import SpecError

    with pytest.raises(SpecError, match=r"^methods\[0\]\.search\.loggers: duplicate entries"):
        validate_spec(raw_spec("ray", ["tensorboard", "tensorboard"]))
    raw = raw_spec("ray")
    raw["methods"][0]["search"]["loggers"] = "tensorboard"
    with pytest.raises(SpecError, match=r"^methods\[0\]\.search\.loggers: expected a list of strings, got str"):
        validate_spec(raw)
