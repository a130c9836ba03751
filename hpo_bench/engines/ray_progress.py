"""Per-run console lines and ETA for Ray Tune searches, printed by the driver.

Tune itself runs with ``verbose = 0``; the callback of :func:`run_lines`, a Tune ``Callback`` living in
the driver, prints each run's line through the experiment's :class:`~hpo_bench.progress.RunProgress`
— the same line (method, ρ, seed, status, test accuracy, grad evals, wall time, ``k/n``, ETA) as
every other batch of runs. A grid/ASHA trial's row is read from the results store when its final
report arrives; a TPE trial reports once per seed, each report naming the run it finished.
ASHA-stopped runs get their line when the driver writes their rows after ``fit()``. (The class is
made on first use, so importing the engines does not import Ray.)
"""
from __future__ import annotations

_CLASS = None


def _lines_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from ray.tune import Callback

    class RunLines(Callback):
        """Prints the line of each run a Tune trial finishes (its row is in ``store``)."""

        def __init__(self, store, progress):
            self.store, self.progress = store, progress
            self.seen: set[str] = set()

        def __getstate__(self):  # Tune saves its callbacks with the experiment: the console is not saved
            return {"store": None, "progress": None, "seen": set()}

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("phase", "final") == "final" and "run_id" in result:  # not an epoch of a grid trial
                self.show(result["run_id"])

        def show(self, run_id: str) -> None:
            """Print ``run_id``'s line once, if the store has its row."""
            if self.progress is None or self.store is None or run_id in self.seen or not self.store.has(run_id):
                return
            self.seen.add(run_id)
            self.progress.finish(self.store.load_row(run_id))

    _CLASS = RunLines
    return _CLASS


def run_lines(store, progress):
    """A Tune callback printing, in the driver, the line of every run the experiment finishes."""
    return _lines_class()(store, progress)
