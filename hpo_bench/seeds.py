"""The random streams of a run, all derived from its seed (METHODS.md §1).

Training batch order and training augmentation depend only on the run seed; the auxiliary streams
that strategies draw validation (or extra training) batches from have their own generators, so
drawing from them never disturbs the training order. The trainer and the batched grid both take
their generators from here, so they see the same batches.
"""
from __future__ import annotations

import torch

VAL_STREAM, AUG_STREAM = 10_007, 20_011  # seed offsets of the auxiliary and augmentation streams
EXTRA_SOURCES = {"val": 1, "train": 2}  # auxiliary stream → multiple of VAL_STREAM


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_order(seed: int) -> torch.Generator:
    """Permutes the training set once per epoch."""
    return _generator(seed)


def train_augment(seed: int) -> torch.Generator:
    """Draws the training batches' augmentation."""
    return _generator(seed + AUG_STREAM)


def extra_order(seed: int, source: str) -> torch.Generator:
    """Permutes the auxiliary stream ``source`` ('val': held-out split, 'train': training set)."""
    return _generator(seed + EXTRA_SOURCES[source] * VAL_STREAM)


def extra_augment(seed: int) -> torch.Generator:
    """Draws the auxiliary training batches' augmentation (never touches the training stream's)."""
    return _generator(seed + 2 * AUG_STREAM)
