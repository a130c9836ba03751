"""CLI end to end on a tiny spec, resume-by-skip, metadata, and the bad-input table (exit 2, one line, nothing written)."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hpo_bench.cli import main
from hpo_bench.config import load_spec
from hpo_bench.store import run_dir_for
from tests.conftest import ROOT

TINY = ROOT / "experiments" / "tiny.toml"


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def only_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1
    return dirs[0]


def test_run_tiny_spec_end_to_end_and_skip_on_rerun(tmp_path, capsys):
    out = tmp_path / "runs"
    code, stdout, _ = run_cli(["run", str(TINY), "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    assert "test acc %" in stdout and "SAM" in stdout
    run_dir = only_dir(out)
    runs = pd.read_parquet(run_dir / "runs.parquet")
    assert sorted(runs["method"]) == ["ASAM", "ERM", "SAM"]
    assert (runs["status"] == "ok").all()
    steps = runs["steps"].iloc[0]
    per_step = dict(zip(runs["strategy"], runs["grad_evals"] / steps))
    assert per_step == {"erm": 1, "sam": 2, "asam": 2}
    curves = pd.read_parquet(run_dir / "curves.parquet")
    assert {"run_id", "scope", "epoch", "step", "metric", "value"} <= set(curves.columns)
    assert set(curves["run_id"]) == set(runs["run_id"])
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["spec"]["name"] == "tiny" and meta["versions"]["torch"] and "hardware" in meta and "git_commit" in meta
    # a re-run finds every run done and trains nothing
    finished = dict(zip(runs["run_id"], runs["finished_at"]))
    code, stdout, _ = run_cli(["run", str(TINY), "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    again = pd.read_parquet(run_dir / "runs.parquet")
    assert dict(zip(again["run_id"], again["finished_at"])) == finished
    assert len(list((run_dir).iterdir())) == len(list(run_dir.iterdir()))  # same directory reused


def test_set_override_changes_output_dir_and_values(tmp_path, capsys):
    out = tmp_path / "runs"
    code, _, _ = run_cli(["run", str(TINY), "--out", str(out), "--no-progress", "--set", "train.epochs=1",
                          "--set", "methods.1.rho=0.1"], capsys)
    assert code == 0
    runs = pd.read_parquet(only_dir(out) / "runs.parquet")
    assert set(runs["epochs_done"]) == {1}
    assert runs.loc[runs["method"] == "SAM", "rho0"].item() == 0.1


def test_list_prints_registries(capsys):
    code, stdout, _ = run_cli(["list"], capsys)
    assert code == 0
    for name in ("mnist1d_cnn", "resnet18", "wrn28_10", "sam", "asam", "erm", "ae-sam", "samar", "optuna", "ray"):
        assert name in stdout


TINY_TEXT = TINY.read_text()


def _spec(tmp_path, text=None, suffix=".toml", **replace):
    text = TINY_TEXT if text is None else text
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / f"spec{suffix}"
    p.write_text(text)
    return str(p)


def _m(extra):  # append a method
    return TINY_TEXT + "\n" + extra


# (id, spec text or None for TINY, replacements, extra CLI args, substring the error must contain)
BAD = [
    ("unknown-strategy", None, {'strategy = "asam"': 'strategy = "bogus"'}, [], "methods[2].strategy"),
    ("unknown-model", None, {'name = "mnist1d_mlp"': 'name = "vgg99"'}, [], "model.name"),
    ("unknown-dataset", None, {'dataset = "mnist1d"': 'dataset = "imagenet"'}, [], "data.dataset"),
    ("unknown-engine", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\nengine="dask"\ngrid=[0.1]'), {}, [], "search.engine"),
    ("negative-rho", None, {"rho = 0.05": "rho = -0.05"}, [], "methods[1].rho"),
    ("zero-rho", None, {"rho = 0.05": "rho = 0"}, [], "methods[1].rho"),
    ("empty-grid", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\ngrid=[]'), {}, [], "search.grid"),
    ("duplicate-grid", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\ngrid=[0.1, 0.1]'), {}, [], "search.grid"),
    ("non-integer-seed", None, {"seeds = [0]": "seeds = [0.5]"}, [], "seeds[0]"),
    ("string-seed", None, {"seeds = [0]": 'seeds = ["a"]'}, [], "seeds[0]"),
    ("empty-seeds", None, {"seeds = [0]": "seeds = []"}, [], "seeds"),
    ("duplicate-seeds", None, {"seeds = [0]": "seeds = [1, 1]"}, [], "seeds"),
    ("val-fraction-1", None, {"num_samples = 500": "num_samples = 500\nval_fraction = 1.0"}, [], "data.val_fraction"),
    ("label-noise-1", None, {"num_samples = 500": "num_samples = 500\nlabel_noise = 1.0"}, [], "data.label_noise"),
    ("malformed-toml", "name = \n[[methods", {}, [], "malformed TOML"),
    ("nan-lr", None, {"epochs = 2": "epochs = 2\nlr = nan"}, [], "train.lr"),
    ("bool-as-number", None, {"epochs = 2": "epochs = true"}, [], "train.epochs"),
    ("string-as-int", None, {"epochs = 2": 'epochs = "ten"'}, [], "train.epochs"),
    ("zero-epochs", None, {"epochs = 2": "epochs = 0"}, [], "train.epochs"),
    ("negative-batch", None, {"batch_size = 50": "batch_size = -5"}, [], "train.batch_size"),
    ("unknown-schedule", None, {"epochs = 2": 'epochs = 2\nschedule = "step"'}, [], "train.schedule"),
    ("unknown-top-key", None, {"seeds = [0]": "seeds = [0]\nseedz = 3"}, [], "seedz"),
    ("unknown-strategy-param", None, {'rho = 0.5': 'rho = 0.5\nparams = {zeta = 1}'}, [], "methods[2].params.zeta"),
    ("bad-storage-url", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\nengine="optuna"\ngrid=[0.1]\nstorage="mongo://x"'), {}, [], "search.storage"),
    ("asha-needs-ray", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\nkind="asha"\nengine="optuna"\ngrid=[0.1]'), {}, [], "search.engine"),
    ("tpe-not-local", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\nkind="tpe"'), {}, [], "search.engine"),
    ("duplicate-label", None, {'label = "ASAM"': 'label = "SAM"'}, [], "methods[2].label"),
    ("ae-lambda-order", _m('[[methods]]\nlabel="AE"\nstrategy="ae-sam"\nparams={lambda1=2.0, lambda2=1.0}'), {}, [], "params.lambda1"),
    ("vary-unknown", None, {"seeds = [0]": 'seeds = [0]\n[vary]\n"data.bogus" = [1]\n'}, [], "vary.data.bogus"),
    ("rho-list-with-search", _m('[[methods]]\nlabel="G"\nstrategy="sam"\nrho=[0.1,0.2]\n[methods.search]\ngrid=[0.1]'), {}, [], "rho"),
    ("cifar-missing-root", None, {'dataset = "mnist1d"': 'dataset = "cifar10"\ndata_root = "/nonexistent/cifar"',
                                  'name = "mnist1d_mlp"': 'name = "linear"'}, [], "data.data_root"),
    ("unknown-set-key", None, {}, ["--set", "train.epochz=3"], "train.epochz"),
    ("bad-dtype", None, {}, ["--set", "train.dtype=float16"], "train.dtype"),
    ("set-without-equals", None, {}, ["--set", "train.epochs"], "--set"),
    ("set-bad-index", None, {}, ["--set", "methods.9.rho=1"], "methods.9"),
    ("device-cuda-without-gpu", None, {}, ["--device", "cuda"], "train.device"),
    ("bad-device-flag", None, {}, ["--device", "tpu"], "--device"),
    ("out-is-a-file", None, {}, ["--out", "@FILE@/sub"], "--out"),
    # data folders: a file, a corrupt MNIST-1D cache, CIFAR requested offline with an empty folder
    ("data-root-is-a-file", None, {"num_samples = 500": 'num_samples = 500\ndata_root = "@FILE@"'}, [], "data.data_root"),
    ("data-root-under-a-file", None, {"num_samples = 500": 'num_samples = 500\ndata_root = "@FILE@/sub"'}, [],
     "data.data_root"),
    ("corrupt-mnist1d-cache", None, {"num_samples = 500": 'num_samples = 500\ndata_root = "@CORRUPT@"'}, [],
     "data.data_root"),
    ("cifar-offline-empty-root", None, {'dataset = "mnist1d"': 'dataset = "cifar10"\ndata_root = "@EMPTY@"',
                                        'name = "mnist1d_mlp"': 'name = "linear"'}, [], "data.data_root"),
    ("empty-data-root", None, {"num_samples = 500": 'num_samples = 500\ndata_root = ""'}, [], "data.data_root"),
    ("vary-data-root-is-a-file", None, {"seeds = [0]": 'seeds = [0]\nvary = { "data.data_root" = [".cache/data", "@FILE@"] }'},
     [], "data.data_root"),
    # values only a vary product or an override produces
    ("vary-model-does-not-fit", None, {"seeds = [0]": 'seeds = [0]\nvary = { "model.name" = ["mnist1d_mlp", "resnet18"] }'},
     [], "model.name"),
    ("vary-float-for-integer", None, {"seeds = [0]": 'seeds = [0]\nvary = { "train.epochs" = [1, 1.5] }'}, [],
     "vary.train.epochs[1]"),
    ("set-empty-validation-split-with-grid", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\ngrid=[0.1]'),
     {}, ["--set", "data.val_fraction=0"], "data.val_fraction"),
    ("set-non-ascii-index", None, {}, ["--set", "methods.\u00b2.rho=1"], "--set methods"),
    ("set-into-a-scalar", None, {}, ["--set", "train.epochs.x=1"], "--set train.epochs"),
    # values that used to pass, or to fail only after metadata.json was written
    ("key-with-a-newline", None, {"seeds = [0]": 'seeds = [0]\n"a\\nb" = 1'}, [], "unknown key"),
    ("integer-too-long-to-read", None, {"epochs = 2": "epochs = 1" + "0" * 5000}, [], "spec:"),
    ("hex-integer-beyond-int-max", None, {"epochs = 2": "epochs = 0x" + "f" * 5000}, [], "train.epochs"),
    ("tpe-with-a-grid", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\nkind="tpe"\nengine="optuna"\ngrid=5'),
     {}, [], "search.grid"),
    ("ray-address-not-host-port", _m('[[methods]]\nlabel="G"\nstrategy="sam"\n[methods.search]\nengine="ray"\ngrid=[0.1]\n'
                                     'address="!!bogus"'), {}, [], "search.address"),
    ("threads-beyond-limit", None, {"epochs = 2": "epochs = 2\nthreads = 2147483647"}, [], "train.threads"),
    ("label-with-a-newline", None, {'label = "ERM"': 'label = "E\\nRM"'}, [], "methods[0].label"),
    ("jobs-zero", None, {}, ["--jobs", "0"], "--jobs"),
    ("jobs-beyond-limit", None, {}, ["--jobs", "100000"], "--jobs"),
    ("empty-out", None, {}, ["--out", ""], "--out"),
    ("out-run-dir-is-a-file", None, {}, ["--out", "@RUNDIR_FILE@"], "--out"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    name, text, repl, extra, needle = case
    if name == "device-cuda-without-gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    corrupt, empty = tmp_path / "corrupt", tmp_path / "empty"
    corrupt.mkdir()
    empty.mkdir()
    (corrupt / "mnist1d_n500_s42.npz").write_bytes(b"not an npz archive")
    places = {"@FILE@": str(blocker), "@CORRUPT@": str(corrupt), "@EMPTY@": str(empty)}
    repl = {old: functools.reduce(lambda t, kv: t.replace(*kv), places.items(), new) for old, new in repl.items()}
    spec = _spec(tmp_path, text, **repl)
    out = tmp_path / "out"
    if "@RUNDIR_FILE@" in extra:  # the spec's run directory exists as a file under an existing --out
        occupied = tmp_path / "occupied"
        occupied.mkdir()
        run_dir_for(load_spec(spec), occupied).write_text("x")
        places["@RUNDIR_FILE@"] = str(occupied)
    extra = [functools.reduce(lambda t, kv: t.replace(*kv), places.items(), e) for e in extra]
    if "--out" not in extra:
        extra = extra + ["--out", str(out)]
    code, stdout, stderr = run_cli(["run", spec, "--no-progress", *extra], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("hpo-bench: error: ") and needle in lines[0], lines[0]
    assert not out.exists()
    if "@RUNDIR_FILE@" in places:  # the existing --out is left as it was
        assert [p.read_text() for p in (tmp_path / "occupied").iterdir()] == ["x"]


def test_missing_spec_file_and_wrong_suffix(tmp_path, capsys):
    code, _, err = run_cli(["run", str(tmp_path / "nope.toml")], capsys)
    assert code == 2 and "spec:" in err
    y = tmp_path / "s.yaml"
    y.write_text("name: x")
    code, _, err = run_cli(["run", str(y)], capsys)
    assert code == 2 and ".toml" in err


def test_bad_input_count_meets_issue_minimum():
    assert len(BAD) + 2 >= 25


def test_rho_from_runs_a_method_at_an_earlier_search_rho_star(tmp_path, capsys):
    text = TINY_TEXT + ('\n[[methods]]\nlabel = "Grid"\nstrategy = "sam"\n[methods.search]\ngrid = [0.01, 0.3]\n'
                        '\n[[methods]]\nlabel = "AE-SAM at rho*"\nstrategy = "ae-sam"\nrho_from = "Grid"\n')
    spec = _spec(tmp_path, text)
    code, _, _ = run_cli(["run", spec, "--out", str(tmp_path / "o"), "--no-progress", "--no-report"], capsys)
    assert code == 0
    run_dir = only_dir(tmp_path / "o")
    star = pd.read_parquet(run_dir / "searches.parquet").set_index("method").loc["Grid", "rho_star"]
    runs = pd.read_parquet(run_dir / "runs.parquet").set_index("method")
    assert runs.loc["AE-SAM at rho*", "rho0"] == star


def test_rho_from_must_name_an_earlier_search(tmp_path, capsys):
    spec = _spec(tmp_path, TINY_TEXT + '\n[[methods]]\nlabel = "X"\nstrategy = "ae-sam"\nrho_from = "SAM"\n')
    code, _, err = run_cli(["run", spec, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "methods[3].rho_from" in err and not (tmp_path / "o").exists()


def test_report_command_does_not_import_torch(tmp_path, capsys):
    """`hpo-bench report` dispatches to a torch-free handler: a report path that imports torch fails here."""
    out = tmp_path / "runs"
    code, _, _ = run_cli(["run", str(TINY), "--out", str(out), "--no-progress", "--no-report", "--set", "train.epochs=1"],
                         capsys)
    assert code == 0
    run_dir = only_dir(out)
    assert not (run_dir / "report.md").exists()
    code = ("import sys; from hpo_bench.cli import main; rc = main(['report', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"report: {run_dir / 'report.md'}"
    assert "| ERM |" in (run_dir / "report.md").read_text()


def test_cli_module_and_help_are_torch_free():
    code = ("import sys; from hpo_bench.cli import build_parser, main; build_parser(); "
            "rc = main(['report', '/nonexistent/run-dir']); "
            "assert rc == 2 and 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("hpo-bench: error: RUN_DIR: ") and proc.stderr.count("\n") == 1


def test_fidelity_metric_choices_match_the_handler():
    """cli.py declares fidelity's --metric choices without importing torch; they must be fidelity's METRICS."""
    from hpo_bench import cli, fidelity

    assert tuple(cli.FIDELITY_METRICS) == tuple(fidelity.METRICS)


def test_fidelity_bad_flag_is_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(["fidelity", str(TINY), "--out", str(out), "--every", "0"], capsys)
    assert code == 2 and err.startswith("hpo-bench: error: --every/--unroll") and err.count("\n") == 1
    code, _, err = run_cli(["fidelity", str(TINY), "--out", str(out), "--metric", "bogus"], capsys)
    assert code == 2 and "--metric" in err and err.count("\n") == 1
    assert not out.exists()
