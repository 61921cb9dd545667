"""Artifacts of finished jobs, and the defended prediction route of ZO-AE-DS jobs.

``GET /v1/jobs/{id}/artifacts/{name}`` streams a stored artifact with its media type.
``POST /v1/defenses/{id}/predict`` runs CERTIFY (Cohen et al.) of the job's smoothed, defended
classifier at one image *on a worker* (the API never imports torch): it sends the Celery task
``zoserve.defense.predict`` by name to the job's queue and waits for its result in a thread.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter, Body, Path, Response

from zoserve.models.defense import DefensePredictRequest, DefensePrediction
from zoserve.models.jobs import JobStatus

from ... import keys
from ...problems import BadGateway, Conflict, GatewayTimeout, NotFound, Unprocessable
from ..deps import CeleryDep, JobHashDep, StoreDep

router = APIRouter(tags=["defenses"])

PREDICT_TASK = "zoserve.defense.predict"
PREDICT_TIMEOUT_S = 120.0  # N0 + N batched endpoint calls; the default N = 10 000 takes a while


@router.get("/v1/jobs/{job_id}/artifacts/{name}", tags=["jobs"], summary="Download an artifact of a finished job",
            response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}, "application/json": {}, "image/png": {}}}})
async def get_artifact(job: JobHashDep, store: StoreDep,
                       name: Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]) -> Response:
    """The artifact's bytes, with the media type it was stored with (listed in ``result.artifacts``)."""
    found = await store.r.hgetall(keys.artifact(job["id"], name))
    if not found:
        raise NotFound(f"job {job['id']} has no artifact {name!r}")
    media = found[b"media_type"].decode()
    return Response(found[b"data"], media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.post("/v1/defenses/{job_id}/predict", response_model=DefensePrediction,
             summary="Smoothed prediction with a certified radius through a trained defence")
async def predict(job: JobHashDep, celery: CeleryDep,
                  body: Annotated[DefensePredictRequest, Body()]) -> DefensePrediction:
    """CERTIFY one image: front end → black box under Gaussian noise; ``label`` null = abstain.

    404 unless the job is a zo-ae-ds job of this tenant; 409 until it has succeeded; 504 when
    the worker does not answer within the route's timeout. Costs N0 + N black-box queries.
    """
    spec: dict[str, Any] = json.loads(job["spec_public"])
    if spec.get("algorithm") != "zo-ae-ds":
        raise NotFound(f"job {job['id']} is not a zo-ae-ds defence")
    if job["status"] != JobStatus.succeeded.value:
        raise Conflict(f"job {job['id']} is {job['status']}; the defence answers once it has succeeded")
    shape = spec["objective"]["input_shape"]
    got = [len(body.image), len(body.image[0]), len(body.image[0][0])]
    if got != shape:
        raise Unprocessable(f"image has shape {got}; this defence takes {shape}")
    sent = celery.send_task(PREDICT_TASK, args=[job["id"], body.image, body.n, body.alpha, body.seed],
                            queue=spec.get("queue") or "cpu")
    try:
        out = await anyio.to_thread.run_sync(lambda: sent.get(timeout=PREDICT_TIMEOUT_S, propagate=True))
    except CeleryTimeout:
        sent.revoke()
        raise GatewayTimeout(f"no worker answered within {PREDICT_TIMEOUT_S:g} s") from None
    except Exception as exc:  # noqa: BLE001 - the worker's error (black box down...) reaches the caller as 502
        raise BadGateway(f"the defended prediction failed: {type(exc).__name__}: {exc}"[:500]) from None
    finally:
        sent.forget()
    return DefensePrediction.model_validate(out)
