"""Content hashes that name things: a run's id, a spec's output directory."""
from __future__ import annotations

import hashlib
import json


def stable_hash(obj) -> str:
    """SHA-1 of a canonical JSON dump (sorted keys); identical configs give identical hashes."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
