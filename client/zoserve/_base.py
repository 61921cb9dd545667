"""Shared non-I/O parts of the twin clients: requests, auth, idempotency, answers, budgets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from typing import Any, Callable

import httpx
from pydantic import BaseModel
from pydantic_core import from_json

from ._errors import error_for
from .models.jobs import Job as JobRecord
from .models.jobs import JobStatus, job_create_adapter
from .models.queries import PendingQuery
from .models.secrets import reveal

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


def client_kwargs(base_url: str | None, api_key: str | None, timeout: float) -> dict[str, Any]:
    """httpx client arguments: base URL and Bearer key (from args or ZOSERVE_URL / ZOSERVE_API_KEY)."""
    key = api_key or os.environ.get("ZOSERVE_API_KEY")
    headers = {"Accept": "application/json", "User-Agent": "zoserve-python/0.1"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return {"base_url": base_url or os.environ.get("ZOSERVE_URL", DEFAULT_URL), "headers": headers,
            "timeout": httpx.Timeout(timeout, read=max(timeout, 60.0))}


def spec_body(spec: Any) -> dict[str, Any]:
    """Validate a job spec locally (most 422s never leave the machine) and return its JSON body.

    Secrets (auth headers) are sent as given: a dict goes as it is, a model with its secrets revealed.
    """
    if isinstance(spec, BaseModel):
        return reveal(spec)  # type: ignore[no-any-return]
    job_create_adapter.validate_python(spec)
    return dict(spec)


WAIT_TYPES = ("status",)  # what wait() needs besides the terminal result/error: not every step's progress


def event_params(types: Iterable[str] | None, **params: Any) -> dict[str, Any]:
    """Query parameters of ``/events``: ``types`` comma-joined (the server always adds result and error)."""
    if types is not None:
        params["types"] = ",".join(types)
    return params


def idempotency_headers(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key or uuid.uuid4().hex}


def check(response: httpx.Response) -> Any:
    """The JSON body of a successful response, or the matching :mod:`zoserve._errors` exception."""
    if response.is_success:
        return from_json(response.content)  # pydantic's parser: ~7× the stdlib's speed on long float arrays
    try:
        body = response.json()
    except ValueError:
        body = {"title": response.reason_phrase, "status": response.status_code, "detail": response.text[:500]}
    raise error_for(response.status_code, body)


def budget_total(job: JobRecord) -> tuple[int | None, str]:
    """What a progress bar counts: steps if bounded, else queries."""
    budget = job.spec.get("budget", {})
    if budget.get("max_steps"):
        return int(budget["max_steps"]), "steps"
    return (int(budget["max_queries"]) if budget.get("max_queries") else None), "queries"


def answer_for(query: PendingQuery, fn: Callable[[Any], Any]) -> dict[str, Any]:
    """Call the user's function on a pending query and shape the answer body."""
    if query.kind == "values":
        return {"values": [float(v) for v in fn(query.points)]}
    return {"ranking": [str(c) for c in fn(query.candidates)]}
