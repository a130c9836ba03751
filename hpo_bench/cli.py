"""Command line: ``hpo-bench run|worker|list|report|fidelity``.

Every input error (spec, flag, override, data path, output directory) prints one line
``hpo-bench: error: <field>: <problem>; allowed: <values>`` and exits with status 2 before
anything is written.

This module declares the whole command-line surface itself, and each subcommand names its handler
as a ``"module:function"`` string that is imported only when that subcommand runs. That is
deliberate: torch loads only for the commands that train (``run``, ``worker``, ``list``,
``fidelity``), so ``hpo-bench report`` and ``--help`` never import it. Keep the top-level imports of
this module to the standard library, :mod:`hpo_bench.errors` and :mod:`hpo_bench.storage_url` (whose
:func:`~hpo_bench.storage_url.redact` hides passwords in every error line).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from hpo_bench.errors import SpecError, WriteError
from hpo_bench.storage_url import redact
from hpo_bench.workers import default_jobs, start_server

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
# The upper-level metrics of ``hpo-bench fidelity --metric`` (hpo_bench.fidelity.METRICS; a test checks
# that the two agree, since importing fidelity here would import torch).
FIDELITY_METRICS = ("sq_gap", "gap", "val_loss")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        raise SpecError(message.replace("\n", " "))


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
    run.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="runs trained at once in worker processes, one thread each (default: the number of cores); "
                          "also the default concurrency of Optuna and Ray Tune searches (search.workers = 0)")
    run.set_defaults(handler="hpo_bench.commands:cmd_run")

    wrk = sub.add_parser("worker", help="join the Optuna grid/sweep searches of a spec that `hpo-bench run` drives "
                                        "(here or on another machine); writes rows, no report")
    wrk.add_argument("spec", help="the same TOML spec (and --set overrides) as the driver's `hpo-bench run`")
    wrk.add_argument("--out", default="runs", help="the driver's output root, on a filesystem both reach (default: runs/)")
    wrk.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides train.device")
    wrk.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. train.epochs=5")
    wrk.add_argument("--no-progress", action="store_true", help="no progress bar")
    wrk.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="worker processes (default: the number of cores); the searches' search.workers = 0 means N")
    wrk.set_defaults(handler="hpo_bench.commands:cmd_worker")

    lst = sub.add_parser("list", help="list models, strategies, engines and experiments")
    lst.set_defaults(handler="hpo_bench.commands:cmd_list")

    fid = sub.add_parser("fidelity", help="LETS vs exact unrolled hypergradients along one fixed-rho SAM run")
    fid.add_argument("spec", help="path to a TOML spec (data/model/train, first seed, first method's rho)")
    fid.add_argument("--out", default="runs", help="output root (default: runs/)")
    fid.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. train.epochs=2")
    fid.add_argument("--every", type=int, default=5, help="probe every N steps (default 5)")
    fid.add_argument("--unroll", type=int, default=5, help="K of the long exact unroll (default 5)")
    fid.add_argument("--metric", choices=list(FIDELITY_METRICS), default=None,
                     help="upper objective (default: the first method's params.metric, else sq_gap)")
    fid.set_defaults(handler="hpo_bench.fidelity:cmd_fidelity")

    rep = sub.add_parser("report", help="write report.md (or report.html) and figures/ for a results directory")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `hpo-bench run` (<out>/<name>-<digest>)")
    rep.add_argument("--format", choices=["md", "html"], default="md",
                     help="md: report.md + figures/*.png (default); html: one self-contained report.html")
    rep.set_defaults(handler="hpo_bench.report:cmd_report")
    return parser


def _handler(name: str):
    """The function named by a ``"module:function"`` string, importing its module now."""
    module, func = name.split(":")
    return getattr(importlib.import_module(module), func)


def one_line(message: str) -> str:
    """``message`` with every character that would start a new line or hide one (control characters,
    line and paragraph separators) written as its escape, so the error is always one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _check_out_flag(args) -> None:
    """``--out`` as typed: ``Path("")`` would silently mean the current directory."""
    out = getattr(args, "out", None)
    if out is not None and (not out.strip() or "\0" in out):
        raise SpecError(f"--out: {out!r} is not a usable path; allowed: a writable directory, e.g. runs")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        _check_out_flag(args)
        if args.command in ("run", "worker") and (default_jobs() if args.jobs is None else args.jobs) > 1:
            start_server()  # the workers' fork server imports torch while this process does (hpo_bench.workers)
        return _handler(args.handler)(args)
    except Exception as err:
        if not _interrupted(err):
            return _error(err)
    except KeyboardInterrupt:  # workers are stopped by their pools; finished runs are kept
        pass
    print("\nhpo-bench: interrupted; re-run the same command to resume", file=sys.stderr)
    return EXIT_INTERRUPTED


def _interrupted(err: BaseException) -> bool:
    """True if ``err`` was raised while handling a Ctrl-C (a library's clean-up failing half-way, e.g. a
    lock file already gone): it is still an interruption, reported as one."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__context__
    return False


def _error(err: Exception) -> int:
    """One line and exit 2 for the errors a user can act on; anything else is raised again, traceback and all."""
    if isinstance(err, (SpecError, WriteError)):  # WriteError: a results file could not be written (disk full, ...)
        msg = str(err)
    elif isinstance(err, ValueError):  # data/model errors carry the field name first
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    else:
        raise err
    print(f"hpo-bench: error: {one_line(redact(msg))}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
