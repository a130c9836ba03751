"""Command line: ``hpo-bench run|list|report|fidelity``.

Every input error (spec, flag, override, data path, output directory) prints one line
``hpo-bench: error: <field>: <problem>; allowed: <values>`` and exits with status 2 before
anything is written.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from hpo_bench.config import SpecError, load_spec, settings

EXIT_USAGE = 2
# Modules that add a subcommand: each defines ``add_cli(subparsers)``.
PLUGINS: tuple[str, ...] = ("hpo_bench.fidelity", "hpo_bench.report")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        raise SpecError(message.replace("\n", " "))


def check_out_dir(out: Path) -> None:
    """Raise SpecError unless ``out`` is (or can be created as) a writable directory."""
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out: {str(out)!r} exists and is not a directory; allowed: a writable directory")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError(f"--out: {str(out)!r} is not writable; allowed: a writable directory")


def _run_dir(spec, out: Path) -> Path:
    return out / f"{spec.name}-{spec.digest()}"


def cmd_run(args) -> int:
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f'train.device="{args.device}"')
    spec = load_spec(args.spec, overrides)
    out = Path(args.out)
    check_out_dir(out)
    import dataclasses

    from hpo_bench.execute import data_for

    for _, sspec in settings(spec):  # load (and validate) every data set before writing anything
        data_for(dataclasses.asdict(sspec.data))
    from hpo_bench.experiment import run_experiment
    from hpo_bench.store import ResultsStore
    from hpo_bench.summary import summary_table

    run_dir = _run_dir(spec, out)
    store = ResultsStore(run_dir)
    store.write_metadata(spec.to_dict(), ["hpo-bench"] + sys.argv[1:])
    t0 = time.perf_counter()
    print(f"hpo-bench: running {spec.name!r} into {run_dir}", flush=True)
    runs = run_experiment(spec, store, device=None, show_progress=not args.no_progress)
    print(summary_table(runs, store.read_table("searches")))
    print(f"\nwall time {time.perf_counter() - t0:.1f} s; results in {run_dir}/ (runs.parquet, curves.parquet, metadata.json)")
    if spec.report and not args.no_report:
        from hpo_bench.report import write_report

        path = write_report(run_dir)
        print(f"report: {path}")
    return 0


def cmd_list(args) -> int:
    from hpo_bench.engines import list_engines
    from hpo_bench.models import list_models, model_doc
    from hpo_bench.strategy import get_strategy_class, list_strategies

    print("models:")
    for name in list_models():
        print(f"  {name:<14} {model_doc(name)}")
    print("strategies:")
    for name in list_strategies():
        print(f"  {name:<14} {get_strategy_class(name).summary_doc}")
    print("search kinds: grid, tpe, asha")
    print(f"engines: {', '.join(list_engines())}")
    print("datasets: mnist1d, cifar10, cifar100")
    exp = Path(__file__).resolve().parent.parent / "experiments"
    if exp.is_dir():
        print("experiments:")
        for p in sorted(exp.glob("*.toml")):
            print(f"  {p.relative_to(exp.parent)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpo-bench", description="SAM perturbation-radius selection benchmark")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run an experiment spec (skips runs already done)")
    run.add_argument("spec", help="path to a TOML spec, e.g. experiments/quick.toml")
    run.add_argument("--out", default="runs", help="output root (default: runs/)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. train.epochs=5")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-report", action="store_true", help="do not write report.md at the end")
    run.set_defaults(func=cmd_run)
    lst = sub.add_parser("list", help="list models, strategies, engines and experiments")
    lst.set_defaults(func=cmd_list)
    for module in PLUGINS:
        importlib.import_module(module).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SpecError as err:
        print(f"hpo-bench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:  # data/model errors carry the field name first
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"hpo-bench: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
