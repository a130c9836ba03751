"""Running the search of a method through its engine and summarizing it (ρ*, cost, anytime curve)."""
from __future__ import annotations

import pandas as pd

from hpo_bench.config import SearchConfig
from hpo_bench.engines import get_engine
from hpo_bench.selection import summarize
from hpo_bench.trial import grid_trials


def run_search(spec, method, setting, store, device=None, progress=None) -> list[dict]:
    """Run the search of ``method`` through its engine; return its summary and anytime curve."""
    cfg = SearchConfig(**method.search)
    tag = f"{cfg.kind}/{cfg.engine}"
    engine = get_engine(cfg.engine, cfg, store.root, device)
    if cfg.kind == "grid":
        rows = engine.run_trials(grid_trials(spec, method, setting, tag), store, progress)
    else:
        rows = engine.run_adaptive(spec, method, setting, tag, store, progress)
    return [summarize(method.label, method.strategy, tag, setting, pd.DataFrame(rows))]
