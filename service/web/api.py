"""Public API routes behind the ranking form: candidate images, stored answers, rater links.

These are ordinary ``/v1`` routes (in OpenAPI, tenant-checked through ``JobHashDep``); the
browser pages call them exactly as the SDK would. Rater tokens reach only the ones
:mod:`service.raters` allows.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from starlette.concurrency import run_in_threadpool

from zoserve.models.queries import QueryAnswer
from zoserve.models.raters import RaterLink, RaterLinkCreate, RaterLinkInfo, RaterLinkPage

from .. import keys, raters
from ..api.deps import JobHashDep, SettingsDep, StoreDep
from ..problems import NotFound, Unprocessable
from .render import cached_png, etag, pick_renderer

router = APIRouter(prefix="/v1/jobs")
IMMUTABLE = "private, max-age=31536000, immutable"


@router.get(
    "/{job_id}/queries/{query_id}/candidates/{candidate_id}.png",
    tags=["queries"], summary="A ranking candidate drawn as a PNG", response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "The candidate drawn by the objective's renderer (palette, curve, image, vector), "
                                    "or the image the user's generator drew for it (render 'endpoint': PNG, JPEG or WebP)."},
               304: {"description": "Not modified (If-None-Match matched the ETag)."}},
)
async def candidate_png(query_id: str, candidate_id: str, job: JobHashDep, store: StoreDep,
                        if_none_match: Annotated[str | None, Header(max_length=200)] = None) -> Response:
    """Pure function of the candidate's point: cached forever by the browser (ETag + immutable)."""
    query = await store.get_query(job["id"], query_id)
    if query is None:
        raise NotFound(f"job {job['id']} has no query {query_id}")
    point = next((c.get("point") for c in query.get("candidates") or [] if c.get("id") == candidate_id), None)
    if point is None:
        raise NotFound(f"query {query_id} has no candidate {candidate_id}")
    render = query.get("render") or json.loads(job["spec_public"])["objective"].get("render")
    if render == "endpoint":  # drawn by the user's generator when the query was asked
        data, media_type = await store.r.hmget(keys.candidate_media(job["id"], query_id), candidate_id, f"{candidate_id}:type")
        if data is None:
            raise NotFound(f"candidate {candidate_id} of query {query_id} has no stored image")
        tag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        return _not_modified(tag) if _matches(tag, if_none_match) else _image(data, media_type.decode(), tag)
    render = pick_renderer(render)
    tag = etag(render, point)
    if _matches(tag, if_none_match):
        return _not_modified(tag)
    png = await run_in_threadpool(cached_png, render, point, tag)  # Pillow off the event loop
    return _image(png, "image/png", tag)


def _matches(tag: str, if_none_match: str | None) -> bool:
    return if_none_match is not None and tag in {t.strip() for t in if_none_match.split(",")}


def _not_modified(tag: str) -> Response:
    return Response(status_code=304, headers={"Cache-Control": IMMUTABLE, "ETag": tag})


def _image(data: bytes, media_type: str, tag: str) -> Response:
    """A candidate's image: a pure function of the query, so cached forever."""
    return Response(data, media_type=media_type, headers={"Cache-Control": IMMUTABLE, "ETag": tag})


@router.get("/{job_id}/queries/{query_id}/answer", response_model=QueryAnswer, tags=["queries"],
            summary="The answer a query received", response_model_exclude_none=True)
async def get_answer(query_id: str, job: JobHashDep, store: StoreDep) -> QueryAnswer:
    """404 until the query is answered (the form's strip of past rounds reads the winners here)."""
    body = await store.r.hget(keys.answers(job["id"]), query_id)
    if body is None:
        raise NotFound(f"query {query_id} of job {job['id']} has no answer")
    stored: dict[str, Any] = json.loads(body)
    return QueryAnswer.model_validate({k: stored[k] for k in ("values", "ranking") if stored.get(k) is not None})


@router.post("/{job_id}/rater-links", status_code=201, response_model=RaterLink, tags=["raters"],
             summary="Make a rater link: the ranking form of this job for someone without an API key")
async def create_rater_link(job: JobHashDep, store: StoreDep, settings: SettingsDep,
                            body: Annotated[RaterLinkCreate | None, Body()] = None) -> RaterLink:
    """Owner only. The token is returned once; Redis keeps its digest until it expires or is revoked."""
    objective = json.loads(job["spec_public"])["objective"]
    if objective.get("kind") != "ranking" or objective.get("oracle") not in ("human", "client"):
        raise Unprocessable("rater links are for ranking jobs answered by people (oracle 'human' or 'client')")
    days = body.expires_in_days if body and body.expires_in_days else settings.rater_link_days
    rec = await raters.create_link(store.r, job["id"], job["tenant"], days)
    url = f"{settings.public_url.rstrip('/')}/ui/r/{rec['token']}"
    return RaterLink.model_validate({**rec, "url": url})


@router.get("/{job_id}/rater-links", response_model=RaterLinkPage, tags=["raters"], summary="List a job's rater links")
async def list_rater_links(job: JobHashDep, store: StoreDep) -> RaterLinkPage:
    return RaterLinkPage(items=[RaterLinkInfo.model_validate(r) for r in await raters.list_links(store.r, job["id"])])


@router.delete("/{job_id}/rater-links/{link_id}", status_code=204, response_class=Response, tags=["raters"],
               summary="Revoke a rater link")
async def revoke_rater_link(link_id: str, job: JobHashDep, store: StoreDep) -> Response:
    """The token stops working at once."""
    if not await raters.revoke_link(store.r, job["id"], link_id):
        raise NotFound(f"job {job['id']} has no rater link {link_id}")
    return Response(status_code=204)
