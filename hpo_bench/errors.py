"""The one error type of bad input: a spec, flag, override, data path or output directory."""
from __future__ import annotations


class SpecError(ValueError):
    """A spec, flag or override is invalid. ``str(err)`` is one line: ``field: problem; allowed: ...``."""
