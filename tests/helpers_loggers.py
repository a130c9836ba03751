"""Loggers for tests/test_loggers.py: each call appends one line to the file named by $HPO_BENCH_TEST_RECORD."""
from __future__ import annotations

import os

from ray.tune import Callback

NOT_A_CALLBACK = 3


def _record(line: str) -> None:
    with open(os.environ["HPO_BENCH_TEST_RECORD"], "a") as fh:
        fh.write(line + "\n")


class Recorder(Callback):
    """A user's Tune callback, made without arguments."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        _record(f"result {trial.config['run_id']}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        _record(f"complete {trial.config['run_id']}")


def record_trial(study, trial) -> None:
    """A user's Optuna callback."""
    _record(f"trial {trial.number} {trial.state.name} {trial.user_attrs.get('run_id', '-')}")
