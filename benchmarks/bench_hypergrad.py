"""Exact unrolled hypergradient (dM/dν through K SAM steps): time and memory against K.

For the MNIST-1D CNN (batch 100) at one training state, prints for K in {1, 5, 20, 50} (or --ks):
the wall time of one exact hypergradient through ``higher``, through ``torch.func`` and through the
recompute mode (median of --repeats), the time relative to one plain SAM step, and for each the peak
bytes that autograd graphs hold for the reverse pass (distinct storages saved for backward, tracked
with ``saved_tensors_hooks`` until their graph is freed): O(K) for the full unroll, flat in K for
the recompute mode, which keeps K step inputs (parameters, BN buffers, momentum; printed separately) instead.
Times are medians of runs without the meter; the memory is read in one more run with it.
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
    """Peak bytes of the distinct storages that autograd graphs hold for backward while active.

    Each saved tensor is wrapped on pack; a storage counts from the first wrapper that holds it
    until its last wrapper is freed with its graph, so a graph freed step by step (the recompute
    mode) shows its true peak, and a graph kept to the end shows everything it saved.
    """

    def __init__(self):
        self.refs, self.live, self.peak = {}, 0, 0

    def pack(self, t):
        return _Held(self, t)

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda h: h.t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


class _Held:
    def __init__(self, meter: SavedBytes, t):
        self.meter, self.t = meter, t.detach()  # holding ``t`` itself (an output's grad_fn) would leak the graph
        self.key = (t.untyped_storage().data_ptr(), t.dtype)
        n = meter.refs.get(self.key, 0)
        if n == 0:
            meter.live += t.untyped_storage().nbytes()
            meter.peak = max(meter.peak, meter.live)
        meter.refs[self.key] = n + 1

    def __del__(self):
        meter = self.meter
        meter.refs[self.key] -= 1
        if meter.refs[self.key] == 0:
            del meter.refs[self.key]
            meter.live -= self.t.untyped_storage().nbytes()


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
    impls = ("higher", "func", "recompute")
    state_mib = sum(t.numel() * t.element_size() for t in [*state.params, *state.buffers.values(),
                                                                  *(m for m in state.momentum if m is not None)]) / 2**20
    print(f"{'K':>4} " + " ".join(f"{i + ' s':>12}" for i in impls) + f" {'higher/SAM step':>16} "
          + " ".join(f"{i[:9] + ' MiB':>13}" for i in impls) + f" {'recompute inputs MiB':>21}")
    for K in args.ks:
        res = {}
        for impl in impls:
            run = lambda: exact_hypergrad(model, state, batches[:K], val, [0.1] * K, rho=0.05, impl=impl)
            times = []
            for _ in range(args.repeats):  # timed without the meter (its hooks cost Python time)
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            with SavedBytes() as sb:
                run()
            res[impl] = (statistics.median(times), sb.peak / 2**20)
        print(f"{K:>4} " + " ".join(f"{res[i][0]:>12.3f}" for i in impls) + f" {res['higher'][0] / t_sam:>16.1f} "
              + " ".join(f"{res[i][1]:>13.2f}" for i in impls) + f" {K * state_mib:>21.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
