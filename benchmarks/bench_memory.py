"""Training with glibc's default malloc vs keeping freed memory (``hpo_bench/memory.py``), side by side.

Each arm is a fresh process (one torch thread) that trains the same SAM runs of the Fashion-MNIST
spec (``experiments/fashion-mnist-main.toml``: ``fmnist_cnn``, 2000 images, batch 100), either one
after another (``separate``) or as one population (``population``), with ``HPO_BENCH_MALLOC=system``
(glibc's defaults) or unset (freed memory kept). Arms alternate in rounds; each line gives wall,
user and system seconds and minor page faults of the training, and the test accuracies, which must
be equal across the malloc settings. The medians of the within-round ratios (system / kept wall
time) are printed at the end. Needs Debian's ``dataset-fashion-mnist``.
Also prints the population's wall time over the separate runs' (kept memory).
Usage: ``python benchmarks/bench_memory.py [--members 8] [--epochs 2] [--rounds 2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARM = """
import json, resource, sys, tempfile, time
import torch
torch.set_num_threads(1)
from hpo_bench.config import load_spec
from hpo_bench.execute import execute_trial
from hpo_bench.memory import keep_freed_memory
from hpo_bench.population import train_population
from hpo_bench.store import ResultsStore
from hpo_bench.trial import method_trials
mode, members, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = load_spec("experiments/fashion-mnist-main.toml", [f"train.epochs={epochs}"])
sam = next(m for m in spec.methods if m.label == "SAM")
trials = method_trials(spec, sam, {})[:members]
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
if mode == "population":
    rows = [row for row, _ in train_population(trials, None)]
else:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [execute_trial(t, ResultsStore(tmp)) for t in trials]
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"kept": keep_freed_memory(), "wall": wall, "user": r1.ru_utime - r0.ru_utime,
                  "sys": r1.ru_stime - r0.ru_stime, "faults": r1.ru_minflt - r0.ru_minflt,
                  "acc": [r["test_acc"] for r in rows]}))
"""


def arm(mode: str, malloc: str, members: int, epochs: int) -> dict:
    env = {**os.environ, "HPO_BENCH_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", ARM, mode, str(members), str(epochs)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"# {args.members} SAM runs of fmnist_cnn, {args.epochs} epochs, 1 thread; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    ratios: dict[str, list[float]] = {"separate": [], "population": []}
    same, kept_wall = True, {"separate": [], "population": []}
    for r in range(args.rounds):
        for mode in ratios:
            res = {m: arm(mode, m, args.members, args.epochs) for m in (("system", "") if r % 2 == 0 else ("", "system"))}
            for malloc in ("system", ""):
                x = res[malloc]
                print(f"round {r + 1} {mode:<10} malloc {'kept' if x['kept'] else 'system':<6}: wall {x['wall']:6.1f} s  "
                      f"user {x['user']:6.1f} s  sys {x['sys']:5.1f} s  minor faults {x['faults']:>9}", flush=True)
            same &= res["system"]["acc"] == res[""]["acc"]
            ratios[mode].append(res["system"]["wall"] / res[""]["wall"])
            kept_wall[mode].append(res[""]["wall"])
    for mode, rs in ratios.items():
        print(f"{mode}: glibc defaults / kept memory, wall time: median {statistics.median(rs):.2f}x "
              f"(rounds {', '.join(f'{v:.2f}' for v in rs)})")
    pop = [p / q for p, q in zip(kept_wall["population"], kept_wall["separate"])]
    print(f"population / separate runs, kept memory, wall time: median {statistics.median(pop):.2f}x "
          f"(rounds {', '.join(f'{v:.2f}' for v in pop)}; below 1: the population is faster)")
    print(f"test accuracies equal in every round: {same}; load average {os.getloadavg()[0]:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
