"""Mid-run checkpoints (``train.checkpoint_every``): a run's full state, so a killed run resumes bit for bit.

Every ``checkpoint_every`` epochs, after the epoch's evaluation and before its ``on_epoch`` callback
(which may hand the checkpoint on: the Ray engine reports it as a Tune checkpoint), the trainer writes ``<results dir>/checkpoints/<run_id>.pt`` (:meth:`ResultsStore.checkpoint_path`)
atomically: a temporary file beside it, fsynced and renamed, so a kill leaves the previous
checkpoint or the new one, never a torn one. It holds everything the rest of the run depends on:

* the model's parameters and buffers (BatchNorm running statistics) and the optimizer's state
  (the SGD momentum buffers);
* the strategy's state (:meth:`hpo_bench.strategy.Strategy.state_dict`: LETS's ν and Adam moments,
  AE-SAM's EMAs, SAMAR's λ and ratio statistics, LookSAM's stored direction, ...);
* every random stream: the trainer's generators (:mod:`hpo_bench.seeds`: batch order, augmentation,
  the auxiliary streams with their current permutation and position), torch's global CPU (and
  CUDA) generators, NumPy's and Python's global generators;
* the ledger so far (grad and forward evaluations, wall and device seconds);
* the per-epoch rows and per-step traces so far (the best epoch is chosen from these rows when the
  run ends), the next epoch and the step counter.

A trial that has a checkpoint and no finished row (:func:`hpo_bench.execute.execute_trial`) builds its
trainer as usual, restores all of it and continues with the next epoch. On CPU it ends with the same
bits as the run that was never interrupted: metrics, curves, grad/fwd counts and strategy summary
(wall and device seconds are the time actually spent, the interrupted part included). A checkpoint
that cannot be read, belongs to another run or format, or does not fit the run's model, optimizer or
strategy is moved to ``checkpoints/quarantine/`` with one warning line, and the run starts over. A
checkpoint that cannot be written (disk full, ...) is named in one warning line and the run goes on
without further checkpoints. The checkpoint is removed once the run's row is written, unless
``train.keep_checkpoints``, which also writes one after the last epoch: the kept file then holds the
finished run's final state. Population training (:mod:`hpo_bench.population`) never checkpoints: runs
with ``checkpoint_every > 0`` are trained one by one.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hpo_bench.errors import WriteError
from hpo_bench.store import ResultsStore, atomic_path, notice

if TYPE_CHECKING:  # pragma: no cover
    from hpo_bench.trainer import RunResult, StepContext, Trainer

FORMAT = 1  # the layout of a checkpoint file; another value is set aside, never misread


class CheckpointError(RuntimeError):
    """A checkpoint was read but does not fit this run; the caller sets it aside and starts over."""


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:120] if text else "") or type(err).__name__


def shared_objects(trainer: "Trainer", ctx: "StepContext") -> dict:
    """The objects a strategy may hold without owning them, by name (restored as the new run's objects)."""
    refs = {"trainer": trainer, "ctx": ctx, "model": trainer.model, "optimizer": trainer.optimizer,
            "ledger": trainer.ledger, "data": trainer.data, "param_list": trainer.params,
            "train_gen": trainer.train_gen, "aug_gen": trainer.aug_gen, "extra_aug_gen": trainer.extra_aug_gen}
    refs.update({f"extra_gen:{s}": g for s, g in trainer.extra_gens.items()})
    refs.update({f"param:{n}": p for n, p in trainer.model.named_parameters()})
    refs.update({f"buffer:{n}": b for n, b in trainer.model.named_buffers()})
    return refs


# ----------------------------------------------------------------------------- random streams
def rng_state(trainer: "Trainer") -> dict:
    """Every random stream a run draws from, as plain data."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"train": trainer.train_gen.get_state(), "aug": trainer.aug_gen.get_state(),
            "extra": {s: g.get_state() for s, g in trainer.extra_gens.items()},
            "extra_aug": trainer.extra_aug_gen.get_state(),
            "extra_perm": dict(trainer.extra_perm), "extra_pos": dict(trainer.extra_pos),
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if trainer.cuda else [],
            "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_state(trainer: "Trainer", state: dict) -> None:
    trainer.train_gen.set_state(state["train"])
    trainer.aug_gen.set_state(state["aug"])
    for source, gen in trainer.extra_gens.items():
        gen.set_state(state["extra"][source])
    trainer.extra_aug_gen.set_state(state["extra_aug"])
    trainer.extra_perm.update(state["extra_perm"])
    trainer.extra_pos.update(state["extra_pos"])
    torch.set_rng_state(state["torch"])
    if trainer.cuda and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])


# ----------------------------------------------------------------------------- the ledger's clocks
def _device_seconds(ledger) -> float:
    """Device seconds since ``ledger.start()`` (read from the ledger's clock origins, as ``stop`` does)."""
    if ledger._events is not None:  # pragma: no cover - GPU only
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return ledger._events[0].elapsed_time(end) / 1000.0
    return time.process_time() - ledger._c0


def _placer(device: torch.device):
    """``map_location`` that puts CUDA tensors on the run's device and leaves CPU ones (generator states) alone."""
    def place(storage, location: str):
        if location.startswith("cpu"):
            return storage
        return torch.serialization.default_restore_location(storage, str(device))
    return place


class Checkpointer:
    """The checkpoint of one run: when to write it, writing, reading, restoring, removing.

    ``every`` = 0 writes none but still resumes from a checkpoint left by an earlier attempt (and
    removes it at the end), so switching checkpoints off does not lose a run's progress.
    """

    def __init__(self, store: ResultsStore, run_id: str, every: int = 0, keep: bool = False):
        self.store, self.run_id, self.every, self.keep = store, run_id, int(every), bool(keep)
        self.path: Path = store.checkpoint_path(run_id)
        self.device_offset = 0.0  # device seconds spent before this attempt resumed the run
        self.disabled = False  # a write failed: no further attempts in this run

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether a checkpoint is written after epoch index ``epoch`` (0-based) of ``epochs``."""
        if not self.every or self.disabled:
            return False
        if epoch + 1 == epochs:  # the row follows at once: only a kept checkpoint needs the final state
            return self.keep
        return (epoch + 1) % self.every == 0

    # -- writing -------------------------------------------------------------------------------
    def save(self, trainer: "Trainer", ctx: "StepContext", result: "RunResult", epoch: int) -> None:
        """Write the state after epoch index ``epoch`` atomically; a failed write is one warning line."""
        ledger = trainer.ledger
        state = {"format": FORMAT, "run_id": self.run_id, "epoch": epoch + 1, "step": ctx.step,
                 "model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                 "strategy": trainer.strategy.state_dict(shared_objects(trainer, ctx)),
                 "rng": rng_state(trainer),
                 "ledger": {"grad_evals": ledger.grad_evals, "fwd_evals": ledger.fwd_evals,
                            "wall_s": ledger.elapsed(), "device_s": self.device_offset + _device_seconds(ledger)},
                 "epochs": result.epochs, "traces": result.traces}
        try:
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)
        except WriteError as err:
            self.disabled = True
            notice(f"checkpoint not written: {err}; the run goes on without checkpoints")

    # -- reading -------------------------------------------------------------------------------
    def load(self, device: torch.device) -> dict | None:
        """The checkpoint's state, or None when there is none (or it was damaged and set aside)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=_placer(torch.device(device)), weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as err:  # torn or foreign file: UnpicklingError, RuntimeError, EOFError, ...
            self.set_aside(f"{self.path} cannot be read ({_first_line(err)})")
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            self.set_aside(f"{self.path} is not a checkpoint of format {FORMAT}")
            return None
        if state.get("run_id") != self.run_id:
            self.set_aside(f"{self.path} holds the checkpoint of another run ({str(state.get('run_id'))[:40]!r})")
            return None
        return state

    def restore(self, trainer: "Trainer", ctx: "StepContext", result: "RunResult", state: dict) -> int:
        """Put ``state`` into a freshly built trainer (after ``strategy.setup`` and ``ledger.start``);
        return the next epoch index. Raises :class:`CheckpointError` when it does not fit."""
        try:
            trainer.model.load_state_dict(state["model"])
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.strategy.load_state_dict(state["strategy"], shared_objects(trainer, ctx))
            set_rng_state(trainer, state["rng"])
            led, ledger = state["ledger"], trainer.ledger
            ledger.grad_evals, ledger.fwd_evals = int(led["grad_evals"]), int(led["fwd_evals"])
            ledger._t0 -= float(led["wall_s"])  # elapsed() and wall_s count the time before the kill
            self.device_offset = float(led["device_s"])
            result.epochs[:], result.traces[:] = list(state["epochs"]), list(state["traces"])
            ctx.step, ctx.epoch = int(state["step"]), int(state["epoch"])
            return int(state["epoch"])
        except Exception as err:
            raise CheckpointError(f"{self.path} does not fit this run ({type(err).__name__}: {_first_line(err)})") \
                from err

    def stopped(self, ledger) -> None:
        """After ``ledger.stop()``: add the device seconds spent before this attempt."""
        ledger.device_s += self.device_offset

    # -- the end -------------------------------------------------------------------------------
    def set_aside(self, problem: str) -> None:
        self.store.set_aside_checkpoint(self.run_id, problem)

    def finish(self) -> None:
        """The run's row is written: remove the checkpoint unless ``keep``."""
        if not self.keep:
            self.path.unlink(missing_ok=True)
