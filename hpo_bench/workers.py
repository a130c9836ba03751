"""Where the worker processes of ``--jobs`` come from: a fork server that has imported torch once.

A worker started with ``spawn`` is a fresh interpreter: it imports torch and the training modules
(about 2 s of one core) and its first optimizer step imports ``torch._dynamo`` (about 1.5 s more,
``torch.optim``'s ``step`` does it), before it trains anything. Here the workers are forked from
Python's fork server (``multiprocessing``'s ``forkserver`` start method), which imports
:data:`PRELOAD` once; a worker is ready in milliseconds and the imports are paid once per driver
process, not once per worker. The fork server is single-threaded Python that has only imported
modules (forking such a process is what PyTorch's own DataLoader workers do), so a worker computes
what a spawned one would: the same bits (``tests/test_pool.py`` compares them with sequential runs).

What a worker does not inherit from the server, the pool hands it (:func:`hpo_bench.pool.init_worker`):
the driver's current environment; the working directory and ``sys.path`` are the driver's already
(``multiprocessing`` sends them). :func:`start_server` is called early by ``hpo-bench run`` and
``hpo-bench worker`` (before the driver imports torch itself), so the server's imports overlap the
driver's. It ends when the driver ends: :func:`stop_server` (at exit) waits for it, so the CPU time
of its workers is counted in the driver's (what ``/usr/bin/time`` reports); if the driver is killed,
the server sees its pipe close and exits, and the workers get SIGKILL with it (``PR_SET_PDEATHSIG``).
For that, each worker closes its own copy of that pipe (:func:`release_driver_pipe`; Python hands every
forked process one, which would keep the server, and so the workers, alive after their driver).

This module imports no torch (the CLI calls it before importing the training modules).
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
from multiprocessing import forkserver

START_METHOD = "forkserver"
PRELOAD = ["hpo_bench.pool", "torch._dynamo"]  # the worker's code, torch with it, and what torch.optim imports late
_started = False


def default_jobs() -> int:
    """Worker processes when ``--jobs`` is not given: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def worker_context():
    """The ``multiprocessing`` context the pool starts its workers with (the fork server, preloaded)."""
    context = multiprocessing.get_context(START_METHOD)
    context.set_forkserver_preload(PRELOAD)
    return context


def start_server() -> None:
    """Start the fork server now (its imports run while the caller goes on); stopped at exit."""
    global _started
    worker_context()
    forkserver.ensure_running()
    if not _started:
        _started = True
        atexit.register(stop_server)


def stop_server() -> None:
    """Ask the fork server to end and wait for it (a no-op when none runs). Its workers have been
    waited for by the server, so their CPU time now counts in this process's children."""
    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)  # CPython 3.8+; private, hence the guard
    if stop is not None and getattr(server, "_forkserver_pid", None) is not None:
        stop()


def release_driver_pipe() -> None:
    """In a worker: close its copy of the pipe whose end tells the fork server that the driver has
    ended, so that only the driver holds it open. A worker starts no processes of its own."""
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)  # private, hence the guard
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None
