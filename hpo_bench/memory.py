"""Keep freed memory in the training process instead of handing it back to the OS at every step.

glibc's malloc serves large blocks (above a threshold that adapts up to 32 MiB) with ``mmap`` and
returns them with ``munmap`` on ``free``, and trims the heap's top once more than 128 KiB of it is
free. A training step allocates and frees the same large activation and gradient buffers over and
over, so every step pays for fresh zeroed pages: on the Fashion-MNIST CNN (batch 100, one thread)
the kernel's share was 30 % of a run's CPU time (4.7 million minor page faults for 8 runs of 2
epochs) and 39 % for a population of 8. :func:`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (every
block from the heap) and ``M_TRIM_THRESHOLD`` to 2 GiB (freed memory stays for reuse), so after
the first step a run reuses its own pages. Results are unchanged (the same computation on the same
values); the resident size stays at the run's peak instead of falling between steps.
``benchmarks/RESULTS.md`` has the measurement.

Called by every process that trains (the trainer and a population set themselves up with it); a
no-op where the C library is not glibc, and when ``HPO_BENCH_MALLOC=system`` (keep glibc's defaults).
"""
from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB, i.e. never trim in practice
_DONE = False


def keep_freed_memory() -> bool:
    """Tune this process's malloc as the module docstring says, once; True if it is in effect."""
    global _DONE
    if _DONE:
        return True
    if os.environ.get("HPO_BENCH_MALLOC", "") == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _DONE = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    return _DONE
