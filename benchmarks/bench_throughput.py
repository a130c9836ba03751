"""SAM training throughput (images/s) of the trainer against a bare PyTorch SAM loop, side by side.

Issue 8's GPU target: CIFAR-10 ResNet-18 SAM throughput through the trainer ≥ 0.9 × a bare loop
on the same GPU, recorded with the device name. Both contenders train the same model from the
same weights on the same data held on the device, with the same per-step work:

* random crop + flip (``hpo_bench.data.random_crop_flip``) and normalization of each batch;
* on CUDA: bf16 autocast and channels_last (the trainer's ``train.amp``); on CPU: float32;
* SAM (Foret et al. 2021, Alg. 1): g = ∇L(θ), ε = ρ g/‖g‖, ĝ = ∇L(θ + ε) with BatchNorm running
  statistics frozen in the second pass, θ restored, then SGD (momentum 0.9, weight decay 5e-4).

The bare loop is what a user would write (``loss.backward()`` into ``.grad``, the SAM class
pattern with ``torch.no_grad`` in-place adds), with no ledger, no strategy hooks, no divergence
check and no learning-rate schedule. Each contender trains one epoch of ``--steps`` steps per
round, in turn, for ``--rounds`` rounds after one warm-up epoch; the median of the within-round
ratios is printed. Images are random uint8 tensors of CIFAR-10's shape (throughput does not
depend on their content) unless ``--data-root`` names a CIFAR-10 folder.
Usage: ``python benchmarks/bench_throughput.py [--device cuda] [--batch 128] [--steps 40] [--rounds 5]``
(on a CPU, something like ``--batch 16 --steps 3 --rounds 2`` finishes in about a minute).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

from bench_overhead import sync, timed, trainer_epochs
from hpo_bench.config import DataConfig
from hpo_bench.data import CIFAR_STATS, DataBundle, load_data, random_crop_flip
from hpo_bench.models import create_model
from hpo_bench.perturbation import frozen_bn_stats, global_norm
from hpo_bench.trainer import resolve_device

RHO = 0.05


def synthetic_cifar(n: int) -> DataBundle:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=gen)
    m, s = CIFAR_STATS["cifar10"]
    return DataBundle(train_x=x, train_y=y, val_x=x[:0], val_y=y[:0], test_x=x[:0], test_y=y[:0], clean_train_y=y,
                      num_classes=10, input_shape=(3, 32, 32), augment=random_crop_flip,
                      mean=torch.tensor(m).view(1, 3, 1, 1), std=torch.tensor(s).view(1, 3, 1, 1))


def bare_sam_epochs(data: DataBundle, model_name: str, batch: int, device: torch.device, amp: bool):
    """The same SAM epoch written as a bare loop (see the module docstring)."""
    torch.manual_seed(0)
    model = create_model(model_name, data.num_classes, data.input_shape).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    data = data.to(device)
    n = len(data.train_y)
    gen, aug_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def loss_of(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return F.cross_entropy(model(x).float(), y)

    def run():
        perm = torch.randperm(n, generator=gen).to(device)
        for b in range(n // batch):
            idx = perm[b * batch:(b + 1) * batch]
            x = data.normalize(random_crop_flip(data.train_x[idx], aug_gen))
            if amp:
                x = x.contiguous(memory_format=torch.channels_last)
            y = data.train_y[idx]
            opt.zero_grad(set_to_none=True)
            loss_of(x, y).backward()
            with torch.no_grad():
                grads = [p.grad for p in params]
                eps = torch._foreach_mul(grads, RHO / (global_norm(grads) + 1e-12))
                torch._foreach_add_(params, eps)
            opt.zero_grad(set_to_none=True)
            with frozen_bn_stats(model):
                loss_of(x, y).backward()
            with torch.no_grad():
                torch._foreach_sub_(params, eps)
            opt.step()
        sync(device)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=40, help="steps per timed epoch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data-root", default=None, help="a CIFAR-10 folder (default: random images of its shape)")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    n = args.batch * args.steps
    if args.data_root:
        full = load_data(DataConfig(dataset="cifar10", data_root=args.data_root, val_fraction=0.0))
        data = DataBundle(**{**vars(full), "train_x": full.train_x[:n], "train_y": full.train_y[:n],
                             "clean_train_y": full.clean_train_y[:n]})
    else:
        data = synthetic_cifar(n)
    amp = device.type == "cuda"
    contenders = {"trainer": trainer_epochs(data, "sam", None, RHO, 1000, device, args.model, args.batch),
                  "bare": bare_sam_epochs(data, args.model, args.batch, device, amp)}
    for fn in contenders.values():
        fn()  # warm-up epoch (cuDNN autotuning, allocator)
    rounds = [{name: timed(fn)[0] for name, fn in contenders.items()} for _ in range(args.rounds)]
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {args.model} SAM, batch {args.batch}, {args.steps} steps per epoch, {args.rounds} interleaved rounds, "
          f"device: {name}, amp (bf16 + channels_last): {amp}, torch {torch.__version__}")
    for k in contenders:
        t = statistics.median(r[k] for r in rounds)
        print(f"{k:<8} median epoch {t:8.3f} s   {n / t:10.1f} images/s")
    ratio = statistics.median(r["bare"] / r["trainer"] for r in rounds)
    print(f"throughput trainer / bare loop: {ratio:.3f}   (median of the rounds' ratios; target >= 0.9 on a GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
