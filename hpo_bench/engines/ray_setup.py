"""Ray itself for the Ray Tune engine: joining or starting Ray, checks with deadlines, Tune settings.

If Ray is not initialized, ``ray.init(address=search.address or None, num_cpus=os.cpu_count()
when local, include_dashboard=False, log_to_driver=False)`` is called once and shut down at the end
of the search (:func:`ray_scope`) and at interpreter exit; a Ray instance started by someone else is
never shut down. Never local_mode. A Ray instance this driver starts shares its fate: its GCS,
raylet and so every trial worker are killed by Linux when the driver dies (Ray starts them with
``PR_SET_PDEATHSIG``); its two idle agent processes may linger a while, holding no trial.

Nothing waits forever: a ``HOST:PORT`` address must accept a TCP connection within
``CONNECT_TIMEOUT_S`` before ``ray.init`` is called, and before any ``fit()`` the largest alive
node must hold ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (a trial that fits no node
would stay pending); otherwise a one-line :class:`~hpo_bench.errors.SpecError` names the field.
Addresses are shown with any password redacted (:func:`hpo_bench.storage_url.redact`). With token
authentication (``RAY_AUTH_MODE=token`` on every node), ``ray.init`` reads the token from
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; hpo-bench never handles it.
"""
from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from contextlib import contextmanager

from hpo_bench.errors import SpecError, WriteError
from hpo_bench.storage_url import redact

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

_STARTED_RAY = False
_INIT_LOCK = threading.Lock()
CONNECT_TIMEOUT_S = 5.0
_ADDRESS_ALLOWED = ("allowed: '' (start a local Ray), HOST:PORT of a running Ray head node (`ray start --head "
                    "--port=PORT`), or 'auto' (a cluster `ray start` runs on this machine)")


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line SpecError naming ``search.address`` unless ``HOST:PORT`` accepts a TCP connection
    within ``timeout`` seconds ('' and 'auto' are not network addresses: nothing to check)."""
    if address in ("", "auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SpecError(f"search.address: {redact(address)!r} is not HOST:PORT; {_ADDRESS_ALLOWED}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise SpecError(f"search.address: no Ray head answers at {redact(address)!r} within {timeout:g} s ({reason}); "
                        f"{_ADDRESS_ALLOWED}") from None


def check_resources(cpus: float, gpus: float) -> None:
    """Raise a one-line SpecError naming the field when no alive node of the Ray cluster can hold one trial."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for field, key, need in (("cpus_per_trial", "CPU", cpus), ("gpus_per_trial", "GPU", gpus)):
        most = max((float(r.get(key, 0.0)) for r in nodes), default=0.0)
        if need > most:
            raise SpecError(f"search.{field}: {need:g}, but the largest node of the Ray cluster has {most:g} {key}(s), "
                            f"so a trial would wait forever; allowed: at most {most:g}")


def ensure_ray(address: str = "") -> None:
    """Connect to (``address``) or start a local Ray once per process (never local_mode).

    An unreachable ``HOST:PORT`` is a one-line SpecError within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    with _INIT_LOCK:  # the warm-up thread may be starting it right now
        _ensure_ray(address)


def _ensure_ray(address: str) -> None:
    global _STARTED_RAY
    import ray

    check_address(address)
    if ray.is_initialized():
        return
    address = address or None
    # Ray starts its workers at nice 15; trials are this program's workload, so a Ray instance
    # we start runs them at the driver's priority (as the local/optuna engines do).
    os.environ.setdefault("RAY_worker_niceness", "0")
    env = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    try:
        ray.init(address=address, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env})
    except ConnectionError as err:  # e.g. 'auto' with no cluster running on this machine
        if not address:
            raise
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else "connection failed"
        raise SpecError(f"search.address: cannot join a Ray cluster at {redact(address)!r} ({redact(reason)}); "
                        f"{_ADDRESS_ALLOWED}") from None
    if not _STARTED_RAY:
        _STARTED_RAY = True
        atexit.register(_shutdown_own_ray)


class _WarmRay:
    """Starts Ray in a background thread while phase-1 runs train, and keeps that thread alive:
    Ray's node processes get ``PR_SET_PDEATHSIG`` from the *thread* that spawned them, so they
    would die with it. A failure here is ignored: the search's own :func:`ensure_ray` reports it."""

    thread: threading.Thread | None = None
    release = threading.Event()

    @classmethod
    def start(cls, address: str) -> None:
        if cls.thread is not None:
            return
        cls.release.clear()

        def hold():
            # Ray warns that a thread other than the main one cannot install its SIGTERM handler:
            # the driver's own handlers stay in place, which is what the experiment wants
            logging.getLogger("ray._private.worker").addFilter(
                lambda record: "SIGTERM handler is not set" not in record.getMessage())
            try:
                ensure_ray(address)
            except Exception:  # noqa: BLE001 - reported again, in one line, when the search connects
                return
            cls.release.wait()
            _shutdown_own_ray()

        cls.thread = threading.Thread(target=hold, name="hpo-bench-ray-warm-up", daemon=True)
        cls.thread.start()

    @classmethod
    def stop(cls) -> None:
        if cls.thread is None:
            return
        cls.release.set()
        cls.thread.join()
        cls.thread = None


def _shutdown_own_ray():
    global _STARTED_RAY
    import ray

    if _STARTED_RAY and ray.is_initialized():
        ray.shutdown()
    _STARTED_RAY = False


@contextmanager
def tune_env(buffered: bool):
    """Tune settings of one ``fit()``, read from the environment when it starts; restored after.

    ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``: only the JSON and CSV loggers passed in
    :meth:`RayEngine._run_config` run (``Result.metrics_dataframe`` reads ``result.json``); the
    TensorBoard logger Tune would add writes an event file per report from the driver, which on a
    2-core machine competes with the trials. ``buffered`` (grid trials, FIFO scheduling):
    ``TUNE_RESULT_BUFFER_LENGTH``/``..._MIN_TIME_S`` let a trial hand over its per-epoch reports
    in batches (``Trainable.train_buffered``) instead of waiting at every ``tune.report`` for the
    driver to ask for the next result. Not for ASHA/TPE, whose decisions need each report when
    it happens. ``TUNE_DISABLE_SIGINT_HANDLER=1``: Ctrl-C raises ``KeyboardInterrupt`` in the
    driver (one line, exit 130, the pool and Ray workers stopped) instead of Tune ending ``fit()``
    normally with the trials unfinished.
    """
    env = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_DISABLE_SIGINT_HANDLER": "1"}
    if buffered:
        env.update(TUNE_RESULT_BUFFER_LENGTH="1000", TUNE_RESULT_BUFFER_MIN_TIME_S="5")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def ray_scope():
    """Shut down, at the end of the block, a Ray instance that the block itself started.

    An idle local Ray cluster (GCS, raylet, pooled workers) takes CPU from whatever the experiment
    runs next, so it must not outlive its search; a Ray instance that was already running (a
    cluster joined with ``address``, a test run's) is left alone.
    """
    import ray

    was_running = ray.is_initialized()
    try:
        yield
    finally:
        if not was_running:
            _shutdown_own_ray()


def raise_write_error(grid) -> None:
    """Raise the first :class:`~hpo_bench.errors.WriteError` (disk full, ...) a trial of ``grid`` failed with."""
    for i in range(len(grid)):
        err, seen = grid[i].error, 0
        while err is not None and seen < 8:
            if isinstance(err, WriteError) and err.filename:  # Ray's RayTaskError(WriteError) wraps it as .cause
                raise WriteError(err.errno, err.strerror, err.filename) from None
            err, seen = getattr(err, "cause", None) or err.__cause__, seen + 1
