"""Pending queries a job publishes and the answers that resume it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PendingQuery(BaseModel):
    """A question the job waits on. ``points`` for value queries; ``candidates`` (display
    ids, shuffled) for rankings, where ``k`` best are wanted."""

    id: str
    job_id: str
    kind: Literal["values", "ranking"]
    step: int
    status: Literal["pending", "answered"] = "pending"
    points: list[list[float]] | None = None
    candidates: list[dict[str, Any]] | None = None
    k: int | None = None
    created_at: datetime


class QueryPage(BaseModel):
    items: list[PendingQuery]


class QueryAnswer(BaseModel):
    """An answer: ``values`` (one per point, minimisation) or ``ranking`` (candidate ids, best first)."""

    model_config = ConfigDict(extra="forbid")

    values: list[float] | None = Field(None, max_length=1_000_000)
    ranking: list[Annotated[str, Field(max_length=128)]] | None = Field(None, max_length=4096)

    @model_validator(mode="after")
    def _one_of(self) -> "QueryAnswer":
        if (self.values is None) == (self.ranking is None):
            raise ValueError("give exactly one of values or ranking")
        return self
