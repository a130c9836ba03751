"""Storage URLs and addresses given in a spec: validation, and the one redaction of their secrets.

:func:`redact` is the only place that hides secrets: every file the project writes
(``metadata.json``, and through it ``report.md``), every console line and every error message
that can carry a storage URL or a Ray address goes through it. It hides the password of any
``scheme://user:password@host`` URL (and of ``password=`` / ``token=`` parameters) found anywhere
in a text, and in every string of a nested dict/list.

PostgreSQL needs a driver: with SQLAlchemy 2.1 a plain ``postgresql://`` URL uses psycopg 3
(``pip install 'hpo-bench[postgres]'``); SQLAlchemy 2.0 maps it to psycopg2, so the explicit
``postgresql+psycopg://`` is the URL that means psycopg 3 with either.
"""
from __future__ import annotations

import re
from urllib.parse import urlparse

from hpo_bench.errors import SpecError

ALLOWED = ("sqlite:///PATH", "postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DB", "mysql://USER@HOST/DB",
           "journal:///PATH")
_RDB_SCHEMES = {"sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql"}
MASK = "***"

# scheme://userinfo@ — userinfo runs to the last '@' before the host part ends ('/', '?', '#', a space or a quote)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s'\"`]*)@")
_SECRET_PARAM = re.compile(r"(?P<key>\b(?:password|passwd|pwd|token|secret|auth_token)=)(?P<value>[^&\s'\"`;#]+)",
                           re.IGNORECASE)


def _mask_userinfo(match: re.Match) -> str:
    user, sep, _password = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}{sep}{MASK if sep else ''}@"


def redact(value):
    """``value`` with every secret replaced by ``***``: the password of each ``scheme://user:pw@host``
    URL and the value of ``password=``/``token=``-style parameters, in a string, or in every string of
    a (nested) dict, list or tuple. Anything else is returned unchanged."""
    if isinstance(value, str):
        return _SECRET_PARAM.sub(lambda m: m["key"] + MASK, _URL_USERINFO.sub(_mask_userinfo, value))
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def is_rdb_url(url: str) -> bool:
    """Whether ``url`` (already validated) names an RDB (SQLAlchemy) storage rather than a journal file."""
    return bool(url) and urlparse(url).scheme.split("+", 1)[0] in _RDB_SCHEMES


def validate_storage_url(url: str, where: str = "search.storage") -> str:
    """Return ``url`` if it names a usable Optuna storage, else raise SpecError (one line, secrets redacted).

    '' means the default (a journal file in the run directory); ``journal:///path`` a journal
    file elsewhere; any SQLAlchemy RDB URL (``sqlite:///``, ``postgresql[+driver]://``, ``mysql[+driver]://``).
    """
    if url == "":
        return url
    shown = repr(redact(url))
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+", 1)[0]
    if scheme == "journal":
        if not parsed.path or parsed.path == "/":
            raise SpecError(f"{where}: {shown} has no file path; allowed: {', '.join(ALLOWED)}")
        return url
    if scheme == "postgres":
        raise SpecError(f"{where}: {shown}: SQLAlchemy does not accept the scheme 'postgres'; "
                        "allowed: postgresql+psycopg://USER@HOST/DB")
    if scheme not in _RDB_SCHEMES:
        raise SpecError(f"{where}: {shown} is not a storage URL; allowed: {', '.join(ALLOWED)}")
    if scheme == "sqlite":
        if not url.startswith(parsed.scheme + ":///") or len(url) <= len(parsed.scheme) + 4:
            raise SpecError(f"{where}: {shown} needs a file path; allowed: sqlite:///relative.db or sqlite:////abs/path.db")
    elif not parsed.netloc:
        raise SpecError(f"{where}: {shown} has no host; allowed: {', '.join(ALLOWED)}")
    return url
