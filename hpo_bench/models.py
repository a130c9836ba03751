"""Model registry (timm-style): ``@register_model`` factories, ``list_models``, ``create_model``.

A factory takes ``(num_classes, input_shape)`` and returns an ``nn.Module``; the first line of its
docstring is what ``hpo-bench list`` prints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hpo_bench.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and, optionally, a stacked forward for populations."""

    factory: Callable[[int, tuple], nn.Module]
    stacked: Callable[[dict, torch.Tensor], torch.Tensor] | None = None


MODELS: Registry[ModelEntry] = Registry("model", "model.name")


def register_model(name: str, stacked: Callable[[dict, torch.Tensor], torch.Tensor] | None = None):
    """Decorator: register ``factory(num_classes, input_shape) -> nn.Module`` under ``name``.

    ``stacked(params, x) -> (P, B, classes)``, if given, runs P copies of the model at once from
    parameters stacked along a leading dim (``torch.func.stack_module_state`` names); the batched
    grid uses it instead of ``vmap`` over the module. A name registered twice is a ValueError.
    """

    def wrap(factory):
        MODELS.register(name, ModelEntry(factory, stacked))
        return factory

    return wrap


def stacked_forward(name: str) -> Callable[[dict, torch.Tensor], torch.Tensor] | None:
    """The stacked forward registered for model ``name``, or None."""
    return MODELS.get(name).stacked


def list_models() -> list[str]:
    return MODELS.names()


def model_doc(name: str) -> str:
    return (MODELS.get(name).factory.__doc__ or "").strip().splitlines()[0]


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return MODELS.get(name).factory(num_classes, tuple(input_shape))


def _he_init(module: nn.Module) -> nn.Module:
    """He (Kaiming-normal, fan_out) init of conv weights, as in the LETS paper's Table 10."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


# ----------------------------------------------------------------------------- small models
@register_model("linear")
def linear(num_classes, input_shape):
    """Linear classifier (multinomial logistic regression); for tests."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@register_model("tiny_bn")
def tiny_bn(num_classes, input_shape):
    """Tiny MLP with BatchNorm (16 hidden units); for gradient checks."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, num_classes))


@register_model("mnist1d_mlp")
def mnist1d_mlp(num_classes, input_shape):
    """MNIST-1D MLP 40-100-100-10 (reference ~68% test accuracy)."""
    d = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                         nn.Linear(100, num_classes))


CNN_CONVS = {"conv1": (5, 2, 1), "conv2": (3, 2, 1), "conv3": (3, 2, 1)}  # kernel, stride, padding


def conv1d_stacked(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """P stacked ``F.conv1d`` as one batched matmul, length-major layout.

    h: (B, L, C_in) shared by the P models, or (P, B, L, C_in); w: (P, C_out, C_in, k); b: (P, C_out).
    With h zero-padded by ``padding`` on both ends of L, out[p, b, o] = b_p + Σ_j W_p[:, :, j] h[b, o·s + j]:
    the k strided shifts of h are concatenated into (B·L_out, k·C_in) columns and multiplied by W_p
    laid out as (k·C_in, C_out) (``torch.baddbmm``). Returns (P, B, L_out, C_out). Equal to
    ``nn.Conv1d`` up to summation order (tests: 1e-13 in float64, 1e-5 in float32).
    """
    k = w.shape[-1]
    h = F.pad(h, (0, 0, padding, padding))
    n = (h.shape[-2] - k) // stride + 1
    cols = torch.cat([h[..., j: j + stride * (n - 1) + 1: stride, :] for j in range(k)], dim=-1)
    cols = cols.reshape(-1, cols.shape[-3] * n, cols.shape[-1]).expand(w.shape[0], -1, -1)
    wm = w.permute(0, 3, 2, 1).reshape(w.shape[0], -1, w.shape[1])
    return torch.baddbmm(b.unsqueeze(1), cols, wm).view(w.shape[0], -1, n, w.shape[1])


def linear_stacked(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """P stacked ``F.linear``: h (P, B, d_in), w (P, d_out, d_in), b (P, d_out) → (P, B, d_out)."""
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


def _cnn_forward(x: torch.Tensor, conv: Callable, linear: Callable) -> torch.Tensor:
    """The MNIST-1D CNN's layer sequence in the length-major layout; ``conv(name, h)``, ``linear(h)``."""
    h = x.reshape(x.shape[0], -1, 1) if x.dim() == 2 else x.transpose(-1, -2)  # (B, L, C)
    for layer in CNN_CONVS:
        h = torch.relu(conv(layer, h))
    return linear(h.transpose(-1, -2).flatten(-2))  # the (C, L) order nn.Conv1d's output flattens in


def mnist1d_cnn_stacked(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (P, B, classes) of P stacked :class:`MNIST1DCNN` (``params``: state_dict names, leading P dim) on x."""
    def conv(layer, h):
        _, stride, padding = CNN_CONVS[layer]
        return conv1d_stacked(h, params[f"{layer}.weight"], params[f"{layer}.bias"], stride, padding)

    return _cnn_forward(x, conv, lambda h: linear_stacked(h, params["linear.weight"], params["linear.bias"]))


class _Conv1dLengthMajor(nn.Conv1d):
    """``nn.Conv1d`` (same parameters, init, state_dict) on (B, L, C) inputs via :func:`conv1d_stacked`, P = 1."""

    def forward(self, h):
        return conv1d_stacked(h, self.weight[None], self.bias[None], self.stride[0], self.padding[0])[0]


class _LinearStacked(nn.Linear):
    """``nn.Linear`` (same parameters) via :func:`linear_stacked` with P = 1."""

    def forward(self, h):
        return linear_stacked(h[None], self.weight[None], self.bias[None])[0]


class MNIST1DCNN(nn.Module):
    """The MNIST-1D reference CNN (greydanus/mnist1d ``ConvBase``): 3 strided conv1d layers, 25 channels.

    Parameters, init and state_dict are those of three ``nn.Conv1d`` and an ``nn.Linear``; the
    layers compute as :func:`mnist1d_cnn_stacked` does with P = 1 (batched matmuls), so one model
    and a stack of P models (the batched grid) run the same kernels and round the same way. The
    layers are called as submodules, so ``higher`` and ``torch.func`` can substitute their weights.
    """

    def __init__(self, num_classes: int, length: int = 40, channels: int = 25):
        super().__init__()
        n, c_in = length, 1
        for name, (k, stride, padding) in CNN_CONVS.items():
            setattr(self, name, _Conv1dLengthMajor(c_in, channels, k, stride=stride, padding=padding))
            n, c_in = (n + 2 * padding - k) // stride + 1, channels
        self.linear = _LinearStacked(channels * n, num_classes)

    def forward(self, x):
        return _cnn_forward(x, lambda layer, h: getattr(self, layer)(h), self.linear)


@register_model("mnist1d_cnn", stacked=mnist1d_cnn_stacked)
def mnist1d_cnn(num_classes, input_shape):
    """MNIST-1D reference CNN (3 conv1d layers; reference ~94% test accuracy)."""
    return MNIST1DCNN(num_classes, length=input_shape[-1])


class MNIST1DCNNBN(MNIST1DCNN):
    """:class:`MNIST1DCNN` with BatchNorm after each convolution: h ← ReLU(BN(conv(h))).

    BN normalizes each of the 25 channels over batch × length (``nn.BatchNorm1d`` on the (B·L, C)
    rows of the length-major layout, which equals ``nn.BatchNorm1d`` on (B, C, L)).
    """

    def __init__(self, num_classes: int, length: int = 40, channels: int = 25):
        super().__init__(num_classes, length, channels)
        self.bn = nn.ModuleDict({layer: nn.BatchNorm1d(channels) for layer in CNN_CONVS})

    def forward(self, x):
        def conv(layer, h):
            h = getattr(self, layer)(h)
            return self.bn[layer](h.reshape(-1, h.shape[-1])).view_as(h)

        return _cnn_forward(x, conv, self.linear)


@register_model("mnist1d_cnn_bn")
def mnist1d_cnn_bn(num_classes, input_shape):
    """MNIST-1D CNN with BatchNorm after each conv1d (a small BN model for population training)."""
    return MNIST1DCNNBN(num_classes, length=input_shape[-1])


# ----------------------------------------------------------------------------- CIFAR ResNet-18
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (kuangliu/pytorch-cifar layout): 3x3 stem (stride ``stem_stride``, 1 for CIFAR), no
    max-pool; one stage per entry of ``blocks`` (BasicBlocks) and ``widths`` (channels), stride 2 from
    the second stage on."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes=10, in_ch=3, widths=(64, 128, 256, 512), stem_stride=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        layers, c_in = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(c_in, width, 2 if (j == 0 and i > 0) else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet18")
def resnet18(num_classes, input_shape):
    """CIFAR ResNet-18 (3x3 stem, BasicBlock [2,2,2,2], He init)."""
    return _he_init(ResNet((2, 2, 2, 2), num_classes, in_ch=input_shape[0]))


# ----------------------------------------------------------------------------- WideResNet-28-10
class WideBasic(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis 2016)."""

    def __init__(self, c_in, c_out, stride, dropout):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if (stride == 1 and c_in == c_out) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        o = torch.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.dropout(torch.relu(self.bn2(y))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    def __init__(self, depth=28, widen=10, num_classes=10, dropout=0.0, in_ch=3):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False)
        layers, c_in = [], widths[0]
        for i, width in enumerate(widths[1:]):
            for j in range(n):
                layers.append(WideBasic(c_in, width, 2 if (j == 0 and i > 0) else 1, dropout))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.layers(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model("wrn28_10")
def wrn28_10(num_classes, input_shape):
    """WideResNet-28-10 (pre-activation, dropout 0, He init)."""
    return _he_init(WideResNet(28, 10, num_classes, 0.0, in_ch=input_shape[0]))


# ----------------------------------------------------------------------------- Fashion-MNIST (28x28 grey images)
def _image_shape(input_shape: tuple) -> tuple[int, int, int]:
    """(channels, height, width) of an image input; (1, 28, 28) for any other input, which then fails
    in the forward pass (where preflight reports that the model does not fit the data set)."""
    return tuple(input_shape) if len(input_shape) == 3 else (1, 28, 28)


@register_model("fmnist_cnn")
def fmnist_cnn(num_classes, input_shape):
    """Fashion-MNIST CNN, 2 conv3x3 (16, 32) + max-pool, FC 128 (ref. 87.5% test acc ERM, 86.6% SAM 0.05: 10k images, 5 epochs).

    Reference: ``experiments/fashion-mnist-reference.toml``, mean of seeds 0 and 1: ERM 87.53 ± 0.28%, SAM ρ = 0.05
    86.56 ± 1.81% after 5 epochs on a 10 000-image training subset (9000 train / 1000 validation), no
    augmentation, lr 0.1 cosine, batch 100; test set: all 10 000 images. BN-free, so populations
    (``hpo_bench.population``) train it through ``vmap``.
    """
    c, h, w = _image_shape(input_shape)
    return nn.Sequential(nn.Conv2d(c, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * (h // 4) * (w // 4), 128), nn.ReLU(), nn.Linear(128, num_classes))


@register_model("fmnist_resnet")
def fmnist_resnet(num_classes, input_shape):
    """Fashion-MNIST ResNet-8, widths 16/32/64, BatchNorm (ref. 86.7% test acc ERM, 86.2% SAM 0.05: 10k images, 5 epochs).

    A stride-2 3x3 stem (28 → 14 px, a quarter of the stride-1 cost on CPU), then one BasicBlock per
    stage at 14/7/4 px, He init. Reference as for ``fmnist_cnn``: ERM 86.72 ± 0.54%, SAM ρ = 0.05
    86.16 ± 0.18%. BatchNorm2d: population training refuses it; its runs train one by one.
    """
    return _he_init(ResNet((1, 1, 1), num_classes, in_ch=_image_shape(input_shape)[0], widths=(16, 32, 64), stem_stride=2))
