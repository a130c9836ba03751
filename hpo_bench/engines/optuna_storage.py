"""Optuna storages for the engine: journal files (repaired when torn) and RDBs with heartbeats, and
the liveness of the processes that hold a study's RUNNING trials.

Storages
    ``''`` is the journal file ``<run dir>/optuna.journal``, ``journal:///path`` a journal file
    elsewhere; anything else is an RDB URL (SQLite, PostgreSQL, MySQL), opened as an
    ``RDBStorage`` with Optuna's heartbeat: every driver records a heartbeat of each trial it holds
    every :func:`heartbeat_interval` seconds (``HPO_BENCH_OPTUNA_HEARTBEAT_S``, default 10), and a
    RUNNING trial whose heartbeat is older than :func:`grace_period` seconds
    (``HPO_BENCH_OPTUNA_GRACE_S``, default 30) is failed by ``optuna.storages.fail_stale_trials``
    (its driver, or that driver's machine, died). A journal has no heartbeat.

Owners
    Each trial a driver holds records ``user_attrs["owner"]``: host name, boot id, process id and
    process start time. A driver on the same machine tells at once whether that process is still
    alive (:func:`owner_alive`), so a re-run right after a kill does not wait for the grace period,
    and several drivers on one machine can share a journal file.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

from hpo_bench.store import notice, write_error

DEFAULT_JOURNAL = "optuna.journal"
HEARTBEAT_ENV, GRACE_ENV = "HPO_BENCH_OPTUNA_HEARTBEAT_S", "HPO_BENCH_OPTUNA_GRACE_S"
SCHEMA_RETRIES = 5


def heartbeat_interval() -> int:
    return max(1, int(os.environ.get(HEARTBEAT_ENV, "10")))


def grace_period() -> int:
    return max(heartbeat_interval() + 1, int(os.environ.get(GRACE_ENV, "30")))


# ----------------------------------------------------------------------------- storages

def journal_path(url: str, run_dir) -> Path | None:
    """The journal file of ``url`` ('' or ``journal:///path``); None for an RDB URL."""
    if url and not url.startswith("journal:"):
        return None
    return Path(run_dir) / DEFAULT_JOURNAL if not url else Path(url[len("journal://"):])


def storage_for(url: str, run_dir, repair: bool = False) -> object:
    """The Optuna storage of ``search.storage``: a ``JournalStorage`` for '' and ``journal:///p``, an
    ``RDBStorage`` with heartbeats for an RDB URL.

    ``repair`` (the driver, before any trial runs): drop a torn last line of the journal first.
    """
    path = journal_path(url, run_dir)
    if path is None:
        return rdb_storage(url)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if repair:
            repair_journal(path)
    except OSError as err:
        raise write_error(err, path) from err
    return JournalStorage(JournalFileBackend(str(path)))


def rdb_storage(url: str):
    """``RDBStorage(url)`` with heartbeats every :func:`heartbeat_interval` s and :func:`grace_period` s of grace."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    kwargs = {"heartbeat_interval": heartbeat_interval(), "grace_period": grace_period()}
    engine_kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(SCHEMA_RETRIES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is an experimental argument
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            except (IntegrityError, ProgrammingError):
                # Two drivers creating Optuna's tables in an empty database at once: one of them loses
                # ("already exists"); the tables are there now, so the next attempt just opens them.
                if attempt == SCHEMA_RETRIES - 1:
                    raise
                time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def has_heartbeat(storage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def _torn_tail(path: Path) -> int:
    """The number of bytes after the last newline of ``path`` (0 when it ends with one or is empty)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            nl = fh.read(pos - start).rfind(b"\n")
            if nl >= 0:
                return size - (start + nl + 1)
            pos = start
    return size


def repair_journal(path: Path) -> Path | None:
    """Drop a torn last line (no newline: a write killed half-way) of the journal file ``path``.

    Done under the journal's own lock (Optuna appends whole lines under it), after copying the
    file to ``<name>.torn-<n>`` beside it; one line is logged. Returns the copy, or None when the
    journal was intact.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or _torn_tail(path) == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        torn = _torn_tail(path)
        if torn == 0:
            return None
        n = 1
        while path.with_name(f"{path.name}.torn-{n}").exists():
            n += 1
        backup = path.with_name(f"{path.name}.torn-{n}")
        shutil.copy2(path, backup)
        os.truncate(path, path.stat().st_size - torn)
    finally:
        lock.release()
    notice(f"{path}: its last line was torn by an interrupted write; dropped those {torn} bytes "
           f"(the whole file is kept as {backup.name}, beside it)")
    return backup


# ----------------------------------------------------------------------------- owners

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:  # pragma: no cover - non-Linux
        return "-"


def _start_time(pid: int) -> str | None:
    """The start time (clock ticks since boot) of process ``pid``; None when it does not exist."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_machine() -> str:
    return f"{socket.gethostname()}/{_boot_id()}"


def owner_id() -> str:
    """This process as a trial owner: ``host/boot/pid/start``."""
    pid = os.getpid()
    return f"{this_machine()}/{pid}/{_start_time(pid) or '-'}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process ``owner`` (from :func:`owner_id`) is alive: True/False on this machine, None
    (cannot tell) for another machine or a malformed owner."""
    parts = str(owner).split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != this_machine() or not parts[2].isdigit():
        return None
    start = _start_time(int(parts[2]))
    return start is not None and start == parts[3]


# ----------------------------------------------------------------------------- heartbeats

class Heartbeats:
    """A daemon thread recording the heartbeat of every trial this driver holds (RDB storages only)."""

    def __init__(self, storage):
        self.storage = storage
        self.enabled = has_heartbeat(storage)
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.trial_ids.add(trial_id)
        self._beat(trial_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="optuna-heartbeat", daemon=True)
            self._thread.start()

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _beat(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception:  # a lost connection: the next beat retries; a long outage makes the trial stale
            pass

    def _loop(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while not self._stop.wait(interval):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                self._beat(trial_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
