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
