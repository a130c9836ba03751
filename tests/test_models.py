"""Model registry: every model's forward shape, list_models, errors, reference CNN size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torch.func import stack_module_state

from hpo_bench.models import create_model, list_models, stacked_forward

SHAPES = {"linear": (40,), "tiny_bn": (6,), "mnist1d_mlp": (40,), "mnist1d_cnn": (40,),
          "resnet18": (3, 32, 32), "wrn28_10": (3, 32, 32), "fmnist_cnn": (1, 28, 28), "fmnist_resnet": (1, 28, 28)}


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


def reference_cnn_forward(model, x):
    """The MNIST-1D CNN through F.conv1d / F.linear on its parameters (the reference ConvBase forward)."""
    h = x.unsqueeze(1)
    for conv in (model.conv1, model.conv2, model.conv3):
        h = torch.relu(F.conv1d(h, conv.weight, conv.bias, conv.stride, conv.padding))
    return F.linear(h.flatten(1), model.linear.weight, model.linear.bias)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_mnist1d_cnn_matmul_forward_equals_conv1d_and_its_gradients(dtype, tol):
    torch.manual_seed(0)
    model = create_model("mnist1d_cnn", 10, (40,)).to(dtype)
    x, y = torch.randn(16, 40, dtype=dtype), torch.randint(0, 10, (16,))
    out, ref = model(x), reference_cnn_forward(model, x)
    assert torch.allclose(out, ref, atol=tol, rtol=0)
    params = list(model.parameters())
    g = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), params, create_graph=True)
    g_ref = torch.autograd.grad(torch.nn.functional.cross_entropy(ref, y), params, create_graph=True)
    assert all(torch.allclose(a, b, atol=tol, rtol=0) for a, b in zip(g, g_ref))
    # second order (the exact hypergradient differentiates through gradients): Hessian-vector products
    v = [torch.randn_like(p) for p in params]
    hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params)
    hv_ref = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g_ref, v)), params)
    assert all(torch.allclose(a, b, atol=10 * tol, rtol=0) for a, b in zip(hv, hv_ref))


def test_stacked_forward_runs_p_different_models_at_once():
    torch.manual_seed(0)
    models = [create_model("mnist1d_cnn", 10, (40,)).double() for _ in range(3)]
    stacked, _ = stack_module_state(models)
    x = torch.randn(8, 40, dtype=torch.float64)
    out = stacked_forward("mnist1d_cnn")(stacked, x)
    assert out.shape == (3, 8, 10)
    for p, model in enumerate(models):
        assert torch.allclose(out[p], reference_cnn_forward(model, x), atol=1e-13, rtol=0)
    assert stacked_forward("mnist1d_mlp") is None
