"""Handlers of ``hpo-bench run``, ``hpo-bench worker`` and ``hpo-bench list``, and the output-directory
helpers that ``hpo-bench fidelity`` shares. Imported by :mod:`hpo_bench.cli` only when one of those commands runs
(this module imports torch through the training modules)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from hpo_bench.config import MAX_WORKERS, load_spec, settings
from hpo_bench.engines import get_engine, list_engines
from hpo_bench.errors import SpecError
from hpo_bench.data import DATASETS
from hpo_bench.experiment import run_experiment, selection_spec
from hpo_bench.models import list_models, model_doc
from hpo_bench.pool import TrialPool
from hpo_bench.preflight import preflight
from hpo_bench.progress import RunProgress
from hpo_bench.report import write_report
from hpo_bench.search import get_search_kind, list_search_kinds, search_kind
from hpo_bench.store import ResultsStore, check_out_dir, run_dir_for
from hpo_bench.strategy import get_strategy_class, list_strategies
from hpo_bench.summary import summary_table
from hpo_bench.workers import default_jobs


def _checked(args):
    """(jobs, spec, out) of ``run``/``worker`` once the flags, the spec, ``--out`` and (preflight) what each
    setting meets when it runs are checked; nothing is written before."""
    jobs = min(default_jobs(), MAX_WORKERS) if args.jobs is None else args.jobs
    if not 1 <= jobs <= MAX_WORKERS:
        raise SpecError(f"--jobs: {jobs}; allowed: an integer in [1, {MAX_WORKERS}]")
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f'train.device="{args.device}"')
    spec = load_spec(args.spec, overrides)
    out = Path(args.out)
    check_out_dir(out)
    preflight(spec)  # storages, data, splits, model fit and device of every setting, before anything is written
    return jobs, spec, out


def cmd_run(args) -> int:
    """Every input is checked before anything is written: flags, spec, ``--out``, then (preflight) what
    each setting meets when it runs; only then the run directory and its metadata.json."""
    jobs, spec, out = _checked(args)
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


WORKER_KINDS = ("grid", "sweep")  # the Optuna searches several drivers can share (TPE is asked by its driver)


def cmd_worker(args) -> int:
    """Join the Optuna grid/sweep searches of a spec: claim points of their studies, train them into the
    run directory and tell them, until every point is done; no summary, no report, no metadata.json
    (the ``hpo-bench run`` driver writes those). Several workers, on this machine or on others sharing
    an RDB storage and the output folder, may run at once."""
    jobs, spec, out = _checked(args)
    searches = [(setting, sspec, method) for setting, sspec in settings(spec) for method in sspec.methods
                if method.search is not None and method.search["engine"] == "optuna"
                and method.search["kind"] in WORKER_KINDS and not method.rho_from]
    if not searches:
        raise SpecError(f"spec: {args.spec} has no Optuna grid or sweep search for a worker to join; allowed: a spec "
                        "with a [methods.search] table of engine = \"optuna\" and kind = \"grid\" or \"sweep\"")
    run_dir = run_dir_for(spec, out)
    store = ResultsStore(run_dir)
    print(f"hpo-bench worker: joining {len(searches)} Optuna search(es) of {spec.name!r} in {run_dir}", flush=True)
    t0 = time.perf_counter()
    with RunProgress(enabled=not args.no_progress) as progress, TrialPool(jobs, None) as pool:
        for setting, sspec, method in searches:
            kind = search_kind(method)
            engine = get_engine(kind.cfg.engine, kind.cfg, run_dir, None, pool)
            engine.run_trials(kind.fixed_trials(selection_spec(sspec, method), method, setting), store, progress)
    print(f"hpo-bench worker: every point is done ({time.perf_counter() - t0:.1f} s); results in {run_dir}/trials/")
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
    print(f"datasets: {', '.join(DATASETS)}")
    exp = Path(__file__).resolve().parent.parent / "experiments"
    if exp.is_dir():
        print("experiments:")
        for p in sorted(exp.glob("*.toml")):
            print(f"  {p.relative_to(exp.parent)}")
    return 0
