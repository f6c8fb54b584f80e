"""MLflow's rules for a registered model's alias, checked before anything talks to MLflow.

The same rules as MLflow 3.17 (`mlflow.utils.validation._validate_model_alias_name` and
`_validate_model_alias_name_reserved`), written out so that `tag-best`, `register` and the
config refuse a bad alias at once, without importing MLflow. A test compares them with MLflow's.
"""

from __future__ import annotations

import re

_ALLOWED = re.compile(r"^[\w\-]+$")  # letters, digits, underscores and dashes
_VERSION_LIKE = re.compile(r"^[vV]\d+$")  # v1, V12: MLflow reads these as version numbers
MAX_LENGTH = 255


def alias_problem(alias: str) -> str | None:
    """Why MLflow would refuse `alias`, or None when it is a valid alias."""
    if not alias:
        return "an alias cannot be empty"
    if not _ALLOWED.match(alias):
        return f"alias {alias!r} may only hold letters, digits, underscores (_) and dashes (-)"
    if len(alias) > MAX_LENGTH:
        return f"alias {alias[:20]!r}... is {len(alias)} characters; MLflow allows {MAX_LENGTH}"
    if alias.lower() == "latest":
        return f"alias {alias!r} is reserved by MLflow (models:/NAME/latest already means the newest version): choose another name"
    if _VERSION_LIKE.match(alias):
        return f"alias {alias!r} is reserved by MLflow (it reads as version {alias[1:]}): choose another name"
    return None
