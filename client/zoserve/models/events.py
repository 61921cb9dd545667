"""Job events: one model behind the SSE wire, the ``?after=`` JSON and the SDK's iterator."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field

from .jobs import JobStatus, Progress, Result
from .problems import Problem


class _Event(BaseModel):
    id: str = Field("", description="Redis Stream id; the SSE id; resume after it.")
    time: datetime


class StatusEvent(_Event):
    type: Literal["status"] = "status"
    status: JobStatus
    reason: str | None = None


class ProgressEvent(Progress, _Event):
    type: Literal["progress"] = "progress"
    extra: dict[str, float] = Field(default_factory=dict)


class QueryEvent(_Event):
    type: Literal["query"] = "query"
    query_id: str
    kind: Literal["values", "ranking"]
    payload: dict[str, Any] = Field(default_factory=dict)


class ResultEvent(_Event):
    type: Literal["result"] = "result"
    status: Literal[JobStatus.succeeded] = JobStatus.succeeded
    result: Result


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    status: Literal[JobStatus.failed, JobStatus.cancelled] = JobStatus.failed
    problem: Problem


JobEvent = Annotated[Union[StatusEvent, ProgressEvent, QueryEvent, ResultEvent, ErrorEvent], Field(discriminator="type")]
TERMINAL_TYPES = frozenset({"result", "error"})


class EventPage(BaseModel):
    """Events after a given id (``GET /v1/jobs/{id}/events?after=``)."""

    items: list[JobEvent]  # type: ignore[valid-type]
    last_id: str | None
    done: bool = Field(description="True once the terminal event is in ``items`` or was before ``after``.")
