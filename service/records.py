"""Conversions between wire models and the Redis job hash (shared by API and workers)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import orjson
from pydantic import BaseModel, SecretStr

from zoserve.models.events import ErrorEvent, StatusEvent
from zoserve.models.jobs import Job, JobStatus
from zoserve.models.problems import Problem
from zoserve.models.secrets import reveal


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def body_hash(spec: BaseModel) -> str:
    """Stable hash of a validated spec (for Idempotency-Key comparisons)."""
    return hashlib.sha256(json.dumps(reveal(spec), sort_keys=True).encode()).hexdigest()


def event_json(event: BaseModel) -> str:
    """An event as stored in the stream (its id is assigned by XADD)."""
    return event.model_dump_json(exclude={"id"})


def status_event(status: JobStatus, reason: str | None = None) -> str:
    return event_json(StatusEvent(time=datetime.now(timezone.utc), status=status, reason=reason))


def error_event(problem: Problem, status: JobStatus = JobStatus.failed) -> str:
    return event_json(ErrorEvent(time=datetime.now(timezone.utc), status=status, problem=problem))  # type: ignore[arg-type]


def cancelled_problem(job_id: str) -> Problem:
    return Problem(type="urn:zoserve:job-cancelled", title="Job cancelled", status=409,
                   detail="The job was cancelled by its owner.", instance=f"/v1/jobs/{job_id}")


def job_from_hash(h: dict[str, str], public_url: str) -> Job:
    """The API's view of a job hash (secrets masked). orjson parses the stored JSON: a result's ``x_best``
    of 100 000 floats takes the stdlib 17 ms, orjson 2 ms."""
    jid = h["id"]
    return Job(
        id=jid,
        status=JobStatus(h["status"]),
        name=h.get("name") or None,
        algorithm=h["algorithm"],
        objective_kind=h["objective_kind"],
        spec=orjson.loads(h["spec_public"]),
        progress=orjson.loads(h.get("progress") or "{}"),
        result=orjson.loads(h["result"]) if h.get("result") else None,
        error=orjson.loads(h["error"]) if h.get("error") else None,
        created_at=h["created_at"],  # type: ignore[arg-type]
        updated_at=h["updated_at"],  # type: ignore[arg-type]
        events_url=f"{public_url.rstrip('/')}/v1/jobs/{jid}/events",
    )
