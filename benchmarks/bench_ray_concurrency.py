"""Ray Tune with 2 concurrent trials vs the sequential local engine, on a 2-core CPU.

By default the SAM grid of ``experiments/mnist1d-main.toml`` (6 rho x 5 seeds = 30 trials, MNIST-1D
CNN, 40 epochs, one torch thread per trial) is run twice, side by side in one process, into fresh
temporary stores (nothing is skipped): once by the local engine one trial after another, once by
Ray Tune with ``max_concurrent_trials = 2`` and 1 CPU per trial. Prints both wall times, the
speed-up (target >= 1.5x on 2 cores) and the largest metric difference between the two (0: an
engine never changes what a trial computes). It takes about 6 minutes.
``ray.init`` happens before the timed part and is printed separately; Ray workers run at nice 0
(as the engine's own ``ray.init`` does), like the sequential run. Other load on the machine skews
both numbers: the load average is printed.
Ray's fixed start-up (worker processes importing torch, Tune's set-up: ~7 s on 2 vCPUs) is paid
once per search, so the ratio grows with the grid: a short grid (``--seeds 2 --grid 0.02 0.05 0.1
0.2 --epochs 30``, about a minute) shows how much of a small search it eats.
Usage: ``python benchmarks/bench_ray_concurrency.py [--epochs 40] [--workers 2] [--seeds 5] [--grid ...]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import pandas as pd

from hpo_bench.config import SearchConfig, validate_spec
from hpo_bench.engines import get_engine
from hpo_bench.execute import trial_data
from hpo_bench.trial import grid_trials
from hpo_bench.store import ResultsStore

METRICS = ["best_val_acc", "test_acc", "last_train_loss", "last_val_loss", "last_test_loss", "grad_evals"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--grid", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 starves trials under other load
    grid, seeds = args.grid, list(range(args.seeds))

    def spec(engine):
        return validate_spec({"name": "bench", "seeds": seeds, "model": {"name": "mnist1d_cnn"},
                              "train": {"epochs": args.epochs, "batch_size": 100, "device": "cpu", "threads": 1},
                              "methods": [{"label": "G", "strategy": "sam",
                                           "search": {"kind": "grid", "engine": engine, "grid": grid,
                                                      "workers": args.workers, "cpus_per_trial": 1}}]})

    import ray

    load0 = f"{os.getloadavg()[0]:.2f}"
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0
    results, started = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("local", "ray"):
            s = spec(engine)
            trials = grid_trials(s, s.methods[0], {}, f"grid/{engine}")
            trial_data(trials[0])  # data generated/cached before timing
            store = ResultsStore(f"{tmp}/{engine}")
            eng = get_engine(engine, SearchConfig(**s.methods[0].search), store.root)
            t0, t_wall = time.perf_counter(), time.time()
            rows = eng.run_trials(trials, store)
            started[engine] = min(r["finished_at"] - r["wall_s"] for r in rows) - t_wall
            results[engine] = (time.perf_counter() - t0, pd.DataFrame(rows).set_index(["rho0", "seed"]).sort_index())
    ray.shutdown()
    (t_seq, seq), (t_ray, par) = results["local"], results["ray"]
    diff = float((seq[METRICS] - par[METRICS]).abs().max().max())
    print(f"machine: {os.cpu_count()} CPU cores; grid {len(grid)} rho x {len(seeds)} seeds = {len(seq)} trials, "
          f"SAM MNIST-1D CNN, {args.epochs} epochs, 1 thread per trial")
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f}")
    print(f"ray.init (not timed below):           {t_init:6.1f} s")
    print(f"local engine, sequential:             {t_seq:6.1f} s  (sum of per-trial wall {seq['wall_s'].sum():.1f} s)")
    print(f"ray tune, {args.workers} concurrent trials x 1 CPU: {t_ray:6.1f} s  (sum of per-trial wall {par['wall_s'].sum():.1f} s)")
    print(f"first trial's training began after: local {started['local']:.1f} s, ray {started['ray']:.1f} s "
          f"(Ray: worker start, imports, Tune set-up; both: the first torch.optim.SGD of a process imports torch._dynamo)")
    print(f"speed-up: {t_seq / t_ray:.2f}x  (target >= 1.5x)")
    print(f"max |metric difference| local vs ray over {', '.join(METRICS)}: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
