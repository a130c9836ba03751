"""Every shipped experiment spec validates (names, strategies, params, searches)."""
from __future__ import annotations

import pytest

from hpo_bench.config import load_spec
from tests.conftest import ROOT

SPECS = sorted((ROOT / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_validates(path):
    spec = load_spec(path)
    assert spec.methods and spec.seeds
    assert spec.name == path.stem


def test_quick_spec_covers_every_strategy_family():
    spec = load_spec(ROOT / "experiments" / "quick.toml")
    strategies = {m.strategy for m in spec.methods}
    assert {"erm", "sam", "asam", "lets-sam", "lets-asam", "hypergrad-sam", "ae-sam", "samar"} <= strategies
    engines = {(m.search or {}).get("engine") for m in spec.methods if m.search}
    kinds = {(m.search or {}).get("kind") for m in spec.methods if m.search}
    assert {"optuna", "ray"} <= engines and {"grid", "tpe"} <= kinds
    assert len(spec.seeds) >= 2 and spec.model.name == "mnist1d_cnn" and spec.data.dataset == "mnist1d"
