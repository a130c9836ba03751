"""Every ρ-selection strategy, one module each (timm-style: a class decorated with ``@register_strategy``).

Per-run strategies (the trainer's hooks, :class:`hpo_bench.strategy.Strategy`):

* :mod:`searchers.fixed`      — ERM, SAM and ASAM at a fixed ρ
* :mod:`searchers.lets`       — LETS-SAM / LETS-ASAM: ρ learned by the bilevel gradient of Algorithm 1
* :mod:`searchers.hypergrad`  — ρ learned by the exact unrolled hypergradient (``higher`` / ``torch.func``)
* :mod:`searchers.ae_sam`     — AE-SAM: SAM steps only where the gradient norm says the region is sharp
* :mod:`searchers.looksam`    — LookSAM / AE-LookSAM: reuse of SAM's orthogonal component
* :mod:`searchers.samar`      — SAMAR: SAM with a weight λ adapted from a sharpness ratio

Search kinds over ρ (which trials an engine runs and how ρ* is chosen):
:mod:`searchers.searches` — ``grid``, ``tpe``, ``asha``, ``sweep``.

Importing this package registers everything with :mod:`hpo_bench`'s registries; ``hpo_bench``
finds it through the ``hpo_bench.strategies`` entry point and never imports it directly.
"""
from __future__ import annotations

from searchers import (  # noqa: F401  (registration)
    ae_sam,
    fixed,
    hypergrad,
    lets,
    looksam,
    samar,
    searches,  # noqa: F401  (search kinds: grid, tpe, asha, sweep)
)
