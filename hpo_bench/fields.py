"""Spec fields and their validation: the metadata a dataclass field carries (:func:`spec_field`)
and the checks that build a dataclass from a TOML table (:func:`build_dataclass`).

Every error is a :class:`~hpo_bench.errors.SpecError` whose message is one line naming the
dotted field and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import field

from hpo_bench.errors import SpecError


def spec_field(default, *, choices=None, lo=None, hi=None, lo_open=False, hi_open=False, doc="", text=None):
    """A dataclass field with validation metadata (choices, closed/open bounds, ``text``: 'path' or 'line')."""
    meta = dict(choices=choices, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, doc=doc, text=text)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


INT_MAX = 2**31 - 1  # every integer field (seeds, epochs, sizes) fits a C int: numpy, torch and Ray accept it
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def _short(value) -> str:
    """``repr(value)`` cut to 40 characters (an int too long to print is described by its size)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits() (e.g. TOML hex literals)
        return f"an integer of {value.bit_length()} bits"
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply"
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} chars)"


def _key(key) -> str:
    """A key as it can appear in a one-line message: as written when printable and short, else repr'd."""
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 40 else _short(key)


def _check_text(path: str, value: str, kind: str | None) -> None:
    """``kind`` 'path': a non-empty file-system path; 'line': one line of printable text (at most 100)."""
    if kind == "path" and (not value or "\0" in value):
        raise SpecError(f"{path}: {_short(value)} is not a usable path; allowed: a non-empty path without NUL")
    if kind == "line" and (not value.isprintable() or len(value) > 100):
        raise SpecError(f"{path}: {_short(value)} is not one short line; allowed: up to 100 printable characters")


def _check_number(path: str, value, tp):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {_short(value)}")
    if tp is int:
        if isinstance(value, float) and not value.is_integer():
            raise SpecError(f"{path}: expected an integer, got {_short(value)}")
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > INT_MAX:
            raise SpecError(f"{path}: {_short(value)} is out of range; allowed: integers with |value| <= {INT_MAX}")
        return int(value)
    try:
        number = float(value)
    except OverflowError:
        raise SpecError(f"{path}: {_short(value)} is out of range; allowed: a finite number") from None
    if not math.isfinite(number):
        raise SpecError(f"{path}: expected a finite number, got {_short(value)}")
    return number


def check_value(path: str, value, tp, meta: dict):
    """Coerce and validate one scalar field against its type and metadata; raise SpecError."""
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{path}: expected true or false, got {_short(value)}")
    elif tp in (int, float):
        value = _check_number(path, value, tp)
    elif tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{path}: expected a string, got {_short(value)}")
        _check_text(path, value, meta.get("text"))
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise SpecError(f"{path}: {_short(value)} is not allowed; allowed: {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        op = ">" if meta.get("lo_open") else ">="
        raise SpecError(f"{path}: {value!r} is out of range; allowed: {op} {lo}" + (f" and {'<' if meta.get('hi_open') else '<='} {hi}" if hi is not None else ""))
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        op = "<" if meta.get("hi_open") else "<="
        raise SpecError(f"{path}: {value!r} is out of range; allowed: {op} {hi}" + (f" and >= {lo}" if lo is not None else ""))
    return value


def build_dataclass(cls, raw: dict, path: str):
    """Build dataclass ``cls`` from ``raw``: unknown keys, wrong types and out-of-range values raise SpecError."""
    if not isinstance(raw, dict):
        raise SpecError(f"{path or cls.__name__}: expected a table, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{path}.{_key(key)}" if path else _key(key)
            raise SpecError(f"{where}: unknown key; allowed: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp, value, where = hints[f.name], raw[f.name], (f"{path}.{f.name}" if path else f.name)
        if tp in (bool, int, float, str):
            kwargs[f.name] = check_value(where, value, tp, f.metadata)
        else:
            kwargs[f.name] = value
    return cls(**kwargs)
