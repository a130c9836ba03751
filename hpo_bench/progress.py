"""Progress display: one tqdm bar per run (steps, ETA, latest validation accuracy)."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


class RunProgress:
    """Context manager owning one reusable tqdm bar; ``bar`` is handed to the trainer."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.done = 0

    def __enter__(self):
        if self.enabled:
            self.bar = tqdm(total=1, unit="step", dynamic_ncols=True, leave=False)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def start(self, trial) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{trial.method} rho={trial.rho:g} seed={trial.seed}")

    def finish(self, row: dict) -> None:
        self.done += 1
        status = row.get("status", "ok")
        acc = row.get("test_acc", float("nan"))
        msg = f"[{self.done}] {row['method']:<22} rho0={row['rho0']:<8g} seed={row['seed']:<3} " \
              f"status={status:<8} test_acc={acc:.4f} grad_evals={row.get('grad_evals', 0)} wall={row.get('wall_s', 0):.1f}s"
        (self.bar.write if self.bar is not None else print)(msg)
