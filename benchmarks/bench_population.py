"""Population training vs one trainer run after another: P SAM models of the MNIST-1D CNNs.

For each model (``mnist1d_cnn``, no BN; ``mnist1d_cnn_bn``, BatchNorm after each convolution) and
each population size P in ``--sizes``, P SAM trials (ρ = 0.05, seeds 0..P−1) are trained twice, side
by side in one process: one trainer run after another (:func:`hpo_bench.execute.run_trial`) and as
one population (:func:`hpo_bench.population.train_population`), for ``--rounds`` rounds whose
order alternates (sequential first, then population first, ...). Printed per P: the median times,
the median of the rounds' ratios (the speed-up curve; target >= 2.5x at P = 8 on 2 threads) and the
largest float32 differences between each member and its separate run (final losses; accuracies,
where one prediction is 1/400 val or 1/1000 test). Then, per model: the memory per member (bytes
autograd keeps for the backward of one training pass, and bytes of weights, momentum and BN
buffers, against one trainer run); as a reference for the float32 parity, the largest difference
between the trainer's own runs of the largest population's trials at 1 and at ``--threads``
threads; and the float64 parity at P = 8.
Usage: ``python benchmarks/bench_population.py [--epochs 1] [--rounds 3] [--sizes 1,2,4,8,16,32]
[--models mnist1d_cnn,mnist1d_cnn_bn] [--threads 2] [--device cpu] [--no-float64]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from hpo_bench.config import validate_spec
from hpo_bench.execute import run_trial, trial_trainer
from hpo_bench.population import Population, train_population
from hpo_bench.trial import make_trial

LOSSES = ["last_train_loss", "last_val_loss", "last_test_loss"]
ACCS = ["best_val_acc", "test_acc", "last_val_acc", "last_test_acc"]


def make_trials(model: str, P: int, epochs: int, device: str, dtype: str = "float32", threads: int = 2):
    """P SAM trials (ρ = 0.05, seeds 0..P−1) at batch 100 with ``train.threads = threads``."""
    spec = validate_spec({"name": "bench", "seeds": [0], "model": {"name": model},
                          "train": {"epochs": epochs, "batch_size": 100, "device": device, "dtype": dtype, "threads": threads},
                          "methods": [{"label": "SAM", "strategy": "sam", "rho": 0.05}]})
    return [make_trial(spec, spec.methods[0], 0.05, seed, {}) for seed in range(P)]


def max_diff(rows_a, rows_b, cols) -> float:
    return max(abs(a[c] - b[c]) for a, b in zip(rows_a, rows_b) for c in cols)


def compare(trials, population_first: bool):
    """(sequential s, population s, max |final loss diff|, max |accuracy diff|, sequential rows) of one round."""
    def sequential():
        return [run_trial(t)[0] for t in trials]

    def population():
        return [row for row, _ in train_population(trials)]

    timed = {}
    for name, fn in (("pop", population), ("seq", sequential)) if population_first else (("seq", sequential), ("pop", population)):
        t0 = time.perf_counter()
        timed[name] = (fn(), time.perf_counter() - t0)
    (seq, t_seq), (pop, t_pop) = timed["seq"], timed["pop"]
    return t_seq, t_pop, max_diff(pop, seq, LOSSES), max_diff(pop, seq, ACCS), seq


def pass_bytes(model: str, P: int, device: str) -> tuple[float, float]:
    """Per member: (bytes autograd keeps for the backward of one training pass, bytes of weights,
    momentum and BN buffers). P = 0: one trainer run (its model on one batch of 100)."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    trials = make_trials(model, max(P, 1), 1, device)
    if P == 0:
        tr = trial_trainer(trials[0])
        x, y = tr._prep(tr.data.train_x[:100], train=True, gen=tr.aug_gen), tr.data.train_y[:100]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            torch.autograd.grad(F.cross_entropy(tr.model(x), y), tr.params)
        state = 2 * sum(p.nbytes for p in tr.params) + sum(b.nbytes for b in tr.model.buffers())
        return sum(saved.values()), state
    pop = Population(trials)
    x, y = pop.train_batch([torch.randperm(pop.n_train) for _ in range(P)], 0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pop.loss_grad(pop.params, x, y, "train")
    state = 2 * sum(p.nbytes for p in pop.params) + sum(b.nbytes for b in pop.buffers.values())
    return sum(saved.values()) / P, state / P


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="side-by-side comparisons per P; the order alternates")
    ap.add_argument("--sizes", default="1,2,4,8,16,32")
    ap.add_argument("--models", default="mnist1d_cnn,mnist1d_cnn_bn")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every run (train.threads)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-float64", action="store_true", help="skip the float64 parity run")
    args = ap.parse_args(argv)
    sizes = sorted(int(p) for p in args.sizes.split(","))
    torch.set_num_threads(args.threads)
    print(f"# SAM populations (rho 0.05, seeds 0..P-1), batch 100, {args.epochs} epoch(s) of 36 steps, device={args.device}, "
          f"torch threads={args.threads}, torch {torch.__version__}, {args.rounds} alternating rounds per P")
    for model in args.models.split(","):
        trials_of = lambda P, **kw: make_trials(model, P, args.epochs, args.device, **{"threads": args.threads, **kw})
        run_trial(trials_of(1)[0])  # warm-up: data, allocator
        train_population(trials_of(2))
        for P in sizes:
            trials = trials_of(P)
            rounds = [compare(trials, population_first=bool(r % 2)) for r in range(args.rounds)]
            t_seq, t_pop = (statistics.median(x[i] for x in rounds) for i in (0, 1))
            ratio = statistics.median(x[0] / x[1] for x in rounds)
            loss_diff, acc_diff = (max(x[i] for x in rounds) for i in (2, 3))
            print(f"[{model}] P={P:>2}: sequential {t_seq:7.2f} s, population {t_pop:6.2f} s, speed-up {ratio:5.2f}x "
                  f"(rounds {', '.join(f'{x[0] / x[1]:.2f}' for x in rounds)}); float32 max |loss diff| {loss_diff:.2e}, "
                  f"|acc diff| {acc_diff:.2e}")
        mem = {P: pass_bytes(model, P, args.device) for P in sorted({0, 8, max(sizes)})}
        print(f"[{model}] memory per member, saved for backward in one pass / weights+momentum+BN buffers: " + ", ".join(
            f"{'one trainer run' if P == 0 else f'P={P}'} {a / 2**10:.0f} / {b / 2**10:.0f} KiB" for P, (a, b) in mem.items()))
        one = [run_trial(t)[0] for t in trials_of(max(sizes), threads=1)]
        torch.set_num_threads(args.threads)
        two = rounds[-1][4]  # the separate runs at P = max(sizes), at args.threads threads
        print(f"[{model}] reference: the same {max(sizes)} trainer runs at 1 vs {args.threads} threads: max |loss diff| "
              f"{max_diff(one, two, LOSSES):.2e}, |acc diff| {max_diff(one, two, ACCS):.2e}")
        if not args.no_float64:
            trials = trials_of(8, dtype="float64")
            pop, seq = [r for r, _ in train_population(trials)], [run_trial(t)[0] for t in trials]
            print(f"[{model}] float64 P=8: max |loss diff| {max_diff(pop, seq, LOSSES):.2e}, |acc diff| {max_diff(pop, seq, ACCS):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
