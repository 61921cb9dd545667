"""``/v1/jobs``: create (idempotent), get, list, cancel."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response

from zoserve.models.endpoint import URLRefused, check_url_static
from zoserve.models.jobs import Job, JobCreate, JobPage, JobStatus

from ...problems import NotFound, TooManyRequests, Unprocessable
from ...records import job_from_hash
from ...settings import Settings
from ...store import IdempotencyConflict, QuotaExceeded
from ..deps import CeleryDep, JobHashDep, SenderDep, SettingsDep, StoreDep, TenantDep

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=Job, summary="Submit a job")
async def create_job(
    spec: Annotated[JobCreate, Body()],  # type: ignore[valid-type]
    response: Response,
    tenant: TenantDep,
    store: StoreDep,
    celery: CeleryDep,
    sender: SenderDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Job:
    """Validate, record and enqueue a job. Same ``Idempotency-Key`` + same body → the same job."""
    _check_caps(spec, settings)
    _check_urls(spec, settings)
    try:
        h, created = await store.create_job(tenant, spec, idempotency_key, settings.max_jobs_in_flight)
    except IdempotencyConflict:
        raise Unprocessable("Idempotency-Key was already used with a different request body") from None
    except QuotaExceeded as exc:
        raise TooManyRequests(f"{exc.in_flight} jobs in flight: this server allows {settings.max_jobs_in_flight} "
                              "unfinished jobs per tenant; wait for some to finish or cancel them",
                              retry_after=QUOTA_RETRY_AFTER) from None
    if created:  # the 201 does not wait for the broker: the job and its outbox entry are written (see Sender)
        await sender.send(celery, h["id"], h["ticket"], spec.queue)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{h['id']}"
    return job_from_hash(h, settings.public_url)


QUOTA_RETRY_AFTER = 5  # seconds; jobs finish at their own pace, so this is a polite polling interval


def _check_urls(spec: Any, settings: Settings) -> None:
    """Quick SSRF pre-check of every objective URL (422); workers check again at call time."""
    for url in _urls(spec.objective.model_dump(mode="json")):
        try:
            check_url_static(url, settings.ssrf_allow)
        except URLRefused as exc:
            raise Unprocessable(f"objective URL refused: {exc}") from None


def _check_caps(spec: Any, settings: Settings) -> None:
    """The server's caps on dimension and query budget (422); a job without max_queries gets the cap."""
    objective = spec.objective
    dim = getattr(objective, "dim", None)
    if dim is None and getattr(objective, "base", None) is not None:
        dim = len(objective.base)
    if isinstance(dim, int) and dim > settings.max_dim:
        raise Unprocessable(f"objective.dim {dim} exceeds this server's limit of {settings.max_dim}")
    cap = settings.max_queries_per_job
    if spec.budget.max_queries is not None and spec.budget.max_queries > cap:
        raise Unprocessable(f"budget.max_queries {spec.budget.max_queries} exceeds this server's limit of {cap} per job")
    if spec.budget.max_queries is None:
        spec.budget.max_queries = cap  # recorded in the spec, so the job shows the budget it runs under


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


def _urls(node: Any) -> list[str]:
    """Every ``url`` field anywhere in an objective spec (nested clients included)."""
    if isinstance(node, dict):
        found = [node["url"]] if isinstance(node.get("url"), str) else []
        return found + [u for k, v in node.items() if k != "url" for u in _urls(v)]
    if isinstance(node, list):
        return [u for v in node for u in _urls(v)]
    return []


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


