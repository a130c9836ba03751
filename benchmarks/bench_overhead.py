"""Trainer overheads against their pass-count limits, measured side by side in one run.

Prints, for the MNIST-1D CNN on this machine (CPU unless --device cuda):
  * trainer ERM epoch / minimal hand-written loop  (target <= 1.05-1.10, limit 1.0)
  * SAM step / ERM step                           (target <= 2.05-2.10, limit 2.0)
  * LETS step / SAM step (target <= 2.05), its 3-pass reuse variant / SAM (target <= 1.55), AE-SAM / SAM
    (compare with (1 + fraction of SAM steps)/2, printed from the AE-SAM run itself)

Method: the contenders run interleaved (A B A B ...) ``--repeats`` times on identical data and
initial weights; each timing covers ``--epochs`` training epochs (no evaluation); the median
is reported. Usage: ``python benchmarks/bench_overhead.py [--epochs 3] [--repeats 5]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from hpo_bench.config import DataConfig, TrainConfig
from hpo_bench.data import load_data
from hpo_bench.models import create_model
from hpo_bench.trainer import StepContext, Trainer, lr_at
from searchers import create_strategy


def train_cfg(epochs: int, device: str) -> SimpleNamespace:
    cfg = dict(vars(TrainConfig()))
    cfg.update(epochs=epochs, device=device, batch_size=100)
    return SimpleNamespace(**cfg)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


SUMMARIES: dict[str, dict] = {}  # the strategy summary of the last timed run of each contender


def parse_contender(text: str) -> tuple[str, dict]:
    """'lets-sam:reuse_next_grad=true,beta=0.01' -> ('lets-sam', {...}) (values in TOML syntax)."""
    import tomllib

    name, _, rest = text.partition(":")
    params = tomllib.loads("\n".join(rest.split(","))) if rest else {}
    return name, params


def time_trainer(data, strategy: str, params: dict | None, rho: float, epochs: int, device) -> float:
    """Seconds for ``epochs`` epochs of the trainer's own epoch loop (``Trainer.train_epoch``; no evaluation)."""
    tr = Trainer(data, "mnist1d_cnn", train_cfg(epochs, device.type), create_strategy(strategy, rho, params), 0, device)
    tr.strategy.setup(tr)
    ctx, traces = StepContext(tr), []
    sync(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        tr.train_epoch(ctx, epoch, traces)
    sync(device)
    SUMMARIES[strategy if not params else f"{strategy}:{params}"] = tr.strategy.summary()
    return time.perf_counter() - t0


def time_hand_loop(data, epochs: int, device) -> float:
    """The minimal PyTorch loop: same model, data, SGD(momentum, wd), cosine lr, batch 100."""
    torch.manual_seed(0)
    model = create_model("mnist1d_cnn", data.num_classes, data.input_shape).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = data.train_x, data.train_y
    n = len(y_all)
    steps = (n + 99) // 100
    total = steps * epochs
    gen = torch.Generator().manual_seed(0)
    step = 0
    sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for b in range(steps):
            idx = perm[b * 100:(b + 1) * 100]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, 0.1, "cosine")
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
            step += 1
    sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--vs-sam", nargs="*", default=["lets-sam", "lets-sam:reuse_next_grad=true", "ae-sam"],
                    help="strategies timed against SAM, NAME[:key=value,...]")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    data = load_data(DataConfig()).to(device)
    contenders = {"hand": lambda: time_hand_loop(data, args.epochs, device),
                  "erm": lambda: time_trainer(data, "erm", None, 0.05, args.epochs, device),
                  "sam": lambda: time_trainer(data, "sam", None, 0.05, args.epochs, device)}
    for name in args.vs_sam:
        contenders[name] = (lambda n=name: time_trainer(data, *parse_contender(n), 0.05, args.epochs, device))
    for fn in contenders.values():  # warm-up
        fn()
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for k, fn in contenders.items():
            times[k].append(fn())
    med = {k: statistics.median(v) for k, v in times.items()}
    steps = ((len(data.train_y) + 99) // 100) * args.epochs
    print(f"# MNIST-1D CNN, batch 100, {args.epochs} epochs = {steps} steps, {args.repeats} interleaved repeats, "
          f"device={device.type}, torch threads={torch.get_num_threads()}, torch {torch.__version__}")
    for k, v in med.items():
        print(f"{k:<12} median {v:7.3f} s   ({1000 * v / steps:6.2f} ms/step)")
    print(f"ratio trainer-ERM / hand loop : {med['erm'] / med['hand']:.3f}   (target <= 1.05; limit 1.0)")
    print(f"ratio SAM / ERM step           : {med['sam'] / med['erm']:.3f}   (target <= 2.05; limit 2.0)")
    frac = SUMMARIES.get("ae-sam", {}).get("sam_fraction")
    if frac is not None:
        print(f"AE-SAM fraction of SAM steps: {frac:.3f} -> expected AE-SAM/SAM = (1 + f)/2 = {(1 + frac) / 2:.3f}")
    targets = {"lets-sam": "target <= 2.05; limit 2.0 (4 vs 2 passes)",
               "lets-sam:reuse_next_grad=true": "target <= 1.55; limit 1.5 (3 vs 2 passes)"}
    for name in args.vs_sam:
        print(f"ratio {name} / SAM step: {med[name] / med['sam']:.3f}   ({targets.get(name, 'see RESULTS.md')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
