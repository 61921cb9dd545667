"""``/v1/jobs/{id}/events``: Server-Sent Events from the job's Redis Stream, or JSON with ``?after=``.

We use FastAPI's built-in SSE response class (``fastapi.sse``) rather than sse-starlette: one
dependency fewer, and the route documents its event model in OpenAPI. The stream resumes exactly
after ``Last-Event-ID`` (ids are Redis Stream ids), sends keep-alive comments while idle, and
closes after the terminal event (``result`` or ``error``). ``?types=`` keeps only some event types
(``status,result,error`` waits for the end without receiving every step's progress). Live rows come from the process's
:class:`~service.fanout.EventHub` (one XREAD for all subscribers), the backlog and any gap from
``XRANGE``, so a resume is exact whatever the hub does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.sse import EventSourceResponse
from starlette.responses import Response

from zoserve.models.events import TERMINAL_TYPES, EventPage
from zoserve.models.jobs import JobStatus

from ...fanout import Subscription, _text, sse_frame, stream_id
from ...problems import Unprocessable
from ...store import JobStore
from ..deps import JobHashDep, StoreDep

router = APIRouter(prefix="/v1/jobs", tags=["events"])
KEEPALIVE_MS = 15_000
_STREAM_ID = r"^\d+(-\d+)?$"
_TYPE = "(status|progress|query|result|error)"
_TYPES = rf"^{_TYPE}(,{_TYPE})*$"
Keep = frozenset[str] | None  # event types to send; None = all


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
    types: Annotated[str | None, Query(max_length=80, pattern=_TYPES, description=(
        "Only these event types, comma-separated; `result` and `error` (the end) are always sent. "
        "`status,result,error` waits for a job without receiving each step's progress."))] = None,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> Response:
    """Each event's SSE ``id`` is its stream id, ``event`` its type, ``data`` its JSON."""
    keep: Keep = TERMINAL_TYPES.union(types.split(",")) if types else None
    if after is not None:
        rows = await store.read_events(job["id"], after, count=limit)
        items = [ev for _, ev in rows if keep is None or ev["type"] in keep]  # the cursor passes the rest
        terminal = any(ev["type"] in TERMINAL_TYPES for ev in items)
        done = terminal or (len(rows) < limit and JobStatus(job["status"]).terminal and not rows)
        page = EventPage.model_validate({"items": items, "last_id": rows[-1][0] if rows else after, "done": done})
        return Response(page.model_dump_json(), media_type="application/json")  # pydantic's serialiser, not json.dumps
    start = last_event_id or "0"
    if start != "0" and not _valid_id(start):
        raise Unprocessable("Last-Event-ID must be a stream id like 1700000000000-0")
    return EventSourceResponse(_stream(request, store, job["id"], start, keep), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _valid_id(s: str) -> bool:
    import re

    return re.fullmatch(_STREAM_ID, s) is not None


async def _stream(request: Request, store: JobStore, job_id: str, after: str, keep: Keep) -> AsyncIterator[str]:
    """Catch up from Redis (exact, per subscriber), then follow the process's EventHub.

    A hub batch that starts after our position (we joined while the hub was ahead, or our
    queue overflowed) sends us back to Redis for the gap; rows we already sent are dropped.
    """
    yield "retry: 1000\n\n"
    async with store.hub.subscribe(job_id) as sub:
        while True:
            sub.lagged = False  # whatever was dropped so far, the catch-up below reads
            while True:  # catch-up: XRANGE strictly after ``after`` until nothing is left
                rows = await store.read_raw(job_id, after, count=500)
                if not rows:
                    break
                if chunk := "".join(sse_frame(*row) for row in rows if keep is None or row[1] in keep):
                    yield chunk
                after = rows[-1][0]
                if any(kind in TERMINAL_TYPES for _, kind, _ in rows):
                    return
            status = await store.r.hget(f"zo:job:{job_id}", "status")
            if status is None or JobStatus(_text(status)).terminal:
                return
            async for chunk, after, done in _follow(request, sub, after, keep):
                if chunk:
                    yield chunk
                if done:
                    return


async def _follow(request: Request, sub: Subscription, after: str, keep: Keep) -> AsyncIterator[tuple[str, str, bool]]:
    """Live rows from the hub as ``(sse text, new position, terminal?)``; returns on a gap."""
    pos = stream_id(after)
    while True:
        try:
            if sub.queue.empty():  # asyncio.timeout, not wait_for: no task per wait (hot path)
                async with asyncio.timeout(KEEPALIVE_MS / 1000):
                    batch = await sub.queue.get()
            else:
                batch = sub.queue.get_nowait()
        except TimeoutError:
            if await request.is_disconnected():
                yield "", after, True
                return
            yield ": keep-alive\n\n", after, False
            return  # re-check Redis every keep-alive: covers a hub that lost its connection
        if sub.lagged or batch.prev_key > pos:
            return  # a gap: the caller reads it from Redis
        # rows are after ``prev``: all new to us unless our catch-up already sent some (we are past prev)
        start = 0 if batch.prev_key >= pos else next((i for i, key in enumerate(batch.keys) if key > pos), None)
        if start is None:
            continue  # already sent during a catch-up
        after = batch.rows[-1][0]
        pos = stream_id(after)
        if keep is None:
            chunk = "".join(batch.frames[start:]) if start else "".join(batch.frames)
        else:
            chunk = "".join(sse_frame(*row) for row in batch.rows[start:] if row[1] in keep)
        yield chunk, after, batch.terminal
