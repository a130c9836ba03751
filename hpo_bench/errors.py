"""The error types that end a command with one line: bad input (:class:`SpecError`) and a results file
that could not be written (:class:`WriteError`)."""
from __future__ import annotations


class SpecError(ValueError):
    """A spec, flag or override is invalid. ``str(err)`` is one line: ``field: problem; allowed: ...``."""


class WriteError(OSError):
    """Writing a results file failed (disk full, read-only file system, no permission, ...).

    Raised as ``WriteError(errno, strerror, path)``; ``str(err)`` is one line naming the file and the
    system's reason. Every file is written atomically, so the results written before are intact.
    """

    def __str__(self) -> str:
        return (f"cannot write {self.filename}: {self.strerror}; the results written before are intact; "
                "free space (or fix the permissions) and re-run the same command to resume")
