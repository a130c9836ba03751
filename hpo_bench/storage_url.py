"""Validation of Optuna storage URLs given in a spec (``search.storage``)."""
from __future__ import annotations

from urllib.parse import urlparse

from hpo_bench.errors import SpecError

ALLOWED = ("sqlite:///PATH", "postgresql://USER@HOST/DB", "mysql://USER@HOST/DB", "journal:///PATH")
_RDB_SCHEMES = {"sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql"}


def validate_storage_url(url: str, where: str = "search.storage") -> str:
    """Return ``url`` if it names a usable Optuna storage, else raise SpecError (one line).

    '' means the default (a journal file in the run directory); ``journal:///path`` a journal
    file elsewhere; any SQLAlchemy RDB URL (``sqlite:///``, ``postgresql[+driver]://``, ``mysql[+driver]://``).
    """
    if url == "":
        return url
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+", 1)[0]
    if scheme == "journal":
        if not parsed.path or parsed.path == "/":
            raise SpecError(f"{where}: {url!r} has no file path; allowed: {', '.join(ALLOWED)}")
        return url
    if scheme not in _RDB_SCHEMES:
        raise SpecError(f"{where}: {url!r} is not a storage URL; allowed: {', '.join(ALLOWED)}")
    if scheme == "sqlite":
        if not url.startswith(parsed.scheme + ":///") or len(url) <= len(parsed.scheme) + 4:
            raise SpecError(f"{where}: {url!r} needs a file path; allowed: sqlite:///relative.db or sqlite:////abs/path.db")
    elif not parsed.netloc:
        raise SpecError(f"{where}: {url!r} has no host; allowed: {', '.join(ALLOWED)}")
    return url
