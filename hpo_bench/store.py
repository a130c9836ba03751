"""Results store: long-format parquet tables plus ``metadata.json``, all written atomically.

Layout of one experiment directory (``<out>/<spec name>-<spec digest>/``)::

    metadata.json            resolved spec, package versions, git commit, hardware, command
    trials/<run_id>.json     one finished run's row (written last: its presence marks the run done)
    trials/<run_id>.parquet  that run's curves (per-epoch metrics and per-step traces), long format
    trials/quarantine/       damaged files set aside (never deleted), see below
    checkpoints/<run_id>.pt  a run in progress: its full state (``train.checkpoint_every``,
                             :mod:`hpo_bench.checkpoint`); removed when its row is written
    checkpoints/quarantine/  damaged checkpoints set aside (never deleted)
    runs.parquet             one row per run (consolidated from trials/)
    curves.parquet           run_id, scope ('epoch'|'step'), epoch, step, metric, value
    searches.parquet         one row per search (selected ρ*, accuracy at ρ*, summed cost)
    anytime.parquet          best-so-far selected accuracy vs cumulative cost, per search

Writing
    Every file is written to a temporary name in the same directory, fsynced, given the usual
    permissions (``0o666 & ~umask``, the umask read once at import; ``mkstemp`` alone would leave
    0600) and renamed, so a killed process leaves either the old file or the new one, never a torn
    one. An ``OSError`` while writing (disk full, read-only file system, ...) is raised as
    :class:`~hpo_bench.errors.WriteError`, one line naming the file; the files written before it
    are untouched.

Done runs and damaged files
    A run is done iff its ``trials/<run_id>.json`` and ``trials/<run_id>.parquet`` are intact:
    the row is a JSON object whose ``run_id`` is the file's stem and the curves file is a readable
    parquet file. Whatever reads trials/ to decide or collect done runs (:meth:`ResultsStore.has`,
    :meth:`~ResultsStore.load_row`, :meth:`~ResultsStore.done_ids`,
    :meth:`~ResultsStore.consolidate`) moves a damaged run's files (a truncated row, a foreign JSON
    file, an unreadable curves file) to ``trials/quarantine/`` and logs one warning line naming
    them (logger ``hpo_bench``); the run then counts as not done, so a re-run trains exactly the
    damaged runs again. The read-only views (:meth:`~ResultsStore.finished_rows`,
    :meth:`~ResultsStore.read_curves`, used by reports of a run possibly in progress) skip damaged
    files with the same line and move nothing.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from hpo_bench.errors import SpecError, WriteError
from hpo_bench.storage_url import redact

LOG = logging.getLogger("hpo_bench")
QUARANTINE = "quarantine"
CHECKPOINTS = "checkpoints"
_CONSOLIDATE_LOCK = threading.Lock()  # see ResultsStore.consolidate
REFRESH_S = 20.0  # ResultsStore.refresh: at most one rebuild of runs.parquet per this many seconds
_LAST_CONSOLIDATED: dict[str, float] = {}  # store root -> time.monotonic() of its last rebuild here


def notice(message: str) -> None:
    """One warning line (logger ``hpo_bench``; printed to stderr when logging is not configured)."""
    LOG.warning("hpo-bench: warning: %s", message)


def _read_umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


FILE_MODE = 0o666 & ~_read_umask()  # what open() would give a new file


def write_error(err: OSError, path) -> WriteError:
    """``err`` (raised while writing ``path``) as a one-line :class:`WriteError`."""
    if isinstance(err, WriteError):
        return err
    return WriteError(err.errno, err.strerror or str(err) or type(err).__name__, str(path))


def _commit(tmp: str, path: Path) -> None:
    """fsync the finished temporary file, give it the usual permissions, rename it onto ``path``."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it onto ``path``.

    On any error (or a kill) the target keeps its old content and the temporary file is removed
    (or, after SIGKILL, left as a hidden ``.name.*.tmp`` that nothing reads). An ``OSError`` raised
    while writing is re-raised as :class:`~hpo_bench.errors.WriteError` naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield tmp
        _commit(tmp, path)
    except OSError as err:
        raise write_error(err, path) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def check_out_dir(out: str | Path) -> None:
    """Raise SpecError unless ``out`` is (or can be created as) a writable directory; writes nothing that stays."""
    text = str(out) if isinstance(out, Path) else out
    if not text.strip() or "\0" in text:
        raise SpecError(f"--out: {text!r} is not a usable path; allowed: a writable directory, e.g. runs")
    out = Path(out)
    try:
        if out.is_symlink() and not out.exists():
            raise SpecError(f"--out: {str(out)!r} is a dangling or looping symlink; allowed: a writable directory")
        if out.exists() and not out.is_dir():
            raise SpecError(f"--out: {str(out)!r} exists and is not a directory; allowed: a writable directory")
        probe = out.absolute()
        while not probe.exists():
            if probe.is_symlink():
                raise SpecError(f"--out: {str(probe)!r} is a dangling or looping symlink; allowed: a writable directory")
            if len(os.fsencode(probe.name)) > 255:
                raise SpecError(f"--out: the folder name {probe.name[:20]!r}... is longer than 255 bytes; "
                                "allowed: a writable directory with shorter folder names")
            probe = probe.parent
        # a real write test: os.access says yes on read-only and pseudo file systems (e.g. /proc) for root
        fd, tmp = tempfile.mkstemp(prefix=".hpo-bench-probe.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:  # not writable, or a folder on the way that this user may not search
        raise SpecError(f"--out: {str(out)!r} is not writable ({err.strerror or err}); "
                        "allowed: a writable directory") from None


def run_dir_for(spec, out: Path) -> Path:
    """The results directory of ``spec`` under the output root ``out``: ``<out>/<name>-<digest>``.

    The spec's name is validated (letters, digits, '.', '_', '-'), so the folder is always inside ``out``;
    a file (or a dangling symlink) already in its place is a SpecError naming ``--out``.
    """
    run_dir = Path(out) / f"{spec.name}-{spec.digest()}"
    if run_dir.is_symlink() and not run_dir.exists() or run_dir.exists() and not run_dir.is_dir():
        raise SpecError(f"--out: {str(run_dir)!r} exists and is not a directory; allowed: an --out without it "
                        "(move it away)")
    if run_dir.resolve().parent != Path(out).resolve():
        raise SpecError(f"name: {spec.name!r} would write outside --out; allowed: a plain folder name")
    return run_dir


def _first_line(err: Exception) -> str:
    """The first sentence of an exception's message (at most 100 characters), or its type."""
    text = str(err).strip()
    text = text.splitlines()[0].split(". ")[0][:100] if text else ""
    return text or type(err).__name__


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


class ResultsStore:
    """One experiment directory. Safe to use from several processes (one writer per run_id)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.trials = self.root / "trials"
        self.quarantine = self.trials / QUARANTINE
        self.quarantined: list[Path] = []  # files this object moved to the quarantine, in order
        self._intact: dict[str, tuple] = {}  # run_id -> (file keys, row) of a run found intact

    # -- checking a run's files ----------------------------------------------------------------
    @staticmethod
    def _key(path: Path):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _inspect(self, run_id: str) -> tuple[dict | None, str, tuple]:
        """(row, '', keys) of an intact run; (None, '', keys) when it has no row file; (None, problem,
        keys) when its files are damaged. ``keys`` identify the files as they were inspected."""
        row_path, curves_path = self.trials / f"{run_id}.json", self.trials / f"{run_id}.parquet"
        keys = (self._key(row_path), self._key(curves_path))
        if not run_id or keys[0] is None:
            return None, "", keys
        cached = self._intact.get(run_id)
        if cached is not None and cached[0] == keys:
            return dict(cached[1]), "", keys
        try:
            row = json.loads(row_path.read_bytes())
        except FileNotFoundError:
            return None, "", keys
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            return None, f"{row_path} is not valid JSON ({str(err).splitlines()[0][:80]})", keys
        except OSError as err:
            return None, f"{row_path} cannot be read ({err.strerror or err})", keys
        if not isinstance(row, dict) or "run_id" not in row:
            return None, f"{row_path} is not a run's row (no run_id)", keys
        if str(row["run_id"]) != run_id:
            return None, f"{row_path} holds the row of another run ({str(row['run_id'])[:40]!r})", keys
        if keys[1] is None:
            return None, f"{curves_path} (the run's curves) is missing", keys
        try:
            import pyarrow.parquet as pq

            pq.read_metadata(curves_path)
        except Exception as err:  # ArrowInvalid, OSError, ...
            return None, f"{curves_path} is not a readable parquet file ({_first_line(err)})", keys
        self._intact[run_id] = (keys, row)
        return dict(row), "", keys

    def _set_aside(self, run_id: str, problem: str, keys: tuple) -> None:
        """Move the damaged files of ``run_id`` (row first: the run stops counting as done) to the quarantine.

        A file that changed since it was inspected, or that another process already moved, is left alone.
        """
        self._intact.pop(run_id, None)
        moved = []
        for suffix, key in zip((".json", ".parquet"), keys):
            src = self.trials / f"{run_id}{suffix}"
            if key is None or self._key(src) != key or (suffix == ".parquet" and keys[0] is not None and not moved):
                continue
            try:
                self.quarantine.mkdir(parents=True, exist_ok=True)
                dst = self.quarantine / src.name
                n = 0
                while dst.exists():
                    n += 1
                    dst = self.quarantine / f"{src.name}.{n}"
                os.rename(src, dst)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise write_error(err, src) from err
            moved.append(dst)
        self.quarantined.extend(moved)
        if moved:
            notice(f"damaged result: {problem}; moved {', '.join(d.name for d in moved)} to {self.quarantine}/ "
                   "(kept, not deleted); the run counts as not done")

    def _row(self, run_id: str) -> dict | None:
        """The row of an intact run; None when absent or damaged (damaged files are set aside)."""
        row, problem, keys = self._inspect(run_id)
        if problem:
            self._set_aside(run_id, problem, keys)
        return row

    def _row_files(self) -> list[str]:
        if not self.trials.is_dir():
            return []
        return sorted(p.stem for p in self.trials.glob("*.json") if not p.name.startswith("."))

    # -- per-run files -------------------------------------------------------------------------
    def has(self, run_id: str) -> bool:
        """Whether ``run_id`` is done: its row and curves files are intact (damaged ones are set aside)."""
        return self._row(run_id) is not None

    def load_row(self, run_id: str) -> dict:
        row = self._row(run_id)
        if row is None:
            raise FileNotFoundError(2, "no finished run (absent, or damaged and moved to the quarantine)",
                                    str(self.trials / f"{run_id}.json"))
        return row

    def write_run(self, row: dict, curves: pd.DataFrame) -> None:
        """Write one finished run: curves first, then the row (which marks it done)."""
        run_id = row["run_id"]
        atomic_write_parquet(self.trials / f"{run_id}.parquet", curves)
        atomic_write_text(self.trials / f"{run_id}.json", json.dumps(row, default=_json_default, sort_keys=True))

    # -- mid-run checkpoints (hpo_bench.checkpoint) -------------------------------------------------
    def checkpoint_path(self, run_id: str) -> Path:
        """Where a run in progress keeps its last checkpoint: ``checkpoints/<run_id>.pt``."""
        return self.root / CHECKPOINTS / f"{run_id}.pt"

    def set_aside_checkpoint(self, run_id: str, problem: str) -> None:
        """Move a damaged checkpoint to ``checkpoints/quarantine/`` (never deleted); one warning line."""
        src = self.checkpoint_path(run_id)
        folder = src.parent / QUARANTINE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            dst, n = folder / src.name, 0
            while dst.exists():
                n += 1
                dst = folder / f"{src.name}.{n}"
            os.rename(src, dst)
        except FileNotFoundError:  # another process moved it already
            return
        except OSError as err:
            raise write_error(err, src) from err
        self.quarantined.append(dst)
        notice(f"damaged checkpoint: {problem}; moved {dst.name} to {folder}/ (kept, not deleted); the run starts over")

    def done_ids(self) -> list[str]:
        """The run ids of every done run in trials/ (damaged files are set aside on the way)."""
        return [rid for rid in self._row_files() if self._row(rid) is not None]

    # -- read-only views of the finished runs (e.g. of a run still in progress): nothing is written
    def has_metadata(self) -> bool:
        return (self.root / "metadata.json").is_file()

    def _readable_rows(self) -> dict[str, dict]:
        """Rows of the intact runs; damaged files are named in one line each and left in place."""
        rows = {}
        for rid in self._row_files():
            row, problem, _ = self._inspect(rid)
            if problem:
                notice(f"damaged result: {problem}; skipped (left in place)")
            elif row is not None:
                rows[rid] = row
        return rows

    def finished_rows(self) -> pd.DataFrame:
        """One row per intact finished run in trials/ (in file-name order); damaged files are skipped."""
        return pd.DataFrame(list(self._readable_rows().values()))

    def read_curves(self, scope: str, metrics: list[str]) -> pd.DataFrame:
        """The curve rows of this scope and these metrics: from curves.parquet, or while it is absent
        from the intact finished runs' trials/<run_id>.parquet (empty, with the columns, when there are none)."""
        path = self.root / "curves.parquet"
        if path.exists():
            return pd.read_parquet(path, filters=[("scope", "==", scope), ("metric", "in", list(metrics))])
        df = pd.DataFrame(columns=["run_id", "scope", "epoch", "step", "metric", "value"])
        parts = []
        for rid in self._readable_rows():
            try:
                parts.append(pd.read_parquet(self.trials / f"{rid}.parquet"))
            except Exception as err:  # intact footer, damaged body
                notice(f"damaged result: {self.trials / f'{rid}.parquet'} cannot be read ({_first_line(err)}); "
                       "skipped (left in place)")
        parts = [p for p in parts if len(p)]
        if parts:
            df = pd.concat(parts, ignore_index=True)
            df = df[(df["scope"] == scope) & df["metric"].isin(metrics)]
        return df

    # -- consolidated tables -------------------------------------------------------------------
    def consolidate(self) -> pd.DataFrame:
        """Rebuild runs.parquet and curves.parquet from the done runs in trials/ (each run exactly once).

        One driver thread at a time (the experiment consolidates from a search and from its phase-1
        thread at once), so the files written last hold every run done by then."""
        with _CONSOLIDATE_LOCK:
            _LAST_CONSOLIDATED[str(self.root)] = time.monotonic()
            return self._consolidate()

    def refresh(self) -> None:
        """:meth:`consolidate`, unless this process did so in the last :data:`REFRESH_S` seconds.

        For the loops that finish runs one after another: a rebuild reads every finished run, so
        rebuilding after each of n runs costs O(n²) (1.5–3.5 s per rebuild at 680 runs). trials/
        stays the record, runs.parquet lags at most REFRESH_S, and each batch ends with a full
        :meth:`consolidate`."""
        if time.monotonic() - _LAST_CONSOLIDATED.get(str(self.root), -math.inf) >= REFRESH_S:
            self.consolidate()

    def _consolidate(self) -> pd.DataFrame:
        rows, curves = [], []
        for rid in self._row_files():
            row, problem, keys = self._inspect(rid)
            if not problem and row is not None:
                try:
                    part = pd.read_parquet(self.trials / f"{rid}.parquet")
                except Exception as err:  # intact footer, damaged body
                    problem = f"{self.trials / f'{rid}.parquet'} cannot be read ({_first_line(err)})"
            if problem:
                self._set_aside(rid, problem, keys)
                continue
            if row is None:
                continue
            rows.append(row)
            if len(part):
                curves.append(part)
        rows.sort(key=lambda r: (r.get("finished_at", 0.0), r["run_id"]))
        runs = pd.DataFrame(rows)  # in completion order, i.e. the spec's order for a sequential run
        atomic_write_parquet(self.root / "runs.parquet", runs)
        atomic_write_parquet(self.root / "curves.parquet", pd.concat(curves, ignore_index=True) if curves else
                             pd.DataFrame(columns=["run_id", "scope", "epoch", "step", "metric", "value"]))
        return runs

    def write_table(self, name: str, df: pd.DataFrame) -> None:
        atomic_write_parquet(self.root / f"{name}.parquet", df)

    def read_table(self, name: str) -> pd.DataFrame:
        path = self.root / f"{name}.parquet"
        return pd.read_parquet(path) if path.exists() else pd.DataFrame()

    # -- metadata ------------------------------------------------------------------------------
    def write_metadata(self, spec_dict: dict, command: list[str]) -> None:
        # secrets (a storage URL's password, ...) never reach the file, nor the report made from it
        meta = {"spec": redact(spec_dict), "command": redact(" ".join(command)),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": package_versions(), "git_commit": git_commit(), "hardware": hardware()}
        atomic_write_text(self.root / "metadata.json", json.dumps(meta, indent=2, default=_json_default))

    def read_metadata(self) -> dict:
        path = self.root / "metadata.json"
        return json.loads(path.read_text()) if path.exists() else {}


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("hpo-bench", "torch", "torchvision", "optuna", "ray", "higher", "numpy", "pandas", "pyarrow", "mnist1d"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
