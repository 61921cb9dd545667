"""``/v1/jobs/{id}/events``: Server-Sent Events from the job's Redis Stream, or JSON with ``?after=``.

We use FastAPI's built-in SSE response class (``fastapi.sse``) rather than sse-starlette: one
dependency fewer, and the route documents its event model in OpenAPI. The stream resumes exactly
after ``Last-Event-ID`` (ids are Redis Stream ids), sends keep-alive comments while idle, and
closes after the terminal event (``result`` or ``error``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from starlette.responses import Response

from zoserve.models.events import TERMINAL_TYPES, EventPage
from zoserve.models.jobs import JobStatus

from ...problems import Unprocessable
from ...store import JobStore
from ..deps import JobHashDep, StoreDep

router = APIRouter(prefix="/v1/jobs", tags=["events"])
KEEPALIVE_MS = 15_000
_STREAM_ID = r"^\d+(-\d+)?$"


@router.get(
    "/{job_id}/events",
    summary="Stream a job's events (SSE), or page them as JSON with ?after=",
    response_model=EventPage,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "`text/event-stream` (default) or, with `after`, a JSON EventPage."}},
)
async def job_events(
    request: Request,
    job: JobHashDep,
    store: StoreDep,
    after: Annotated[str | None, Query(max_length=40, pattern=_STREAM_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> Response:
    """Each event's SSE ``id`` is its stream id, ``event`` its type, ``data`` its JSON."""
    if after is not None:
        rows = await store.read_events(job["id"], after, count=limit)
        items = [ev for _, ev in rows]
        terminal = any(ev["type"] in TERMINAL_TYPES for ev in items)
        done = terminal or (len(items) < limit and JobStatus(job["status"]).terminal and not items)
        page = EventPage.model_validate({"items": items, "last_id": rows[-1][0] if rows else after, "done": done})
        return JSONResponse(page.model_dump(mode="json"))
    start = last_event_id or "0"
    if start != "0" and not _valid_id(start):
        raise Unprocessable("Last-Event-ID must be a stream id like 1700000000000-0")
    return EventSourceResponse(_stream(request, store, job["id"], start), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _valid_id(s: str) -> bool:
    import re

    return re.fullmatch(_STREAM_ID, s) is not None


def _format(rid: str, kind: str, data: str) -> str:
    return f"id: {rid}\nevent: {kind}\ndata: {data}\n\n"


async def _stream(request: Request, store: JobStore, job_id: str, after: str) -> AsyncIterator[str]:
    yield "retry: 1000\n\n"
    while True:
        rows = await store.read_raw(job_id, after, count=500)
        if not rows:
            status = await store.r.hget(f"zo:job:{job_id}", "status")
            if status is None or JobStatus(status.decode()).terminal:
                return
            rows = await store.read_raw(job_id, after, count=500, block_ms=KEEPALIVE_MS)
            if not rows:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
        yield "".join(_format(rid, kind, data) for rid, kind, data in rows)
        after = rows[-1][0]
        if any(kind in TERMINAL_TYPES for _, kind, _ in rows):
            return
