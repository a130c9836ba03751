"""Batched grid search vs one run after another: an 8-point SAM grid of the MNIST-1D CNN.

Prints the wall time of both, measured side by side in one run (same trials, fresh temporary
stores so nothing is skipped) for ``--rounds`` rounds whose order alternates (sequential first,
then batched first, ...), the median of the rounds' ratios (target >= 2x on CPU), and the largest differences of
the per-rho final losses (target <= 1e-5) and accuracies (a flipped prediction shows as 1/n) between
the two: the vectorized kernels sum in another order, and SGD amplifies last-bit differences.
The same comparison is then repeated with ``train.dtype = "float64"``, where rounding is ~1e-16:
its loss difference shows whether the batched arithmetic is the separate runs' arithmetic.
Usage: ``python benchmarks/bench_batched_grid.py [--epochs 3] [--rounds 3] [--points 8] [--device cpu] [--threads N]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from hpo_bench.batched import run_batched
from hpo_bench.config import validate_spec
from hpo_bench.execute import execute_trial
from hpo_bench.trial import grid_trials
from hpo_bench.store import ResultsStore

LOSSES = ["last_train_loss", "last_val_loss", "last_test_loss"]
ACCS = ["best_val_acc", "test_acc", "last_val_acc", "last_test_acc"]


def compare(grid, epochs: int, device: str, dtype: str, batched_first: bool):
    """(sequential s, batched s, max |final loss diff|, max |accuracy diff|) of one grid in ``dtype``."""
    spec = validate_spec({"name": "bench", "seeds": [0], "model": {"name": "mnist1d_cnn"},
                          "train": {"epochs": epochs, "batch_size": 100, "device": device, "dtype": dtype},
                          "methods": [{"label": "G", "strategy": "sam",
                                       "search": {"kind": "grid", "engine": "local", "grid": grid, "batched": True}}]})
    trials = grid_trials(spec, spec.methods[0], {}, "grid/local")
    with tempfile.TemporaryDirectory() as tmp:
        execute_trial(trials[0], ResultsStore(f"{tmp}/warm"))  # warm-up (data generation, allocator)

        def sequential():
            return pd.DataFrame([execute_trial(t, ResultsStore(f"{tmp}/seq")) for t in trials]).set_index("run_id")

        def batched():
            return pd.DataFrame(run_batched(trials, ResultsStore(f"{tmp}/bat"))).set_index("run_id")

        timed = {}
        for name, fn in (("bat", batched), ("seq", sequential)) if batched_first else (("seq", sequential), ("bat", batched)):
            t0 = time.perf_counter()
            timed[name] = (fn(), time.perf_counter() - t0)
    (seq, t_seq), (bat, t_bat) = timed["seq"], timed["bat"]
    loss_diff = float((bat[LOSSES] - seq.loc[bat.index, LOSSES]).abs().max().max())
    acc_diff = float((bat[ACCS] - seq.loc[bat.index, ACCS]).abs().max().max())
    return t_seq, t_bat, loss_diff, acc_diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="side-by-side comparisons; the order alternates")
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--no-float64", action="store_true", help="skip the float64 parity run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = [float(r) for r in np.geomspace(0.01, 1.0, args.points)]
    print(f"# {args.points}-point SAM grid, MNIST-1D CNN, {args.epochs} epochs, device={args.device}, "
          f"torch threads={torch.get_num_threads()}, torch {torch.__version__}")
    for dtype in ("float32",) if args.no_float64 else ("float32", "float64"):
        rounds = [compare(grid, args.epochs, args.device, dtype, batched_first=bool(r % 2)) for r in range(args.rounds)]
        for r, (t_seq, t_bat, _, _) in enumerate(rounds):
            print(f"[{dtype}] round {r}: sequential {t_seq:6.2f} s, batched {t_bat:6.2f} s, ratio {t_seq / t_bat:.2f}x")
        t_seq, t_bat = (statistics.median(x[i] for x in rounds) for i in (0, 1))
        ratio = statistics.median(x[0] / x[1] for x in rounds)
        loss_diff, acc_diff = (max(x[i] for x in rounds) for i in (2, 3))
        print(f"[{dtype}] sequential (one trainer run per rho): {t_seq:7.2f} s   (median of {args.rounds} rounds)")
        print(f"[{dtype}] batched ({args.points} points in one pass)   : {t_bat:7.2f} s")
        print(f"[{dtype}] speed-up sequential / batched      : {ratio:.2f}x   (median of the rounds' ratios; target >= 2x, float32)")
        print(f"[{dtype}] max |final loss difference|        : {loss_diff:.2e}   (target <= 1e-5)")
        print(f"[{dtype}] max |accuracy difference|          : {acc_diff:.2e}   (1 prediction = 1/400 val, 1/1000 test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
