"""Concurrent vs sequential local execution (``--jobs``) on the README's main job, side by side.

Runs the local part of ``experiments/quick.toml`` (its plain methods: ERM, SAM, ASAM, LETS-SAM,
LETS-ASAM, the exact hypergradient, AE-SAM, SAMAR x 2 seeds = 16 runs, MNIST-1D CNN, one torch
thread per run) into fresh temporary stores, alternating in rounds: once with ``jobs = 1`` (one run
after another in the driver) and once with ``jobs = N`` worker processes. Prints each round's wall
times, the median speed-up (target >= 1.8x on 2 cores), the CPU use of the concurrent run (its
workers' CPU seconds over its wall time) and the largest metric difference between the two (0:
concurrency never changes what a run computes). Both arms run in this already warm process: the
sequential arm in the process itself, the concurrent one in workers forked from the fork server
(:mod:`hpo_bench.workers`), which is started, and its start timed and printed, once before the
rounds, as a CLI run starts it while its driver imports torch. Forking the workers, their set-up
and loading the data are inside the timed part. CPU is the whole machine's busy time over the run
(``/proc/stat``, in % of one core): the workers are the fork server's children, not this process's.
Other load on the machine skews both numbers: the load average is printed.
Each method's seeds run as separate runs (``batched = false``), so that the ratio measures concurrency
alone; ``--population`` keeps the default populations in both arms instead (fewer, larger units).

The machine's own ceiling is measured in the same rounds, without hpo-bench's scheduling: ``jobs``
processes, started and warmed up beforehand, each run the same fixed number of SGD steps of the
MNIST-1D CNN (one torch thread) from a common start signal, against one process running the steps of
all of them one after another. Its ratio (``jobs`` × one process's time / the slowest of the
concurrent ones) is what two independent single-threaded processes can gain on this machine at
all; the experiment's speed-up over it is the share the scheduling keeps.
Usage: ``python benchmarks/bench_concurrency.py [--epochs 15] [--rounds 3] [--jobs 2] [--population]
[--ceiling-steps 2000]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import pandas as pd
import torch

from hpo_bench.config import load_spec
from hpo_bench.experiment import run_experiment
from hpo_bench.models import create_model
from hpo_bench.pool import TrialPool
from hpo_bench.store import ResultsStore
from hpo_bench.workers import start_server

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_main_job import machine_jiffies  # noqa: E402

METRICS = ["best_val_acc", "test_acc", "last_train_loss", "last_val_loss", "last_test_loss", "grad_evals"]
SPEC = os.path.join(os.path.dirname(__file__), "..", "experiments", "quick.toml")


def local_spec(epochs: int, population: bool = False):
    spec = load_spec(SPEC, [f"train.epochs={epochs}"])
    spec.methods = [dataclasses.replace(m, batched=population) for m in spec.methods
                    if m.search is None and not m.rho_from]
    return spec


def timed_run(spec, jobs: int) -> tuple[float, float, pd.DataFrame]:
    """(wall s, busy CPU s of the whole machine, runs) of one fresh run."""
    with tempfile.TemporaryDirectory() as tmp:
        busy0, total0 = machine_jiffies()
        t0 = time.perf_counter()
        runs = run_experiment(spec, ResultsStore(tmp), show_progress=False, jobs=jobs)
        wall = time.perf_counter() - t0
        busy1, total1 = machine_jiffies()
    return wall, wall * os.cpu_count() * (busy1 - busy0) / max(1, total1 - total0), runs


def server_start(jobs: int) -> float:
    """Seconds from starting the fork server (it imports torch) until ``jobs`` workers are ready."""
    t0 = time.perf_counter()
    start_server()
    with TrialPool(jobs) as pool:
        for future in [pool.submit_call(os.getpid) for _ in range(jobs)]:
            future.result()
    return time.perf_counter() - t0


def _steps(n_steps: int, start, done) -> None:
    """In a fresh process: warm up, wait for ``start``, time ``n_steps`` SGD steps of the CNN, put the seconds."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("mnist1d_cnn", 10, (40,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(100, 40), torch.randint(0, 10, (100,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(50):
        step()
    start.wait()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    done.put(time.perf_counter() - t0)


def machine_ceiling(jobs: int, n_steps: int) -> float:
    """jobs × (one process's time for ``n_steps``) / (slowest of ``jobs`` processes doing ``n_steps`` at once)."""
    ctx = multiprocessing.get_context("spawn")

    def timed(n_procs: int, steps: int) -> float:
        start, done = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_steps, args=(steps, start, done)) for _ in range(n_procs)]
        for p in procs:
            p.start()
        time.sleep(8.0)  # every process has imported torch and warmed up
        start.set()
        secs = max(done.get() for _ in procs)
        for p in procs:
            p.join()
        return secs

    alone = timed(1, n_steps * jobs)
    together = timed(jobs, n_steps)
    return alone / together


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--population", action="store_true", help="train each method's seeds as one population")
    ap.add_argument("--ceiling-steps", type=int, default=2000, help="SGD steps per process of the machine ceiling")
    args = ap.parse_args(argv)
    spec = local_spec(args.epochs, args.population)
    print(f"{len(spec.methods)} plain methods x {len(spec.seeds)} seeds, {args.epochs} epochs; "
          f"jobs 1 vs {args.jobs}; cores {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"fork server started and {args.jobs} workers ready in {server_start(args.jobs):.1f} s "
          "(once per driver; not timed below)", flush=True)
    ratios, diffs, ceilings = [], [], []
    for r in range(args.rounds):
        seq_wall, seq_cpu, seq = timed_run(spec, 1)
        par_wall, par_cpu, par = timed_run(spec, args.jobs)
        ceilings.append(machine_ceiling(args.jobs, args.ceiling_steps))
        key = ["method", "seed"]
        diff = float((seq.set_index(key).sort_index()[METRICS] - par.set_index(key).sort_index()[METRICS]).abs().max().max())
        ratios.append(seq_wall / par_wall)
        diffs.append(diff)
        print(f"round {r + 1}: sequential {seq_wall:.1f} s (CPU {100 * seq_cpu / seq_wall:.0f} %), "
              f"{args.jobs} jobs {par_wall:.1f} s (CPU {100 * par_cpu / par_wall:.0f} %): {seq_wall / par_wall:.2f}x; "
              f"max |metric difference| {diff:.3g}; machine ceiling {ceilings[-1]:.2f}x", flush=True)
    speedup, ceiling = statistics.median(ratios), statistics.median(ceilings)
    print(f"\nmedian speed-up {speedup:.2f}x over {args.rounds} rounds (target >= 1.8x on 2 cores); "
          f"largest metric difference {max(diffs):.3g}; load average {os.getloadavg()[0]:.2f}")
    print(f"machine ceiling (median): {ceiling:.2f}x for {args.jobs} independent single-threaded processes; "
          f"the experiment keeps {100 * speedup / ceiling:.0f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
