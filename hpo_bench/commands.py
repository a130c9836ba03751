"""Handlers of ``hpo-bench run`` and ``hpo-bench list``, and the output-directory helpers that
``hpo-bench fidelity`` shares. Imported by :mod:`hpo_bench.cli` only when one of those commands runs
(this module imports torch through the training modules)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from hpo_bench.config import MAX_WORKERS, load_spec
from hpo_bench.engines import list_engines
from hpo_bench.errors import SpecError
from hpo_bench.experiment import run_experiment
from hpo_bench.models import list_models, model_doc
from hpo_bench.pool import default_jobs
from hpo_bench.preflight import preflight
from hpo_bench.report import write_report
from hpo_bench.search import get_search_kind, list_search_kinds
from hpo_bench.store import ResultsStore, check_out_dir, run_dir_for
from hpo_bench.strategy import get_strategy_class, list_strategies
from hpo_bench.summary import summary_table


def cmd_run(args) -> int:
    """Every input is checked before anything is written: flags, spec, ``--out``, then (preflight) what
    each setting meets when it runs; only then the run directory and its metadata.json."""
    jobs = min(default_jobs(), MAX_WORKERS) if args.jobs is None else args.jobs
    if not 1 <= jobs <= MAX_WORKERS:
        raise SpecError(f"--jobs: {jobs}; allowed: an integer in [1, {MAX_WORKERS}]")
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f'train.device="{args.device}"')
    spec = load_spec(args.spec, overrides)
    out = Path(args.out)
    check_out_dir(out)
    preflight(spec)  # data, splits, model fit and device of every setting, before anything is written
    run_dir = run_dir_for(spec, out)
    store = ResultsStore(run_dir)
    store.write_metadata(spec.to_dict(), ["hpo-bench"] + sys.argv[1:])
    t0 = time.perf_counter()
    print(f"hpo-bench: running {spec.name!r} into {run_dir}", flush=True)
    runs = run_experiment(spec, store, device=None, show_progress=not args.no_progress, jobs=jobs)
    print(summary_table(runs, store.read_table("searches")))
    print(f"\nwall time {time.perf_counter() - t0:.1f} s; results in {run_dir}/ (runs.parquet, curves.parquet, metadata.json)")
    if spec.report and not args.no_report:
        path = write_report(run_dir)
        print(f"report: {path}")
    return 0


def cmd_list(args) -> int:
    print("models:")
    for name in list_models():
        print(f"  {name:<14} {model_doc(name)}")
    print("strategies:")
    for name in list_strategies():
        print(f"  {name:<14} {get_strategy_class(name).summary_doc}")
    print("search kinds:")
    for name in list_search_kinds():
        print(f"  {name:<14} {get_search_kind(name).summary_doc}")
    print(f"engines: {', '.join(list_engines())}")
    print("datasets: mnist1d, cifar10, cifar100")
    exp = Path(__file__).resolve().parent.parent / "experiments"
    if exp.is_dir():
        print("experiments:")
        for p in sorted(exp.glob("*.toml")):
            print(f"  {p.relative_to(exp.parent)}")
    return 0
