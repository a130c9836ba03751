"""Property-based checks of the bad-input promise of ``hpo-bench run``.

Every case starts from the valid ``experiments/tiny.toml`` and breaks exactly one thing: a field's
type or range, a seed, a key, a list, a name, an override, a nesting depth, ``--out``, a choice, a
cross-field condition (also when only a ``vary`` product or a ``--set`` produces it), a flag, or the
data folder. Each case runs the CLI in-process and must end with

* return code 2,
* exactly one line on stderr, starting ``hpo-bench: error: `` and naming the field,
* nothing written: no ``--out`` when it did not exist, an unchanged ``--out`` when it did, and
  nothing else changed in the case's folder.

The examples are derandomized (the same cases on every machine); ``GENERATED_CASES`` is the sum of
the ``max_examples`` of the properties (the README states it).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import typing
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo_bench.cli import main
from hpo_bench.config import (
    DataConfig,
    ExperimentSpec,
    SearchConfig,
    TrainConfig,
    load_spec,
)
from hpo_bench.data import load_data
from hpo_bench.models import list_models
from hpo_bench.store import run_dir_for
from hpo_bench.strategy import get_strategy_class, list_strategies
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TINY = ROOT / "experiments" / "tiny.toml"
BASE = tomllib.loads(TINY.read_text())
PREFIX = "hpo-bench: error: "
HAS_CUDA = torch.cuda.is_available()
# max_examples of each property; the properties drawn from a fixed list of cases (--out, cross-field
# conditions, flags) get the list's length below, so every listed case runs once
BUDGET = {"wrong_type": 200, "out_of_range": 200, "seeds": 60, "unknown_key": 150, "lists": 60, "names": 80,
          "overrides": 150, "nesting": 30, "choices": 80, "data": 40}


def prop(name: str):
    return settings(max_examples=BUDGET[name], deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ----------------------------------------------------------------------------- TOML writing

class Raw(str):
    """A TOML token written as is (``1e400``, ``nan``, a 5000-digit hex integer, deep nesting)."""


def _str(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _value(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 10**4000 else "0x" + format(abs(v), "x")
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_str(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dumps(spec: dict) -> str:
    """A TOML document for ``spec``: scalars first, then one table per section, [[methods]] last."""
    lines = [f"{_str(k)} = {_value(v)}" for k, v in spec.items() if not isinstance(v, dict) and k != "methods"]
    if "methods" in spec and not isinstance(spec["methods"], dict) and not (
            isinstance(spec["methods"], list) and spec["methods"] and all(isinstance(m, dict) for m in spec["methods"])):
        lines.append(f"methods = {_value(spec['methods'])}")
    for k, v in spec.items():
        if isinstance(v, dict):
            lines += ["", f"[{_str(k)}]"] + [f"{_str(kk)} = {_value(vv)}" for kk, vv in v.items()]
    if isinstance(spec.get("methods"), list) and spec["methods"] and all(isinstance(m, dict) for m in spec["methods"]):
        for m in spec["methods"]:
            lines += ["", "[[methods]]"] + [f"{_str(k)} = {_value(v)}" for k, v in m.items()]
    return "\n".join(lines) + "\n"


def base() -> dict:
    return copy.deepcopy(BASE)


def put(spec: dict, path: tuple, value) -> dict:
    node = spec
    for part in path[:-1]:
        node = node[part] if isinstance(node, list) else node.setdefault(part, {})
    node[path[-1]] = value
    return spec


def with_method(spec: dict, **method) -> dict:
    spec["methods"].append(method)
    return spec


# ----------------------------------------------------------------------------- running one case

def _tree(root: Path) -> dict:
    """Every entry under ``root`` (symlinks not followed) with its kind and content digest."""
    out = {}
    if not os.path.lexists(root):
        return out
    if not root.is_dir() or root.is_symlink():
        return {".": os.readlink(root) if root.is_symlink() else hashlib.sha1(root.read_bytes()).hexdigest()}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


FIELD = re.compile(r"(?:\b(?:data|model|train|vary|search|params)\.\S|\bmethods\[\d+\]|(?:^|\s)--[a-z]"
                   r"|^(?:spec|name|seeds|description|report|methods|data|model|train|vary)\b|^[^:\s]+: unknown key)")


def names_a_field(message: str) -> bool:
    return bool(FIELD.search(message))


def check_case(capsys, spec, *, extra=(), out=None, expect: str | None = None, setup=None):
    """Run ``hpo-bench run`` on ``spec`` (a dict, or TOML text) and assert the bad-input promise.

    ``out``: ``None`` for a fresh folder, or a function of the case folder returning the --out value;
    ``setup``: a function of the case folder run first (e.g. to write a corrupt cache);
    ``expect``: text the error line must contain (the field it names).
    """
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        if setup is not None:
            spec = setup(case, spec) or spec
        spec_path = case / "spec.toml"
        spec_path.write_text(spec if isinstance(spec, str) else dumps(spec))
        out_arg = str(case / "out") if out is None else out(case)
        out_path = Path(out_arg) if out_arg and "\0" not in out_arg else None
        before = _tree(case)
        out_before = _tree(out_path) if out_path is not None else None
        code = main(["run", str(spec_path), "--out", out_arg, "--no-progress", "--jobs", "1", *extra])
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert code == 2, (code, captured.err[-2000:])
        assert len(lines) == 1, captured.err
        line = lines[0]
        assert line.startswith(PREFIX), line
        message = line[len(PREFIX):]
        assert names_a_field(message), line
        if expect is not None:
            assert expect in message, (expect, line)
        if out_path is not None:
            assert _tree(out_path) == out_before, "--out changed"
        assert _tree(case) == before, "the case folder changed"
    return message


# ----------------------------------------------------------------------------- the fields

def _scalar_fields():
    """(path, type, metadata) of every scalar field a valid spec may hold, the base's methods included."""
    out = []
    for section, cls in (("data", DataConfig), ("train", TrainConfig)):
        hints = typing.get_type_hints(cls)
        out += [((section, f.name), hints[f.name], f.metadata) for f in dataclasses.fields(cls)]
    out.append((("model", "name"), str, {}))
    hints = typing.get_type_hints(ExperimentSpec)
    out += [((f.name,), hints[f.name], f.metadata) for f in dataclasses.fields(ExperimentSpec)
            if hints[f.name] in (str, bool)]
    for i, label in enumerate(["ERM", "SAM", "ASAM"]):
        out += [(("methods", i, "label"), str, {}), (("methods", i, "strategy"), str, {}),
                (("methods", i, "rho"), "rho", {"lo": 0.0, "lo_open": True}), (("methods", i, "rho_from"), str, {})]
    asam = get_strategy_class("asam").Params
    out += [(("methods", 2, "params", f.name), typing.get_type_hints(asam)[f.name], f.metadata)
            for f in dataclasses.fields(asam)]
    return out


SCALARS = _scalar_fields()
SEARCH_HINTS = typing.get_type_hints(SearchConfig)
SEARCH_SCALARS = [(f.name, SEARCH_HINTS[f.name], f.metadata) for f in dataclasses.fields(SearchConfig)
                  if SEARCH_HINTS[f.name] in (bool, int, float, str)]


def dotted(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


tables = st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), min_size=1, max_size=2)
short_lists = st.lists(st.integers(0, 3), max_size=3)
texts = st.text(max_size=12)


def wrong_values(tp):
    """Values of a type that ``tp`` never accepts (an int for a float field is fine, so it is not here)."""
    if tp is int:
        return st.one_of(texts, st.booleans(), short_lists, tables,
                         st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
                         st.sampled_from([Raw("nan"), Raw("inf"), Raw("-inf"), Raw("1e400"), 2.5]))
    if tp is float:
        return st.one_of(texts, st.booleans(), short_lists, tables, st.sampled_from([Raw("nan"), Raw("inf"),
                                                                                      Raw("-1e400")]))
    if tp == "rho":  # a list of positive numbers is a valid rho: lists of strings and tables are not
        return st.one_of(texts, st.booleans(), tables, st.lists(texts, min_size=1, max_size=2),
                         st.sampled_from([Raw("nan"), Raw("inf"), [Raw("nan")], [True]]))
    if tp is str:
        return st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), short_lists, tables)
    if tp is bool:
        return st.one_of(st.integers(), st.floats(allow_nan=False), texts.filter(lambda s: s not in ("true", "false")),
                         short_lists, tables)
    raise AssertionError(tp)


# ----------------------------------------------------------------------------- 1. wrong types

@prop("wrong_type")
@given(data=st.data())
def test_a_wrong_type_in_any_field_is_one_line_exit_2(capsys, data):
    if data.draw(st.booleans(), label="in a search"):
        name, tp, _ = data.draw(st.sampled_from(SEARCH_SCALARS), label="search field")
        spec = with_method(base(), label="G", strategy="sam", search={"grid": [0.1], name: data.draw(wrong_values(tp))})
        expect = f"methods[3].search.{name}"
    else:
        path, tp, _ = data.draw(st.sampled_from(SCALARS), label="field")
        spec = put(base(), path, data.draw(wrong_values(tp), label="value"))
        expect = dotted(path)
    check_case(capsys, spec, expect=expect)


# ----------------------------------------------------------------------------- 2. out of range

HUGE = [10**400, -(10**400), 2**31, -(2**31) - 1, 10**30, 2**64, 16**5000]


def out_of_range(tp, meta):
    """Numbers outside ``meta``'s bounds, integers beyond a C int, floats that overflow to inf/nan."""
    options = [st.sampled_from(HUGE)] if tp is int else [st.sampled_from([10**400, -(10**400), 16**5000])]
    options.append(st.sampled_from([Raw("1e400"), Raw("-1e400"), Raw("nan"), Raw("+inf"), Raw("-inf")]))
    lo, hi = meta.get("lo"), meta.get("hi")
    num = st.integers if tp is int else lambda **kw: st.floats(allow_nan=False, allow_infinity=False, **kw)
    if lo is not None:  # below lo (or lo itself when the bound is open); -0.0 == 0.0 is in range, hence the filter
        options.append(num(max_value=lo).filter(lambda x: x < lo or (meta.get("lo_open") and x == lo)))
    if hi is not None:
        options.append(num(min_value=hi).filter(lambda x: x > hi or (meta.get("hi_open") and x == hi)))
    return st.one_of(options)


def _default(path: tuple):
    section = {"data": DataConfig(), "train": TrainConfig()}[path[0]]
    return BASE.get(path[0], {}).get(path[1], getattr(section, path[1]))


NUMERIC = [(p, float if tp == "rho" else tp, m) for p, tp, m in SCALARS if tp in (int, float, "rho")]
SEARCH_NUMERIC = [(n, tp, m) for n, tp, m in SEARCH_SCALARS if tp in (int, float)]


@prop("out_of_range")
@given(data=st.data())
def test_an_out_of_range_number_is_one_line_exit_2(capsys, data):
    if data.draw(st.integers(0, 3), label="where") == 0:
        name, tp, meta = data.draw(st.sampled_from(SEARCH_NUMERIC), label="search field")
        search = {"kind": "tpe", "engine": "optuna"} if name in ("rho_min", "rho_max", "n_trials") else {"grid": [0.1]}
        spec = with_method(base(), label="G", strategy="sam", search={**search, name: data.draw(out_of_range(tp, meta))})
        expect = f"methods[3].search.{name}"
    else:
        path, tp, meta = data.draw(st.sampled_from(NUMERIC), label="field")
        value = data.draw(out_of_range(tp, meta), label="value")
        if data.draw(st.booleans(), label="through vary") and path[0] in ("data", "train"):
            spec = put(base(), ("vary", dotted(path)), [_default(path), value])
            expect = f"vary.{dotted(path)}"
        else:
            spec = put(base(), path, value)
            expect = dotted(path)
    check_case(capsys, spec, expect=expect)


# ----------------------------------------------------------------------------- 3. seeds

@prop("seeds")
@given(seeds=st.one_of(
    st.just([]),
    st.lists(st.integers(max_value=-1), min_size=1, max_size=3),
    st.lists(st.integers(min_value=2**31), min_size=1, max_size=3),
    st.lists(st.integers(0, 5), min_size=2, max_size=5).filter(lambda s: len(set(s)) < len(s)),
    st.lists(st.sampled_from([0.5, 1.0, 2.0, Raw("nan"), Raw("1e400"), "0", True, [0], {"a": 0}]), min_size=1, max_size=3),
    st.sampled_from([0, 1.5, "0,1", True, {"a": 1}, Raw("1e400"), 10**400]),
))
def test_bad_seeds_are_one_line_exit_2(capsys, seeds):
    check_case(capsys, put(base(), ("seeds",), seeds), expect="seeds")


# ----------------------------------------------------------------------------- 4. unknown keys

def _render(key: str) -> str:
    return key if key.isprintable() and len(key) <= 40 else repr(key)[:20]


@prop("unknown_key")
@given(level=st.sampled_from(["", "data", "model", "train", "methods[1]", "methods[2].params", "methods[3].search",
                              "vary"]),
       key=st.text(min_size=1, max_size=50))
def test_an_unknown_key_at_any_level_is_one_line_exit_2(capsys, level, key):
    spec = with_method(base(), label="G", strategy="sam", search={"grid": [0.1]})
    known = {"": ["name", "description", "seeds", "data", "model", "train", "vary", "methods", "report"],
             "data": [f.name for f in dataclasses.fields(DataConfig)], "model": ["name"],
             "train": [f.name for f in dataclasses.fields(TrainConfig)],
             "methods[1]": ["label", "strategy", "rho", "params", "search", "rho_from"],
             "methods[2].params": ["xi"], "methods[3].search": [f.name for f in dataclasses.fields(SearchConfig)]}
    if level == "vary":  # a field name that does not exist
        spec["vary"] = {key: [1]}
        if "." in key and key.split(".", 1)[1] in known.get(key.split(".", 1)[0], []):
            return
        expect = "vary."
    else:
        if key in known[level]:
            return
        path = {"": (), "data": ("data",), "model": ("model",), "train": ("train",), "methods[1]": ("methods", 1),
                "methods[2].params": ("methods", 2, "params"), "methods[3].search": ("methods", 3, "search")}[level]
        put(spec, path + (key,), 1)
        expect = f"{level}." if level else None
    message = check_case(capsys, spec, expect=expect) if level else _check_top_key(capsys, spec, key)
    assert "unknown" in message, message


def _check_top_key(capsys, spec, key):
    # a top-level key is its own field: the line starts with it (escaped when it is not printable)
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "spec.toml"
        p.write_text(dumps(spec))
        code = main(["run", str(p), "--out", str(Path(tmp) / "out"), "--no-progress", "--jobs", "1"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith(PREFIX), err
        assert err[len(PREFIX):].startswith(_render(key)), (key, err)
        assert not (Path(tmp) / "out").exists()
        return err[len(PREFIX):]


# ----------------------------------------------------------------------------- 5. lists

@prop("lists")
@given(data=st.data())
def test_empty_and_duplicate_lists_are_one_line_exit_2(capsys, data):
    kind = data.draw(st.sampled_from(["rho", "grid", "vary-float", "vary-int", "vary-empty", "methods", "vary-int-float"]))
    spec = base()
    value = data.draw(st.floats(0.001, 2.0), label="value")
    if kind == "rho":
        put(spec, ("methods", 1, "rho"), data.draw(st.sampled_from([[], [value, value], [value, 0.0], [value, -value]])))
        expect = "methods[1].rho"
    elif kind == "grid":
        grid = data.draw(st.sampled_from([[], [value, value], [value, -value], [value, Raw("nan")]]))
        engine = data.draw(st.sampled_from(["local", "optuna", "ray"]))
        with_method(spec, label="G", strategy="sam", search={"kind": "grid", "engine": engine, "grid": grid})
        expect = "methods[3].search.grid"
    elif kind == "vary-float":  # 0.1 and 0.10000 are the same value after parsing; 1 and 1.0 after coercion
        a = data.draw(st.sampled_from([0.1, 1, 0.5]))
        spec["vary"] = {"data.label_noise" if a < 1 else "train.lr": [a, float(a)]}
        expect = "vary."
    elif kind == "vary-int":
        n = data.draw(st.integers(1, 5))
        spec["vary"] = {"train.epochs": [n, n]}
        expect = "vary.train.epochs"
    elif kind == "vary-int-float":  # a float where an integer is required, only inside vary
        spec["vary"] = {data.draw(st.sampled_from(["train.epochs", "train.batch_size", "data.num_samples"])):
                        [1000, data.draw(st.floats(1.01, 999.99).filter(lambda x: not x.is_integer()))]}
        expect = "vary."
    elif kind == "vary-empty":
        spec["vary"] = {"train.epochs": data.draw(st.sampled_from([[], 3, "x", {"a": 1}]))}
        expect = "vary.train.epochs"
    else:
        spec["methods"] = data.draw(st.sampled_from([[], [1], ["sam"], [[]], {"a": 1}]))
        expect = "methods"
    check_case(capsys, spec, expect=expect)


# ----------------------------------------------------------------------------- 6. names

VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
bad_names = st.one_of(
    st.sampled_from(["", ".", "..", "../escaped", "../../x", "/abs", "/tmp/x", "a/b", "a\\b", ".hidden", "-x", "x" * 81,
                     "a" * 300, "C:\\x", "a\nb", "a\0b", "tiny/..", "~", " tiny"]),
    st.builds(lambda a, b: a + b, st.sampled_from(["../", "/", "./", "a/", "..\\"]), st.text(max_size=20)),
    st.text(max_size=300).filter(lambda s: not VALID_NAME.fullmatch(s)),
)


@prop("names")
@given(name=bad_names)
def test_a_name_that_cannot_name_a_folder_inside_out_is_one_line_exit_2(capsys, name):
    check_case(capsys, put(base(), ("name",), name), expect="name")


# ----------------------------------------------------------------------------- 7. overrides

UNICODE_DIGITS = ["²", "٣", "①", "１", "-1", "+1", "1.0", " 1", "x", "", "99", "3", "10000000000000000000000"]
overrides = st.one_of(
    st.tuples(st.sampled_from(["train.epochs.x=1", "name.x=1", "seeds.0.x=1", "train.lr.a.b=2", "methods.0.label.x=1",
                               "report.x=true", "data.dataset.x=\"a\""]), st.just(None)),
    st.builds(lambda i, tail: (f"methods.{i}.{tail}", None), st.sampled_from(UNICODE_DIGITS),
              st.sampled_from(["rho=1", "label=\"x\"", "strategy=\"sam\""])),
    st.builds(lambda i: (f"seeds.{i}=3", None), st.sampled_from(UNICODE_DIGITS)),
    st.sampled_from([("train.epochs", "--set"), ("=5", "--set"), ("train..epochs=5", "--set"), (".x=1", "--set"),
                     ("train.=1", "--set"), ("train.epochs=" + "[" * 3000, "train.epochs"), ("train.epochs=1" + "0" * 5000, "train.epochs"),
                     ("train.epochs=0x" + "f" * 5000, "train.epochs"), ("train.epochs=1e400", "train.epochs"),
                     ("train.lr=nan", "train.lr"), ("train.lr=10" + "0" * 400, "train.lr"), ("seeds=[]", "seeds"),
                     ("methods=[]", "methods"), ("train=5", "train"), ("data=[1]", "data"),
                     ("train.epochs=\"ten\"", "train.epochs"), ("seeds=[2147483648]", "seeds"),
                     ("methods.1.rho=[0.1, 0.1]", "methods[1].rho"), ("name=../escaped", "name"),
                     ("data.data_root=\"\"", "data.data_root"), ("train.threads=100000", "train.threads")]),
    st.builds(lambda k: (f"train.{k}=1", "train."), st.text(min_size=1, max_size=20).filter(
        lambda k: "=" not in k and k.strip() not in {f.name for f in dataclasses.fields(TrainConfig)})),
    st.builds(lambda k: (f"{k}=1", None), st.text(alphabet="\n\r\t\x0b\x0c\x1c\x85\u2028\u2029.a", min_size=1,
                                                          max_size=8).filter(lambda k: not k.isprintable())),
)


@prop("overrides")
@given(case=overrides)
def test_a_bad_override_is_one_line_exit_2(capsys, case):
    text, expect = case
    check_case(capsys, base(), extra=["--set", text], expect=expect)


# ----------------------------------------------------------------------------- 8. nesting

@prop("nesting")
@given(depth=st.integers(2, 3000), where=st.sampled_from([("seeds",), ("description",), ("train", "epochs"),
                                                          ("methods", 1, "rho"), ("methods", 2, "params"),
                                                          ("vary",), ("zz",)]),
       table=st.booleans())
def test_deeply_nested_values_are_one_line_exit_2(capsys, depth, where, table):
    nested = Raw("{a = " * depth + "1" + "}" * depth) if table else Raw("[" * depth + "1" + "]" * depth)
    check_case(capsys, put(base(), where, nested))


# ----------------------------------------------------------------------------- 9. --out

def _out_cases():
    def file(case):
        (case / "f").write_text("x")
        return str(case / "f")

    def under_file(case):
        return file(case) + "/sub"

    def dangling(case):
        os.symlink(case / "nowhere", case / "dl")
        return str(case / "dl")

    def dangling_parent(case):
        return dangling(case) + "/sub"

    def loop(case):
        os.symlink(case / "lp", case / "lp")
        return str(case / "lp")

    def link_to_file(case):
        os.symlink(file(case), case / "lf")
        return str(case / "lf")

    def run_dir_is_a_file(case):
        (case / "out").mkdir()
        run_dir_for(load_spec(TINY), case / "out").write_text("x")
        return str(case / "out")

    def run_dir_is_dangling(case):
        (case / "out").mkdir()
        os.symlink(case / "nowhere", run_dir_for(load_spec(TINY), case / "out"))
        return str(case / "out")

    return [lambda case: "", lambda case: "   ", lambda case: str(case / "a\0b"), lambda case: str(case / ("x" * 300)),
            file, under_file, dangling, dangling_parent, loop, link_to_file, run_dir_is_a_file, run_dir_is_dangling,
            lambda case: "/proc/hpo-bench-out"]


OUT_CASES = _out_cases()
BUDGET["out"] = len(OUT_CASES)


@prop("out")
@given(make_out=st.sampled_from(OUT_CASES))
def test_a_bad_out_is_one_line_exit_2_and_out_unchanged(capsys, make_out):
    check_case(capsys, base(), out=make_out, expect="--out")


# ----------------------------------------------------------------------------- 10. unknown choices

CHOICES = [(("data", "dataset"), ["mnist1d", "cifar10", "cifar100"]), (("model", "name"), list_models()),
           (("train", "schedule"), ["cosine", "constant"]), (("train", "device"), ["auto", "cpu", "cuda"]),
           (("train", "dtype"), ["float32", "float64"]), (("methods", 1, "strategy"), list_strategies()),
           (("methods", 3, "search", "kind"), ["grid", "tpe", "asha", "sweep"]),
           (("methods", 3, "search", "engine"), ["local", "optuna", "ray"])]


@prop("choices")
@given(data=st.data())
def test_an_unknown_strategy_model_dataset_or_choice_is_one_line_exit_2(capsys, data):
    path, allowed = data.draw(st.sampled_from(CHOICES), label="field")
    value = data.draw(st.one_of(st.sampled_from(["", "SAM", "Sam ", "resnet", "cifar", "cuda:0", "gpu", "imagenet",
                                                 "float16", "optuna ", "Grid"]), st.text(max_size=20))
                      .filter(lambda v: v not in allowed), label="value")
    spec = with_method(base(), label="G", strategy="sam", search={"grid": [0.1]})
    if data.draw(st.booleans(), label="through vary") and path[0] in ("data", "model", "train"):
        spec["vary"] = {dotted(path): [value]}
        expect = f"vary.{dotted(path)}"
    else:
        put(spec, path, value)
        expect = dotted(path)
    check_case(capsys, spec, expect=expect)


# ----------------------------------------------------------------------------- 11. cross-field conditions

def _grid(spec, **search):
    return with_method(spec, label="Grid", strategy="sam", search={"kind": "grid", "grid": [0.05, 0.1], **search})


def _cross_field_cases():
    cases = [
        # an empty validation split where a method needs one: directly, through vary, through --set
        (lambda: put(_grid(base()), ("data", "val_fraction"), 0.0), [], "data.val_fraction"),
        (lambda: put(_grid(base()), ("vary",), {"data.val_fraction": [0.1, 0.0]}), [], "data.val_fraction"),
        (lambda: _grid(base()), ["--set", "data.val_fraction=0"], "data.val_fraction"),
        (lambda: put(with_method(base(), label="L", strategy="lets-sam", params={"protocol": "clean"}),
                     ("data", "val_fraction"), 0.0), [], "data.val_fraction"),
        (lambda: put(base(), ("data", "val_fraction"), 0.999), [], "data.val_fraction"),
        # a model that does not fit the data
        (lambda: put(base(), ("model", "name"), "resnet18"), [], "model.name"),
        (lambda: put(base(), ("model", "name"), "wrn28_10"), [], "model.name"),
        (lambda: put(base(), ("vary",), {"model.name": ["mnist1d_mlp", "resnet18"]}), [], "model.name"),
        (lambda: base(), ["--set", 'model.name="resnet18"'], "model.name"),
        # rho_from naming something that is not an earlier search
        (lambda: with_method(base(), label="X", strategy="ae-sam", rho_from="SAM"), [], "methods[3].rho_from"),
        (lambda: with_method(base(), label="X", strategy="ae-sam", rho_from="nope"), [], "methods[3].rho_from"),
        (lambda: with_method(with_method(base(), label="X", strategy="sam", rho_from="Later"), label="Later",
                             strategy="sam", search={"grid": [0.1]}), [], "methods[3].rho_from"),
        (lambda: with_method(with_method(base(), label="Sw", strategy="sam", rho=[0.1, 0.2], search={"kind": "sweep"}),
                             label="X", strategy="sam", rho_from="Sw"), [], "methods[4].rho_from"),
        (lambda: with_method(_grid(base()), label="X", strategy="sam", rho_from="Grid", rho=[0.1, 0.2]), [],
         "methods[4].rho_from"),
        # searches that cannot run as written
        (lambda: _grid(base(), kind="tpe"), [], "methods[3].search"),
        (lambda: _grid(base(), kind="asha", engine="optuna"), [], "methods[3].search.engine"),
        (lambda: _grid(base(), engine="optuna", batched=True), [], "methods[3].search.batched"),
        (lambda: _grid(base(), kind="tpe", engine="optuna", grid=[], rho_min=1.0, rho_max=0.5), [],
         "methods[3].search.rho_min"),
        (lambda: _grid(base(), kind="sweep"), [], "methods[3].search.grid"),
        (lambda: _grid(base(), kind="tpe", engine="optuna", grid=5), [], "methods[3].search.grid"),
        (lambda: _grid(base(), engine="ray", address="nohost"), [], "methods[3].search.address"),
        (lambda: _grid(base(), engine="ray", cpus_per_trial=float((os.cpu_count() or 1) + 1)), [],
         "methods[3].search.cpus_per_trial"),
        (lambda: _grid(base(), engine="optuna", storage="mongo://x"), [], "methods[3].search.storage"),
        (lambda: _grid(base(), engine="optuna", storage=f"journal://{TINY}/x.journal"), [], "methods[3].search.storage"),
        (lambda: _grid(base(), engine="optuna", storage="sqlite:////nonexistent-hpo-bench/x.db"), [],
         "methods[3].search.storage"),
        (lambda: with_method(base(), label="G", strategy="sam", rho=[0.1, 0.2], search={"grid": [0.1]}), [],
         "methods[3].rho"),
        (lambda: with_method(base(), label="AE", strategy="ae-sam", params={"lambda1": 2.0, "lambda2": 1.0}), [],
         "methods[3].params"),
        (lambda: put(base(), ("methods", 2, "label"), "SAM"), [], "methods[2].label"),
    ]
    # a GPU requested where none exists: directly, by flag, by --set, through vary, per Ray trial (where a GPU
    # exists, "tpu" keeps the number of cases: the device is then refused as a choice)
    gpu = "tpu" if HAS_CUDA else "cuda"
    flag = "--set" if HAS_CUDA else "--device"
    cases += [
        (lambda: put(base(), ("train", "device"), gpu), [], "train.device"),
        (lambda: base(), [flag, "train.device=tpu" if HAS_CUDA else "cuda"], "train.device"),
        (lambda: base(), ["--set", f"train.device={gpu}"], "train.device"),
        (lambda: put(base(), ("vary",), {"train.device": ["cpu", gpu]}), [], "train.device"),
        (lambda: _grid(base(), engine="ray", gpus_per_trial=torch.cuda.device_count() + 1), [],
         "methods[3].search.gpus_per_trial"),
    ]
    return cases


CROSS_FIELD_CASES = _cross_field_cases()
BUDGET["cross_field"] = len(CROSS_FIELD_CASES)


@prop("cross_field")
@given(case=st.sampled_from(CROSS_FIELD_CASES))
def test_a_cross_field_condition_is_one_line_exit_2(capsys, case):
    make, extra, expect = case
    check_case(capsys, make(), extra=extra, expect=expect)


# ----------------------------------------------------------------------------- 12. flags

BAD_FLAGS = [["--jobs", "0"], ["--jobs", "-1"], ["--jobs", "x"], ["--jobs", "10" + "0" * 30], ["--jobs", "100000"],
             ["--device", "tpu"], ["--device", ""], ["--bogus"], ["--jobs"], ["--set"], ["--out"], ["--jobs", "1.5"]]
BUDGET["flags"] = len(BAD_FLAGS)


@prop("flags")
@given(flags=st.sampled_from(BAD_FLAGS))
def test_a_bad_flag_is_one_line_exit_2(capsys, flags):
    check_case(capsys, base(), extra=flags, expect="--")


# ----------------------------------------------------------------------------- 13. data paths

def _data_root(case: Path, spec: dict, kind: str, garbage: bytes) -> dict:
    root = case / "data"
    spec = put(spec, ("data", "data_root"), str(root))
    n, s = spec["data"]["num_samples"], 42
    if kind == "file":
        root.write_bytes(garbage)
    elif kind == "under-file":
        root.write_bytes(garbage)
        spec = put(spec, ("data", "data_root"), str(root / "sub"))
    elif kind == "corrupt-cache":
        root.mkdir()
        (root / f"mnist1d_n{n}_s{s}.npz").write_bytes(garbage)
    elif kind == "foreign-npz":
        root.mkdir()
        np.savez(root / f"mnist1d_n{n}_s{s}.npz", x=np.zeros(3), y=np.zeros((2, 2)))
    elif kind == "cache-is-a-dir":
        (root / f"mnist1d_n{n}_s{s}.npz").mkdir(parents=True)
    elif kind in ("cifar10", "cifar100"):
        root.mkdir()
        spec = put(put(spec, ("data", "dataset"), kind), ("model", "name"), "linear")
    return spec


def _mnist1d_cache() -> Path:
    """The cache file of the base spec's MNIST-1D data (generated once if missing)."""
    data = DataConfig(**BASE["data"])
    load_data(data)
    return (Path(data.data_root) / f"mnist1d_n{data.num_samples}_s{data.data_seed}.npz").resolve()


MNIST1D_CACHE = _mnist1d_cache()


@prop("data")
@given(kind=st.sampled_from(["file", "under-file", "corrupt-cache", "foreign-npz", "cache-is-a-dir", "cifar10",
                             "cifar100"]),
       garbage=st.binary(max_size=64), through_vary=st.booleans())
def test_a_bad_data_path_is_one_line_exit_2(capsys, kind, garbage, through_vary):
    def setup(case, spec):
        spec = _data_root(case, spec, kind, garbage)
        if through_vary and kind.startswith("cifar"):  # CIFAR only in the second setting; MNIST-1D is cached there
            spec["vary"] = {"data.dataset": ["mnist1d", spec["data"].pop("dataset")]}
            shutil.copy(MNIST1D_CACHE, case / "data")
        elif through_vary:  # the bad folder only in the second setting
            spec["vary"] = {"data.data_root": [".cache/data", spec["data"].pop("data_root")]}
        return spec

    check_case(capsys, base(), setup=setup, expect="data.data_root")


GENERATED_CASES = sum(BUDGET.values())


def test_generated_case_count_is_what_the_readme_states():
    readme = (ROOT / "README.md").read_text()
    assert f"{GENERATED_CASES} generated cases" in readme, GENERATED_CASES

