"""The one hash of the study: a short sha256 of a JSON-able value.

Stage keys, params hashes and the results fingerprint are all this digest. It lives in
a module that imports nothing of the package, so storage (`artifacts`), `params` and
`report` can share it without an import cycle.
"""

from __future__ import annotations

import hashlib
import json


def digest(value) -> str:
    """Short sha256 (16 hex) of a JSON-able value, keys sorted; non-JSON values as str()."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
