"""Model registry: every model's forward shape, list_models, errors, reference CNN size."""
from __future__ import annotations

import pytest
import torch

from hpo_bench.models import create_model, list_models

SHAPES = {"linear": (40,), "tiny_bn": (6,), "mnist1d_mlp": (40,), "mnist1d_cnn": (40,),
          "resnet18": (3, 32, 32), "wrn28_10": (3, 32, 32)}


def test_registry_lists_all_models():
    assert set(SHAPES) <= set(list_models())


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_forward_shape(name):
    shape = SHAPES[name]
    model = create_model(name, 10, shape)
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 10)


def test_mnist1d_cnn_matches_reference_layout():
    model = create_model("mnist1d_cnn", 10, (40,))
    expected = (1 * 25 * 5 + 25) + (25 * 25 * 3 + 25) * 2 + (125 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)


def test_unknown_model():
    with pytest.raises(ValueError, match=r"^model\.name: unknown model 'vgg'"):
        create_model("vgg", 10, (40,))
