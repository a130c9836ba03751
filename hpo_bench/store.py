"""Results store: long-format parquet tables plus ``metadata.json``, all written atomically.

Layout of one experiment directory (``<out>/<spec name>-<spec digest>/``)::

    metadata.json            resolved spec, package versions, git commit, hardware, command
    trials/<run_id>.json     one finished run's row (written last: its presence marks the run done)
    trials/<run_id>.parquet  that run's curves (per-epoch metrics and per-step traces), long format
    runs.parquet             one row per run (consolidated from trials/)
    curves.parquet           run_id, scope ('epoch'|'step'), epoch, step, metric, value
    searches.parquet         one row per search (selected ρ*, accuracy at ρ*, summed cost)
    anytime.parquet          best-so-far selected accuracy vs cumulative cost, per search

Every file is written to a temporary name in the same directory, fsynced, then renamed, so a
killed process leaves either the old file or the new one, never a torn one. A run is done iff its
``trials/<run_id>.json`` exists, whichever engine ran it; re-running a spec skips done runs.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from hpo_bench.errors import SpecError


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it onto ``path``.

    On any error (or a kill) the target keeps its old content and the temporary file is removed
    (or, after SIGKILL, left as a hidden ``.name.*.tmp`` that nothing reads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def check_out_dir(out: Path) -> None:
    """Raise SpecError unless ``out`` is (or can be created as) a writable directory; writes nothing that stays."""
    if str(out) == "":
        raise SpecError("--out: empty path; allowed: a writable directory, e.g. runs")
    if out.is_symlink() and not out.exists():
        raise SpecError(f"--out: {str(out)!r} is a dangling or looping symlink; allowed: a writable directory")
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out: {str(out)!r} exists and is not a directory; allowed: a writable directory")
    probe = out.absolute()
    while not probe.exists():
        if probe.is_symlink():
            raise SpecError(f"--out: {str(probe)!r} is a dangling or looping symlink; allowed: a writable directory")
        probe = probe.parent
    try:  # a real write test: os.access says yes on read-only and pseudo file systems (e.g. /proc) for root
        fd, tmp = tempfile.mkstemp(prefix=".hpo-bench-probe.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise SpecError(f"--out: {str(out)!r} is not writable ({err.strerror}); allowed: a writable directory") from None


def run_dir_for(spec, out: Path) -> Path:
    """The results directory of ``spec`` under the output root ``out``: ``<out>/<name>-<digest>``.

    The spec's name is validated (letters, digits, '.', '_', '-'), so the folder is always inside ``out``.
    """
    run_dir = out / f"{spec.name}-{spec.digest()}"
    if run_dir.resolve().parent != out.resolve():
        raise SpecError(f"name: {spec.name!r} would write outside --out; allowed: a plain folder name")
    return run_dir


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


class ResultsStore:
    """One experiment directory. Safe to use from several processes (one writer per run_id)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.trials = self.root / "trials"

    # -- per-run files -------------------------------------------------------------------------
    def has(self, run_id: str) -> bool:
        return (self.trials / f"{run_id}.json").exists()

    def load_row(self, run_id: str) -> dict:
        return json.loads((self.trials / f"{run_id}.json").read_text())

    def write_run(self, row: dict, curves: pd.DataFrame) -> None:
        """Write one finished run: curves first, then the row (which marks it done)."""
        run_id = row["run_id"]
        atomic_write_parquet(self.trials / f"{run_id}.parquet", curves)
        atomic_write_text(self.trials / f"{run_id}.json", json.dumps(row, default=_json_default, sort_keys=True))

    def done_ids(self) -> list[str]:
        if not self.trials.exists():
            return []
        return sorted(p.stem for p in self.trials.glob("*.json") if not p.name.startswith("."))

    # -- read-only views of the finished runs (e.g. of a run still in progress): nothing is written
    def has_metadata(self) -> bool:
        return (self.root / "metadata.json").is_file()

    def finished_rows(self) -> pd.DataFrame:
        """One row per finished run in trials/ (in file-name order); a row file that is not JSON is skipped."""
        rows = []
        if self.trials.is_dir():
            for p in sorted(self.trials.glob("*.json")):
                if not p.name.startswith("."):
                    try:
                        rows.append(json.loads(p.read_text()))
                    except ValueError:
                        continue
        return pd.DataFrame(rows)

    def read_curves(self, scope: str, metrics: list[str]) -> pd.DataFrame:
        """The curve rows of this scope and these metrics: from curves.parquet, or while it is absent
        from the finished runs' trials/<run_id>.parquet (empty, with the columns, when there are none)."""
        path = self.root / "curves.parquet"
        if path.exists():
            return pd.read_parquet(path, filters=[("scope", "==", scope), ("metric", "in", list(metrics))])
        df = pd.DataFrame(columns=["run_id", "scope", "epoch", "step", "metric", "value"])
        if self.trials.is_dir():
            parts = [pd.read_parquet(p) for p in sorted(self.trials.glob("*.parquet")) if not p.name.startswith(".")]
            parts = [p for p in parts if len(p)]
            if parts:
                df = pd.concat(parts, ignore_index=True)
                df = df[(df["scope"] == scope) & df["metric"].isin(metrics)]
        return df

    # -- consolidated tables -------------------------------------------------------------------
    def consolidate(self) -> pd.DataFrame:
        """Rebuild runs.parquet and curves.parquet from trials/ (each run exactly once)."""
        ids = self.done_ids()
        rows = sorted((self.load_row(i) for i in ids), key=lambda r: (r.get("finished_at", 0.0), r["run_id"]))
        runs = pd.DataFrame(rows)  # in completion order, i.e. the spec's order for a sequential run
        curves = [pd.read_parquet(self.trials / f"{i}.parquet") for i in ids if (self.trials / f"{i}.parquet").exists()]
        curves = [c for c in curves if len(c)]
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
        meta = {"spec": spec_dict, "command": " ".join(command), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
