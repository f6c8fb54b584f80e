"""Secrets never reach MLflow: values under secret-looking keys are replaced.

Applied wherever user-supplied mappings are written out: params, the
normalised config artifact, config/resolved.json and the config hash.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
# Key names (any depth, any case) whose values are secrets.
SECRET_KEY = re.compile(r"(^|_|-)(token|api_?key|password|passwd|secret|auth|credentials?)($|_|-)", re.IGNORECASE)


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """A copy of `value` with every secret-keyed entry of every nested dict replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
