"""``/v1/jobs/{id}/queries``: pending queries and their answers."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from zoserve.models.jobs import Job
from zoserve.models.queries import PendingQuery, QueryAnswer, QueryPage

from ...problems import Conflict, NotFound, Unprocessable
from ...records import job_from_hash
from ...store import StoreConflict
from ..deps import CeleryDep, JobHashDep, SenderDep, SettingsDep, StoreDep, TenantDep

router = APIRouter(prefix="/v1/jobs", tags=["queries"])


@router.get("/{job_id}/queries", response_model=QueryPage, summary="List a job's queries")
async def list_queries(job: JobHashDep, store: StoreDep,
                       status: Annotated[Literal["pending", "answered"] | None, Query()] = None) -> QueryPage:
    rows = await store.list_queries(job["id"], status)
    return QueryPage(items=[PendingQuery.model_validate(q) for q in rows])


@router.post("/{job_id}/queries/{query_id}/answer", response_model=Job, status_code=202, summary="Answer a pending query")
async def answer_query(query_id: str, answer: QueryAnswer, job: JobHashDep, store: StoreDep,
                       celery: CeleryDep, sender: SenderDep, settings: SettingsDep, tenant: TenantDep) -> Job:
    """Values (one per point) or a ranking (candidate ids, best first). Stale or duplicate → 409."""
    query = await store.get_query(job["id"], query_id)
    if query is None:
        raise NotFound(f"job {job['id']} has no query {query_id}")
    _check_answer(query, answer)
    try:
        ticket = await store.answer(job["id"], query_id, answer.model_dump(exclude_none=True))
    except StoreConflict as exc:
        raise Conflict(str(exc)) from None
    except KeyError:
        raise NotFound(f"job {job['id']} has no query {query_id}") from None
    await sender.send(celery, job["id"], ticket, json.loads(job["spec_public"]).get("queue"))
    h = await store.get_hash(tenant, job["id"])
    if h is None:
        raise NotFound(f"no job {job['id']}")
    return job_from_hash(h, settings.public_url)


def _check_answer(query: dict[str, Any], answer: QueryAnswer) -> None:
    if query["kind"] == "values":
        n = len(query["points"])
        if answer.values is None:
            raise Unprocessable("this query wants values, one per point")
        if len(answer.values) != n:
            raise Unprocessable(f"expected {n} values, got {len(answer.values)}")
        if any(v != v or v in (float("inf"), float("-inf")) for v in answer.values):
            raise Unprocessable("values must be finite numbers")
        return
    if answer.ranking is None:
        raise Unprocessable("this query wants a ranking of candidate ids, best first")
    ids = {c["id"] for c in query["candidates"]}
    if len(set(answer.ranking)) != len(answer.ranking):
        raise Unprocessable("ranking lists a candidate twice")
    unknown = [c for c in answer.ranking if c not in ids]
    if unknown:
        raise Unprocessable(f"unknown candidate ids: {unknown[:5]}")
    need = query.get("k") or len(ids)
    if len(answer.ranking) < need:
        raise Unprocessable(f"rank at least the best {need} candidates")
