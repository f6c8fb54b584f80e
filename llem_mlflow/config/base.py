"""The base of every config section: unknown keys refused, no silent coercions.

pydantic's lax mode (needed so MLflow params, which are strings, parse back
into numbers) would also turn `batch_size: true` into 1 and keep the text
"None" as a string. Both are mistakes a person makes in YAML, so refuse them
here, with the field's own path in the message.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

# The text MLflow params use for an unset field (see params.py); never a real value.
NONE_TEXT = "None"


class ConfigSection(BaseModel):
    """A config section: unknown keys, inf/nan, bools as numbers and the text "None" refused."""

    # inf/nan are refused everywhere: no field means anything with them, and JSON cannot write them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_silent_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and value == NONE_TEXT:
            raise ValueError(
                "the text 'None' is not a value: write null (or leave the field out) for the library's default"
            )
        if isinstance(value, bool) and _is_number_field(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


def _is_number_field(annotation: Any) -> bool:
    """True for int/float fields (optionally `| None`), which must not take a bool."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False
