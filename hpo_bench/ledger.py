"""The one cost ledger every strategy is charged by (METHODS.md §7).

Units:
* ``grad_evals``: forward+backward passes on one mini-batch (training or validation batch). A
  double backward — a backward through a graph built with ``create_graph=True``, e.g. the exact
  hypergradient's reverse pass through an unroll — is charged 2 grad evals per first-order gradient
  call it differentiates through: it runs the backward of that backward pass and the backward of the
  forward graph under it (a measured FLOP equivalent would be about the same; 2 is the simple,
  stated unit). It is charged by the code that runs it (:mod:`hpo_bench.hypergrad`), through
  :meth:`Ledger.charge_grad`, never by a strategy typing a number; ``tests/test_strategy_contract.py``
  counts the real ``torch.autograd`` calls by the same rule and fails a strategy charged less.
  LETS and every other strategy take first-order gradients only (1 each).
* ``fwd_evals``: forward-only passes on one batch (evaluation batches included).
* ``wall_s``: wall-clock seconds of the run (training + evaluation).
* ``device_s``: on CUDA, GPU time between CUDA events around the run; on CPU, the process CPU
  time (``time.process_time``) of the run, i.e. core-seconds spent by the device that computed.
* ``peak_mem_bytes``: CUDA ``max_memory_allocated`` on GPU; on CPU the process peak RSS
  (``ru_maxrss``), which is process-wide and never decreases.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Ledger:
    device: str = "cpu"
    grad_evals: int = 0
    fwd_evals: int = 0
    wall_s: float = 0.0
    device_s: float = 0.0
    peak_mem_bytes: int = 0
    _t0: float = field(default=0.0, repr=False)
    _c0: float = field(default=0.0, repr=False)
    _events: tuple | None = field(default=None, repr=False)

    def charge_grad(self, n: int = 1) -> None:
        self.grad_evals += n

    def charge_fwd(self, n: int = 1) -> None:
        self.fwd_evals += n

    def start(self) -> None:
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._events = (start, end)
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def elapsed(self) -> float:
        """Wall seconds since :meth:`start` (cheap; used for time budgets)."""
        return time.perf_counter() - self._t0

    def stop(self) -> None:
        if self._events is not None:
            start, end = self._events
            end.record()
            torch.cuda.synchronize()
            self.device_s = start.elapsed_time(end) / 1000.0
            self.peak_mem_bytes = int(torch.cuda.max_memory_allocated())
        else:
            self.device_s = time.process_time() - self._c0
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.peak_mem_bytes = int(rss if sys.platform == "darwin" else rss * 1024)
        self.wall_s = time.perf_counter() - self._t0

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_") and k != "device"}
