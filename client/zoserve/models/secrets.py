"""Secrets in specs (auth headers) are ``SecretStr``: masked whenever a model is dumped, revealed
only where they must travel — from the SDK to the API, and from the API to the worker's store."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, SecretStr


def reveal(value: Any) -> Any:
    """A JSON-able copy of ``value`` (a model, or anything inside one) with secrets revealed."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {k: reveal(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [reveal(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return json.loads(json.dumps(value, default=str))
