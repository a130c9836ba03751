"""Mid-run checkpoints: a killed run resumes with the same bits, for every registered strategy.

* every strategy (and the variants whose state crosses an epoch boundary), killed at random epochs
  (an exception from ``on_epoch``, up to twice), resumed through ``execute_trial``: the same row
  (metrics, ledger counts, strategy summary; wall/device seconds and memory excepted) and curves as
  the uninterrupted run;
* a real SIGKILL of ``python -m hpo_bench.cli run`` after its first checkpoint, then the same command;
* checkpoints removed at the end unless ``keep_checkpoints``; a damaged, foreign or ill-fitting
  checkpoint set aside with one line and the run started over; a failed write is one line;
* the run id ignores the checkpoint fields; runs that checkpoint are never trained as a population;
* the generic :meth:`Strategy.state_dict`: references, sharing, what it refuses.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from hpo_bench import checkpoint as checkpoint_mod
from hpo_bench.checkpoint import Checkpointer
from hpo_bench.config import validate_spec
from hpo_bench.execute import execute_trial
from hpo_bench.population import can_train_together
from hpo_bench.store import ResultsStore
from hpo_bench.strategy import Strategy, capture_state, create_strategy, list_strategies, restore_state
from hpo_bench.trainer import Trainer
from hpo_bench.trial import make_trial
from tests.conftest import ROOT, synthetic_bundle, train_cfg

EPOCHS = 4
VOLATILE = {"wall_s", "device_s", "peak_mem_bytes", "finished_at"}  # the time and memory actually spent
# variants whose state crosses an epoch boundary in ways the defaults do not
VARIANTS = [("lets-sam", {"reuse_next_grad": True, "beta": 0.05}), ("lets-asam", {"gb": "literal", "beta": 0.05}),
            ("samar", {"window": 3}), ("samar", {"ratio": "ratio_ema"}), ("looksam", {"k": 3}),
            ("hypergrad-sam", {"every": 3, "unroll": 2, "beta": 0.05})]


class Killed(Exception):
    """Stands in for a kill between two epochs."""


def _rho(name: str) -> float:
    return 0.5 if "asam" in name else 0.05


def make(strategy: str, params: dict | None = None, model: str = "tiny_bn", **train):
    """A trial on a 500-sample MNIST-1D (400 training samples: 8 steps of 50 per epoch)."""
    raw = {"name": "ck", "seeds": [0], "data": {"num_samples": 500}, "model": {"name": model},
           "train": {"epochs": EPOCHS, "batch_size": 50, "checkpoint_every": 1, "device": "cpu", **train},
           "methods": [{"label": "M", "strategy": strategy, "params": params or {}}]}
    spec = validate_spec(raw)
    return make_trial(spec, spec.methods[0], _rho(strategy), 0, {})


def kill_at(epoch: int):
    def on_epoch(row):
        if row["epoch"] == epoch:
            raise Killed(epoch)
    return on_epoch


def same(a, b) -> bool:
    """Equal bit for bit (NaN equals NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def assert_same_run(store_a: ResultsStore, store_b: ResultsStore, run_id: str) -> None:
    row_a, row_b = store_a.load_row(run_id), store_b.load_row(run_id)
    assert row_a.keys() == row_b.keys()
    for key in row_a.keys() - VOLATILE:
        assert same(row_a[key], row_b[key]), (key, row_a[key], row_b[key])
    curves_a, curves_b = (pd.read_parquet(s.trials / f"{run_id}.parquet") for s in (store_a, store_b))
    keep = lambda c: c[c["metric"] != "wall_s"].reset_index(drop=True)
    pd.testing.assert_frame_equal(keep(curves_a), keep(curves_b), check_exact=True)


def reference(trial, tmp_path) -> ResultsStore:
    store = ResultsStore(tmp_path / "reference")
    execute_trial(dataclasses.replace(trial, train={**trial.train, "checkpoint_every": 0}), store)
    return store


def resume_until_done(trial, store: ResultsStore, kills: list[int]) -> None:
    for epoch in kills:
        with pytest.raises(Killed):
            execute_trial(trial, store, on_epoch=kill_at(epoch))
        assert not store.has(trial.run_id)
        # the trainer saves an epoch's checkpoint before calling on_epoch: the killed epoch's is there
        # (after the last epoch none is written, the row follows: the one before it is there)
        expected = epoch if epoch < trial.train["epochs"] else epoch - 1
        if expected:
            assert torch.load(store.checkpoint_path(trial.run_id), weights_only=True)["epoch"] == expected
    execute_trial(trial, store)


# ----------------------------------------------------------------------------- same bits
@pytest.mark.parametrize("strategy", list_strategies())
def test_every_strategy_resumes_with_the_same_bits(strategy, tmp_path):
    trial = make(strategy)
    kills = sorted(random.Random(strategy).sample(range(1, EPOCHS + 1), 2))  # random, reproducible
    store = ResultsStore(tmp_path / "resumed")
    resume_until_done(trial, store, kills)
    assert_same_run(store, reference(trial, tmp_path), trial.run_id)
    assert not store.checkpoint_path(trial.run_id).exists()  # removed with the row written


@pytest.mark.parametrize("strategy, params", VARIANTS, ids=[f"{s}-{'-'.join(map(str, p))}" for s, p in VARIANTS])
def test_variants_with_state_across_epochs_resume_with_the_same_bits(strategy, params, tmp_path):
    trial = make(strategy, params)
    store = ResultsStore(tmp_path / "resumed")
    resume_until_done(trial, store, [3])
    assert_same_run(store, reference(trial, tmp_path), trial.run_id)


def test_float64_cnn_with_bn_resumes_with_the_same_bits(tmp_path):
    trial = make("sam", model="mnist1d_cnn_bn", dtype="float64", epochs=3)
    store = ResultsStore(tmp_path / "resumed")
    resume_until_done(trial, store, [2])
    assert_same_run(store, reference(trial, tmp_path), trial.run_id)


def test_resumed_run_counts_the_time_before_the_kill(tmp_path):
    trial = make("sam")
    store = ResultsStore(tmp_path)
    with pytest.raises(Killed):
        execute_trial(trial, store, on_epoch=kill_at(3))
    saved = torch.load(store.checkpoint_path(trial.run_id), weights_only=True)
    row = execute_trial(trial, store)
    assert row["wall_s"] >= saved["ledger"]["wall_s"] > 0 and row["device_s"] >= saved["ledger"]["device_s"]
    assert [r["epoch"] for r in saved["epochs"]] == [1, 2, 3] and saved["step"] == 24


# ----------------------------------------------------------------------------- a real kill
SPEC = """
name = "ckpt-kill"
seeds = [0]
report = false
[data]
dataset = "mnist1d"
num_samples = 1000
[model]
name = "mnist1d_cnn"
[train]
epochs = 40
batch_size = 50
threads = 1
checkpoint_every = {every}
[[methods]]
label = "SAM"
strategy = "sam"
rho = 0.05
batched = false
"""


def _cli(spec, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpo_bench.cli", "run", str(spec), "--out", str(out), "--jobs", "1",
                             "--no-progress"], cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_through_the_cli_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
    spec, out = tmp_path / "spec.toml", tmp_path / "runs"
    spec.write_text(SPEC.format(every=1))
    proc = _cli(spec, out)
    deadline = time.time() + 300
    while not list(out.glob("*/checkpoints/*.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint written in time"
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside a later epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run_dir = next(out.glob("ckpt-kill-*"))
    assert not list(run_dir.glob("trials/*.json")), "the run finished before the kill: make it longer"
    killed_at = torch.load(next(run_dir.glob("checkpoints/*.pt")), weights_only=True)["epoch"]
    assert 1 <= killed_at < 40
    rerun = _cli(spec, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert "checkpoint" not in err, err  # resumed: nothing set aside
    assert not list(run_dir.glob("checkpoints/*.pt"))
    ref_spec, ref_out = tmp_path / "ref.toml", tmp_path / "ref"
    ref_spec.write_text(SPEC.format(every=0))  # no checkpoints: another folder, the same run id
    ref = _cli(ref_spec, ref_out)
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    runs, ref_runs = (pd.read_parquet(next(o.glob("*/runs.parquet"))) for o in (out, ref_out))
    assert list(runs["run_id"]) == list(ref_runs["run_id"])
    cols = [c for c in ref_runs.columns if c not in VOLATILE]
    pd.testing.assert_frame_equal(runs[cols], ref_runs[cols], check_exact=True)
    curves, ref_curves = (pd.read_parquet(next(o.glob("*/curves.parquet"))) for o in (out, ref_out))
    keep = lambda c: c[c["metric"] != "wall_s"].reset_index(drop=True)
    pd.testing.assert_frame_equal(keep(curves), keep(ref_curves), check_exact=True)


# ----------------------------------------------------------------------------- keeping and removing
def test_keep_checkpoints_keeps_the_final_state_and_a_rerun_of_it_trains_nothing(tmp_path, monkeypatch):
    trial = make("lets-sam", {"beta": 0.05}, keep_checkpoints=True)
    store = ResultsStore(tmp_path / "kept")
    row = execute_trial(trial, store)
    path = store.checkpoint_path(trial.run_id)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == EPOCHS and state["run_id"] == trial.run_id
    assert math.exp(state["strategy"]["learner"]["attrs"]["nu"]) == row["rho_final"] != _rho("lets-sam")
    for suffix in (".json", ".parquet"):  # the row is lost: the kept final state gives it back untrained
        (store.trials / f"{trial.run_id}{suffix}").unlink()
    steps, original = [], Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, ctx: steps.append(1) or original(self, ctx))
    execute_trial(trial, store)
    assert not steps and path.exists()
    assert_same_run(store, reference(trial, tmp_path), trial.run_id)


def test_checkpoint_every_two_epochs_and_none_after_the_last(tmp_path):
    ckpt = Checkpointer(ResultsStore(tmp_path), "r", every=2)
    assert [ckpt.due(e, 5) for e in range(5)] == [False, True, False, True, False]
    kept = Checkpointer(ResultsStore(tmp_path), "r", every=2, keep=True)
    assert [kept.due(e, 5) for e in range(5)] == [False, True, False, True, True]
    assert not any(Checkpointer(ResultsStore(tmp_path), "r").due(e, 5) for e in range(5))


def test_a_leftover_checkpoint_is_resumed_and_removed_with_checkpoints_off(tmp_path):
    trial = make("ae-sam")
    store = ResultsStore(tmp_path / "resumed")
    with pytest.raises(Killed):
        execute_trial(trial, store, on_epoch=kill_at(3))
    off = dataclasses.replace(trial, train={**trial.train, "checkpoint_every": 0})
    assert off.run_id == trial.run_id
    execute_trial(off, store)
    assert not store.checkpoint_path(trial.run_id).exists()
    assert_same_run(store, reference(trial, tmp_path), trial.run_id)


# ----------------------------------------------------------------------------- damaged checkpoints
def _quarantined(store: ResultsStore) -> list[str]:
    folder = store.checkpoint_path("x").parent / "quarantine"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_run", "old_format", "misfit"])
def test_damaged_checkpoint_is_set_aside_with_one_line_and_the_run_starts_over(damage, tmp_path, caplog):
    trial = make("samar")
    store = ResultsStore(tmp_path / "damaged")
    with pytest.raises(Killed):
        execute_trial(trial, store, on_epoch=kill_at(3))
    path = store.checkpoint_path(trial.run_id)
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        state = torch.load(path, weights_only=True)
        if damage == "other_run":
            state["run_id"] = "0123456789abcdef"
        elif damage == "old_format":
            state["format"] = 0
        else:  # a model that is not this run's
            state["model"] = {k + ".x": v for k, v in state["model"].items()}
        torch.save(state, path)
    steps = []
    with caplog.at_level(logging.WARNING, logger="hpo_bench"):
        execute_trial(trial, store, on_epoch=lambda row: steps.append(row["epoch"]))
    assert steps == list(range(1, EPOCHS + 1))  # started over
    lines = [r.getMessage() for r in caplog.records if "damaged checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "starts over" in lines[0], lines
    assert _quarantined(store) == [path.name] and not path.exists()
    assert_same_run(store, reference(trial, tmp_path), trial.run_id)


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    calls = []

    def full_disk(obj, f, *a, **k):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_mod.torch, "save", full_disk)
    trial = make("sam")
    store = ResultsStore(tmp_path / "full")
    with caplog.at_level(logging.WARNING, logger="hpo_bench"):
        row = execute_trial(trial, store)
    assert row["status"] == "ok" and len(calls) == 1  # no further attempt after the first failure
    lines = [r.getMessage() for r in caplog.records if "checkpoint not written" in r.getMessage()]
    assert len(lines) == 1 and "No space left" in lines[0]
    assert not list(store.checkpoint_path(trial.run_id).parent.glob("*.pt"))
    monkeypatch.undo()
    assert_same_run(store, reference(trial, tmp_path), trial.run_id)


# ----------------------------------------------------------------------------- identity and scheduling
def test_run_id_ignores_the_checkpoint_fields(tmp_path):
    trial = make("sam")
    legacy = dataclasses.replace(trial, train={k: v for k, v in trial.train.items()
                                               if k not in ("checkpoint_every", "keep_checkpoints")})
    for train in ({"checkpoint_every": 0}, {"checkpoint_every": 7}, {"keep_checkpoints": True}):
        assert dataclasses.replace(trial, train={**trial.train, **train}).run_id == legacy.run_id
    assert dataclasses.replace(trial, train={**trial.train, "epochs": 5}).run_id != trial.run_id


def test_runs_that_checkpoint_are_not_trained_as_a_population():
    trials = [make("sam", checkpoint_every=0), dataclasses.replace(make("sam", checkpoint_every=0), seed=1)]
    assert can_train_together(trials)
    with_ckpt = [dataclasses.replace(t, train={**t.train, "checkpoint_every": 1}) for t in trials]
    assert not can_train_together(with_ckpt)


# ----------------------------------------------------------------------------- the generic strategy state
class Holder:
    def __init__(self):
        self.n, self.values = 3, [1.5, None]


class Toy(Strategy):
    name = "toy"

    def perturbation(self, ctx, g):
        return None


def test_generic_state_keeps_references_sharing_and_values():
    tr = Trainer(synthetic_bundle(), "tiny_bn", train_cfg(epochs=1), create_strategy("sam", 0.05), 0)
    toy = Toy(0.1)
    shared = torch.arange(3.0)
    toy.a = toy.b = shared  # one tensor, twice
    toy.holder = Holder()
    toy.pair = (toy.holder, {"k": [shared, 2]})
    toy.trainer, toy.weights = tr, tr.params
    toy.nu = torch.zeros((), requires_grad=True)
    toy.gen = torch.Generator().manual_seed(5)
    refs = {"trainer": tr, "param_list": tr.params}
    state = capture_state(toy.__dict__, {id(v): k for k, v in refs.items()}, {})
    path = f"{os.getpid()}-toy.pt"
    try:
        torch.save(state, path)
        loaded = torch.load(path, weights_only=True)  # plain data only
    finally:
        os.unlink(path)
    new_tr = Trainer(synthetic_bundle(), "tiny_bn", train_cfg(epochs=1), create_strategy("sam", 0.05), 0)
    back = restore_state(loaded, {"trainer": new_tr, "param_list": new_tr.params}, {})
    assert back["trainer"] is new_tr and back["weights"] is new_tr.params
    assert back["a"] is back["b"] and torch.equal(back["a"], shared) and back["pair"][1]["k"][0] is back["a"]
    assert back["pair"][0] is back["holder"] and back["holder"].values == [1.5, None] and back["holder"].n == 3
    assert back["nu"].requires_grad and back["nu"].is_leaf
    assert torch.equal(back["gen"].get_state(), toy.gen.get_state())
    # through the Strategy methods: the strategy's own params stay its own object
    fresh = Toy(0.1)
    fresh.load_state_dict(toy.state_dict(refs), {"trainer": new_tr, "param_list": new_tr.params})
    assert fresh.params is not toy.params and fresh.rho == 0.1 and fresh.trainer is new_tr


def test_generic_state_refuses_what_it_cannot_restore():
    toy = Toy(0.1)
    toy.net = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"Toy.net: a Linear .*override state_dict"):
        toy.state_dict()
    toy = Toy(0.1)
    toy.fn = len
    with pytest.raises(TypeError, match="Toy.fn"):
        toy.state_dict()
