"""Optuna pruners on the grid: a run reports each epoch's validation accuracy and stops when pruned.

``search.pruner`` (engine ``optuna``, kind ``grid``):

``successive-halving``
    ``SuccessiveHalvingPruner(min_resource=asha_grace, reduction_factor=asha_reduction,
    min_early_stopping_rate=0)``: rung k is reached at epoch ``asha_grace · η^k``; a run whose
    validation accuracy there is not in the top 1/η of the runs that reached the rung so far is
    pruned (asynchronous successive halving, the rule of Ray Tune's ASHA, Li et al. 2020).
``hyperband``
    ``HyperbandPruner(min_resource=asha_grace, max_resource=train.epochs,
    reduction_factor=asha_reduction)``: several successive-halving brackets with different early
    stopping rates; Optuna assigns each trial to a bracket by its number (Li et al. 2018).

The resource is the epoch: the run's step in ``trial.report`` is its epoch number, so an evaluation
every ``train.eval_every`` epochs reports at those epochs. Each run decides for itself, in the
process that trains it: :class:`EpochPruner` is the run's ``on_epoch`` hook; after each evaluated
epoch it writes the intermediate value to the run's Optuna trial and asks the pruner, which reads
the other trials from the same storage (journal file or RDB). A pruned run raises
:class:`~hpo_bench.trainer.RunStopped`, so the trainer ends it as status ``"stopped"`` with the
epochs it trained, its ledger up to that epoch (the whole cost it computed) and reason
``"pruned by Optuna's <pruner> after epoch k"``; the driver tells its trial ``PRUNED``. Like
ASHA's stopped runs, pruned runs count in the search cost and are never selected.

Which runs are pruned depends on the order in which runs reach the rungs: with ``workers = 1`` the
order, and so the search, is fixed by the spec; with several workers it depends on their timing,
as with every asynchronous scheduler.
"""
from __future__ import annotations

from dataclasses import dataclass

from hpo_bench.engines.optuna_storage import storage_for
from hpo_bench.trainer import RunStopped

PRUNERS = ("none", "successive-halving", "hyperband")
_NAMES = {"successive-halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner"}


def make_pruner(name: str, grace: int, reduction: float, epochs: int):
    """The Optuna pruner of ``search.pruner`` (module doc); None for ``"none"``."""
    import optuna

    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(grace), reduction_factor=int(reduction),
                                                      min_early_stopping_rate=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(grace), max_resource=max(int(grace), int(epochs)),
                                              reduction_factor=int(reduction))
    return None


@dataclass
class EpochPruner:
    """The ``on_epoch`` hook of one pruned run: report the epoch's ``val_acc`` to Optuna trial
    ``trial_id`` of ``study_name`` and stop the run when the pruner says so.

    Picklable (it holds names, not connections): the pool sends it to the worker process, which opens
    the storage on the first epoch. ``storage`` is ``search.storage``; ``run_dir`` places the default
    journal file.
    """

    storage: str
    run_dir: str
    study_name: str
    trial_id: int
    pruner: str
    grace: int
    reduction: float
    epochs: int

    def __post_init__(self):
        self._study = None
        self._pruner = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__post_init__()

    def _open(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.load_study(study_name=self.study_name, storage=storage_for(self.storage, self.run_dir))
        self._pruner = make_pruner(self.pruner, self.grace, self.reduction, self.epochs)

    def __call__(self, row: dict) -> None:
        if self._study is None:
            self._open()
        value, epoch = float(row["val_acc"]), int(row["epoch"])
        storage = self._study._storage
        if value == value:  # a NaN accuracy (diverging) is not reported; the trainer stops such runs itself
            storage.set_trial_intermediate_value(self.trial_id, epoch, value)
        if self._pruner.prune(self._study, storage.get_trial(self.trial_id)):
            raise RunStopped("stopped", f"pruned by Optuna's {_NAMES[self.pruner]} after epoch {epoch}",
                             int(row["step"]))


def is_pruned(row: dict) -> bool:
    """Whether a stored run was stopped by an Optuna pruner."""
    return row.get("status") == "stopped" and str(row.get("reason", "")).startswith("pruned by Optuna")
