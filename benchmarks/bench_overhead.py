"""Trainer overheads against their pass-count limits, measured side by side in one run.

Prints, for the MNIST-1D CNN on this machine (CPU unless --device cuda):
  * trainer ERM epoch / minimal hand-written loop  (target <= 1.05-1.10, limit 1.0)
  * SAM step / ERM step                           (target <= 2.05-2.10, limit 2.0)
  * LETS step / SAM step (target <= 2.05), its 3-pass reuse variant / SAM (target <= 1.55), AE-SAM / SAM
    minus (1 + f)/2, f = the fraction of SAM steps in the same epoch (target: within 0.05)

Method: every contender is built once (same data, same initial weights) and trains one epoch
(36 steps, no evaluation) per round, in turn, for ``--rounds`` rounds; the order rotates from round
to round (A B C, B C A, C A B, ...), so no contender always runs right after the same other one.
Each ratio is taken within a round, between epochs that ran a fraction of a second apart, and
the median over rounds is printed, for wall time and for the process's CPU time. On a shared
2-vCPU VM the speed of the machine drifts by tens of percent over seconds; fine interleaving
cancels the drift that whole-run timings (A A A ... B B B) pick up. The default is one torch
thread, as every spec in ``experiments/`` trains; ``--threads 0`` keeps torch's default.
Usage: ``python benchmarks/bench_overhead.py [--rounds 30] [--threads 1] [--per-round]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from hpo_bench.config import DataConfig, TrainConfig
from hpo_bench.data import load_data
from hpo_bench.models import create_model
from hpo_bench.trainer import StepContext, Trainer, lr_at
from hpo_bench.strategy import create_strategy


def train_cfg(epochs: int, device: str, batch_size: int = 100) -> TrainConfig:
    return TrainConfig(epochs=epochs, device=device, batch_size=batch_size)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


SUMMARIES: dict[str, list] = {}  # each contender's strategy summary after each of its epochs


def parse_contender(text: str) -> tuple[str, dict]:
    """'lets-sam:reuse_next_grad=true,beta=0.01' -> ('lets-sam', {...}) (values in TOML syntax)."""
    import tomllib

    name, _, rest = text.partition(":")
    params = tomllib.loads("\n".join(rest.split(","))) if rest else {}
    return name, params


def timed(fn):
    """(wall s, process CPU s) of ``fn()``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def trainer_epochs(data, strategy: str, params: dict | None, rho: float, epochs: int, device,
                   model: str = "mnist1d_cnn", batch_size: int = 100):
    """A function that runs the next epoch of the trainer's own loop (``Trainer.train_epoch``)."""
    tr = Trainer(data, model, train_cfg(epochs, device.type, batch_size), create_strategy(strategy, rho, params), 0, device)
    tr.strategy.setup(tr)
    ctx, traces = StepContext(tr), []
    key = strategy if not params else f"{strategy}:{params}"

    def run():
        tr.train_epoch(ctx, ctx.step // tr.steps_per_epoch, traces)
        sync(device)
        SUMMARIES.setdefault(key, []).append(tr.strategy.summary())

    return run


def hand_loop_epochs(data, epochs: int, device):
    """The minimal PyTorch loop (same model, data, SGD(momentum, wd), cosine lr, batch 100), an epoch a call."""
    torch.manual_seed(0)
    model = create_model("mnist1d_cnn", data.num_classes, data.input_shape).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x_all, y_all = data.train_x, data.train_y
    n = len(y_all)
    steps = (n + 99) // 100
    total = steps * epochs
    gen = torch.Generator().manual_seed(0)
    state = {"step": 0}

    def run():
        step = state["step"]
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
        state["step"] = step
        sync(device)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="epochs per contender, interleaved")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--per-round", action="store_true", help="also print every round's wall times")
    ap.add_argument("--vs-sam", nargs="*", default=["lets-sam", "lets-sam:reuse_next_grad=true", "ae-sam"],
                    help="strategies timed against SAM, NAME[:key=value,...]")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_data(DataConfig()).to(device)
    epochs = args.rounds + 1
    contenders = {"hand": hand_loop_epochs(data, epochs, device),
                  "erm": trainer_epochs(data, "erm", None, 0.05, epochs, device),
                  "sam": trainer_epochs(data, "sam", None, 0.05, epochs, device)}
    for name in args.vs_sam:
        contenders[name] = trainer_epochs(data, *parse_contender(name), 0.05, epochs, device)
    for fn in contenders.values():  # warm-up: the first epoch is not timed
        fn()
    names = list(contenders)
    rounds = []
    for r in range(args.rounds):  # the order rotates each round, so no contender always follows the same one
        order = names[r % len(names):] + names[:r % len(names)]
        rounds.append({k: timed(contenders[k]) for k in order})
    steps = (len(data.train_y) + 99) // 100
    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)

    def ratio(a: str, b: str, clock: int) -> float:
        """Median over rounds of time(a)/time(b) measured in the same round."""
        return statistics.median(r[a][clock] / r[b][clock] for r in rounds)

    def line(label: str, a: str, b: str, note: str) -> None:
        vals = "   ".join(f"{c} {ratio(a, b, i):.3f}" for i, c in enumerate(clocks))
        print(f"ratio {label:<34}: {vals}   ({note})")

    print(f"# MNIST-1D CNN, batch 100, {args.rounds} interleaved rounds of one epoch ({steps} steps) each, "
          f"device={device.type}, torch threads={torch.get_num_threads()}, torch {torch.__version__}")
    for k in contenders:
        w = statistics.median(r[k][0] for r in rounds)
        c = statistics.median(r[k][1] for r in rounds)
        print(f"{k:<30} median epoch: wall {w:6.3f} s ({1000 * w / steps:5.2f} ms/step)   cpu {c:6.3f} s")
    if args.per_round:
        print("round " + " ".join(f"{k[:12]:>12}" for k in contenders))
        for i, r in enumerate(rounds):
            print(f"{i:5d} " + " ".join(f"{1000 * r[k][0] / steps:12.2f}" for k in contenders) + "   ms/step")
    line("trainer-ERM / hand loop", "erm", "hand", "target <= 1.05; limit 1.0")
    line("SAM / ERM step", "sam", "erm", "target <= 2.05; limit 2.0")
    targets = {"lets-sam": "target <= 2.05; limit 2.0 (4 vs 2 passes)",
               "lets-sam:reuse_next_grad=true": "target <= 1.55; limit 1.5 (3 vs 2 passes)"}
    for name in args.vs_sam:
        line(f"{name} / SAM step", name, "sam", targets.get(name, "see below"))
    if "ae-sam" in contenders:
        # fraction of SAM steps within each timed epoch, from the cumulative fractions
        cum = [sm["sam_fraction"] * steps * (e + 1) for e, sm in enumerate(SUMMARIES["ae-sam"])]
        frac = [(b - a) / steps for a, b in zip(cum, cum[1:])]
        for i, c in enumerate(clocks):
            gap = statistics.median(r["ae-sam"][i] / r["sam"][i] - (1 + f) / 2 for r, f in zip(rounds, frac))
            print(f"AE-SAM ({c}): median over rounds of [AE-SAM/SAM - (1 + f)/2] = {gap:+.3f}   (target: within 0.05; "
                  f"f = this round's fraction of SAM steps, median {statistics.median(frac):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
