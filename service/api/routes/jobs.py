"""``/v1/jobs``: create (idempotent), get, list, cancel."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response

from zoserve.models.jobs import Job, JobCreate, JobPage, JobStatus

from ...problems import NotFound, Unprocessable
from ...queue import enqueue_segment
from ...records import job_from_hash
from ...store import IdempotencyConflict
from ..deps import CeleryDep, JobHashDep, SettingsDep, StoreDep, TenantDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=Job, summary="Submit a job")
async def create_job(
    spec: Annotated[JobCreate, Body()],  # type: ignore[valid-type]
    response: Response,
    tenant: TenantDep,
    store: StoreDep,
    celery: CeleryDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Job:
    """Validate, record and enqueue a job. Same ``Idempotency-Key`` + same body → the same job."""
    dim = getattr(spec.objective, "dim", None)
    if isinstance(dim, int) and dim > settings.max_dim:
        raise Unprocessable(f"objective.dim {dim} exceeds this server's limit of {settings.max_dim}")
    try:
        job_id, created = await store.create_job(tenant, spec, idempotency_key)
    except IdempotencyConflict:
        raise Unprocessable("Idempotency-Key was already used with a different request body") from None
    h = await store.get_hash(tenant, job_id)
    assert h is not None
    if created:
        enqueue_segment(celery, job_id, h["ticket"], spec.queue)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return job_from_hash(h, settings.public_url)


@router.get("", response_model=JobPage, summary="List jobs, newest first")
async def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    settings: SettingsDep,
    status: Annotated[list[JobStatus] | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    """Filter by one or more ``status`` values; follow ``next_cursor`` for more."""
    seq = _decode_cursor(cursor)
    rows, nxt = await store.list_jobs(tenant, {s.value for s in status} if status else None, seq, limit)
    return JobPage(items=[job_from_hash(h, settings.public_url) for h in rows],
                   next_cursor=_encode_cursor(nxt) if nxt is not None else None)


@router.get("/{job_id}", response_model=Job, summary="Get a job")
async def get_job(job: JobHashDep, settings: SettingsDep) -> Job:
    return job_from_hash(job, settings.public_url)


@router.post("/{job_id}/cancel", response_model=Job, summary="Cancel a job")
async def cancel_job(job: JobHashDep, store: StoreDep, settings: SettingsDep, tenant: TenantDep) -> Job:
    """Queued or waiting jobs are cancelled at once; a running job stops within one step."""
    await store.cancel(job["id"])
    h = await store.get_hash(tenant, job["id"])
    if h is None:
        raise NotFound(f"no job {job['id']}")
    return job_from_hash(h, settings.public_url)


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s"):
            raise ValueError
        return int(raw[1:])
    except ValueError:
        raise Unprocessable("invalid cursor") from None


