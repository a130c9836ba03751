"""Exact unrolled hypergradient (dM/dν through K SAM steps): time and memory against K.

For the MNIST-1D CNN (batch 100) at one training state, prints for K in {1, 5, 20, 50} (or --ks):
the wall time of one exact hypergradient through ``higher`` and through ``torch.func`` (median of
--repeats), the time relative to one plain SAM step, and the bytes the autograd graph keeps for the
reverse pass (distinct tensors saved for backward, via ``saved_tensors_hooks``: the O(K) memory).
Usage: ``python benchmarks/bench_hypergrad.py [--ks 1 5 20 50] [--repeats 3]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from hpo_bench.config import DataConfig
from hpo_bench.data import load_data
from hpo_bench.hypergrad import capture_state, exact_hypergrad
from hpo_bench.models import create_model


class SavedBytes:
    """Counts distinct storage bytes saved for backward while active."""

    def __init__(self):
        self.seen, self.bytes = set(), 0

    def pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 20, 50])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    data = load_data(DataConfig())
    torch.manual_seed(0)
    model = create_model("mnist1d_cnn", data.num_classes, data.input_shape)
    state = capture_state(model)
    gen = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, len(data.train_y), (100,), generator=gen) for _ in range(max(args.ks))]
    batches = [(data.train_x[i], data.train_y[i]) for i in idx]
    val = (data.val_x[:100], data.val_y[:100])
    params = list(model.parameters())

    def sam_step():
        x, y = batches[0]
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        n = torch.sqrt(sum((t ** 2).sum() for t in g))
        with torch.no_grad():
            for p, t in zip(params, g):
                p.add_(0.05 * t / n)
        torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            for p, t in zip(params, g):
                p.sub_(0.05 * t / n)

    for _ in range(5):
        sam_step()
    t0 = time.perf_counter()
    for _ in range(20):
        sam_step()
    t_sam = (time.perf_counter() - t0) / 20
    print(f"# MNIST-1D CNN, batch 100, torch threads={torch.get_num_threads()}, torch {torch.__version__}; "
          f"one SAM step = {1000 * t_sam:.2f} ms")
    print(f"{'K':>4} {'higher s':>10} {'func s':>10} {'higher/SAM step':>16} {'graph MiB':>10} {'MiB per step':>13}")
    for K in args.ks:
        res = {}
        for impl in ("higher", "func"):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                with SavedBytes() as sb:
                    exact_hypergrad(model, state, batches[:K], val, [0.1] * K, rho=0.05, impl=impl)
                times.append(time.perf_counter() - t0)
            res[impl] = (statistics.median(times), sb.bytes)
        mib = res["higher"][1] / 2**20
        print(f"{K:>4} {res['higher'][0]:>10.3f} {res['func'][0]:>10.3f} {res['higher'][0] / t_sam:>16.1f} "
              f"{mib:>10.1f} {mib / K:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
