"""Shared fixtures: tiny synthetic data bundles, tiny specs, one Ray instance per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hpo_bench.config import TrainConfig
from hpo_bench.data import DataBundle

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (from /proc) with its program name: pool workers (children of the
    fork server), Ray's and Optuna's own processes included."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                try:
                    out[child] = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    out[child] = "?"
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def synthetic_bundle(n_train=64, n_val=32, n_test=32, dim=6, classes=3, seed=0, dtype=torch.float32) -> DataBundle:
    """A linearly-separable-ish tabular problem, small enough for float64 gradient checks."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, classes, generator=g)

    def split(n):
        x = torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype)
        y = (x.double() @ w.double() + 0.5 * torch.randn(n, classes, generator=g, dtype=torch.float64)).argmax(1)
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(n_val), split(n_test)
    return DataBundle(train_x=xt, train_y=yt, val_x=xv, val_y=yv, test_x=xs, test_y=ys, clean_train_y=yt.clone(),
                      num_classes=classes, input_shape=(dim,), augment=None)


def train_cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, lr=0.1, eval_batch_size=64, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def bundle():
    return synthetic_bundle()


@pytest.fixture(scope="session")
def ray_session():
    """One Ray instance for the whole test session (never local_mode)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
