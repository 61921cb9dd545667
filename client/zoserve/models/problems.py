"""RFC 9457 problem details: the one error body the API returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """An RFC 9457 ``application/problem+json`` body."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("about:blank", description="URI identifying the problem type.")
    title: str = Field(description="Short, human-readable summary of the problem type.")
    status: int = Field(description="HTTP status code.")
    detail: str | None = Field(None, description="Explanation specific to this occurrence.")
    instance: str | None = Field(None, description="URI of the request that failed.")
    errors: list[dict[str, Any]] | None = Field(None, description="Validation errors (422 only).")
