"""The thin Celery task around the runner: lease → load → run_segment → commit → next.

A segment runs for at most ``segment_seconds``, then checkpoints and requeues the job, so
cancellation is prompt, workers are shared fairly, and no task nears the visibility timeout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
import torch
from celery import Task, signals

from service.queue import RUN_SEGMENT, enqueue_segment
from service.records import error_event, event_json, status_event
from service.settings import Settings, get_settings
from zoserve.models.events import QueryEvent, ResultEvent
from zoserve.models.jobs import JobStatus, Result, job_create_adapter
from zoserve.models.problems import Problem

from .algorithms.checkpoint import dump_state, load_state
from .algorithms.registry import build_algorithm
from .celery_app import app, redis_url
from .defense import DEFENSE, run_defense_segment
from .device import DeviceMismatch, place_state, resolve_device
from .federated import FEDERATED
from .federated import start as start_federated
from .jobstore import CancelListener, Lease, LeaseRefused, RedisSink, WorkerStore, connect
from .objectives.base import ObjectiveError, ObjectiveInvalid, ObjectiveRefused, ObjectiveTransient
from .objectives.registry import build_objective
from .runner import Limits, Outcome, Signal, SegmentResult, dumps, initial_state, result_body, run_segment, split_state

log = logging.getLogger("zoserve.worker")


@dataclass
class Context:
    settings: Settings
    store: WorkerStore
    cancels: CancelListener
    device: torch.device


@functools.lru_cache(maxsize=1)
def context() -> Context:
    settings = get_settings()
    client = connect(redis_url())
    store = WorkerStore(client, settings.lease_seconds, settings.event_retention, settings.segment_max_crashes)
    return Context(settings, store, CancelListener(client), resolve_device(settings.device))


@app.task(name=RUN_SEGMENT, bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def run_segment_task(self: Task, job_id: str, ticket: str) -> str:
    """Run one segment of ``job_id`` if ``ticket`` is still the job's current one."""
    ctx = context()
    try:
        lease = ctx.store.acquire(job_id, ticket)
    except LeaseRefused as refused:
        if refused.code == -4:  # a live segment holds the job; look again when its lease would expire
            raise self.retry(countdown=int(refused.info) + 1, max_retries=None) from None
        if refused.code == -5:
            lease = Lease(job_id, refused.info, "running")
            h = ctx.store.job(job_id)
            _finish(ctx, lease, h, [], Outcome.CANCELLED, None, None)
            return "cancelled"
        if refused.code == -6:  # poison: its segments keep dying (killed, out of memory, stalled)
            token, _, crashes = refused.info.partition("|")
            return _fail(ctx, Lease(job_id, token, "running"), {}, Problem(
                type="urn:zoserve:worker-lost", title="Job keeps crashing its worker", status=500,
                detail=f"the worker running this job died or stalled {crashes} times in a row (killed, out of "
                       f"memory, or a step outlived its lease); giving up"))
        return f"skipped ({refused.code}: {refused.info})"
    return execute_segment(self, ctx, lease)


def execute_segment(task: Task, ctx: Context, lease: Lease) -> str:
    h = ctx.store.job(lease.job_id)
    spec = job_create_adapter.validate_python(json.loads(h["spec"]))
    if spec.algorithm in FEDERATED:  # rounds run as Celery chords, not as runner segments
        return start_federated(lease)
    if spec.algorithm in DEFENSE:  # ZO-AE-DS: staged training + certification, its own segment loop
        return run_defense_segment(ctx, lease, h)
    try:
        algo = build_algorithm(spec.algorithm, spec.algorithm_hparams())
        objective = build_objective(spec.objective, spec.seed, ctx.settings)
    except (KeyError, ValueError, ObjectiveError) as exc:
        return _fail(ctx, lease, h, _problem(exc, "Job could not start"))
    raw = ctx.store.checkpoint(lease.job_id)
    if raw:
        state = load_state(raw)
    else:
        x0 = torch.tensor(spec.x0, dtype=torch.float64) if spec.x0 is not None else objective.default_x0()  # type: ignore[attr-defined]
        state = initial_state(algo, x0, spec.seed)
    try:
        state = place_state(state, raw, ctx.device)
    except DeviceMismatch as exc:
        return _fail(ctx, lease, h, Problem(type="urn:zoserve:device-mismatch", title="Job cannot resume on this worker",
                                           status=409, detail=str(exc)))
    published = max(json.loads(h.get("progress") or "{}").get("step", 0), int(h.get("published_step") or 0))
    state["run.published_step"] = max(int(state.get("run.published_step", 0)), int(published))
    _, tally = split_state(state)
    answer = ctx.store.answer(lease.job_id, tally.pending) if tally.pending else None
    limits = Limits(spec.budget.max_steps, spec.budget.max_queries, spec.budget.max_seconds,
                    ctx.settings.segment_seconds, ctx.settings.flush_seconds)
    sink = RedisSink(ctx.store, lease, ctx.cancels)

    async def go() -> SegmentResult:
        try:
            return await run_segment(algo, state, objective, sink, limits, answer)
        finally:
            await objective.aclose()

    try:
        res = asyncio.run(go())
        if sink.drain() is Signal.FENCED:
            return "fenced"
    except ObjectiveTransient as exc:
        sink.drain()
        if task.request.retries < ctx.settings.segment_max_retries:
            countdown = min(60, 2 ** task.request.retries)
            # the outbox entry (due after the countdown) re-sends the retry if this worker dies before sending it
            ctx.store.commit(lease.job_id, lease.token, events=sink.buffer, release=True, outbox=h["ticket"],
                             due_in=countdown)
            raise task.retry(countdown=countdown, max_retries=None) from None
        return _fail(ctx, lease, h, _problem(exc, "Objective kept failing"), sink.buffer)
    except ObjectiveError as exc:
        sink.drain()
        return _fail(ctx, lease, h, _problem(exc, "Objective failed"), sink.buffer)
    except (redis.ConnectionError, redis.TimeoutError):
        sink.close()  # Redis stayed away past the client's retries: not the job's fault, so never fail it;
        raise  # its lease lapses and a reaper revives it from the last checkpoint
    except Exception as exc:  # noqa: BLE001 - a job's bug must not take the worker down
        log.exception("segment of %s crashed", lease.job_id)
        sink.drain()
        return _fail(ctx, lease, h, Problem(type="urn:zoserve:worker-error", title="Worker error", status=500,
                                           detail=f"{type(exc).__name__}: {exc}"[:500]), sink.buffer)
    return _finish(ctx, lease, h, sink.buffer, res.outcome, res, algo.x_of(split_state(res.state)[0]))


def _finish(ctx: Context, lease: Lease, h: dict[str, str], events: list[tuple[str, str]], outcome: Outcome,
            res: SegmentResult | None, x_now: torch.Tensor | None) -> str:
    job_id, store = lease.job_id, ctx.store
    hset: dict[str, str] = {}
    queries: dict[str, str] = {}
    events = list(events)
    ckpt = dump_state(res.state) if res is not None else None
    if res is not None:
        hset["progress"] = dumps(res.tally.progress())
    queue = json.loads(h["spec_public"]).get("queue")
    if outcome is Outcome.FENCED:
        return "fenced"
    if outcome is Outcome.CONTINUE:
        ticket = uuid.uuid4().hex
        hset["ticket"] = ticket
        if store.commit(job_id, lease.token, events=events, hset=hset, ckpt=ckpt, release=True, outbox=ticket) in (0, 1):
            enqueue_segment(app, job_id, ticket, queue)  # dying before this is fine: the reaper sends it
            store.sent(job_id, ticket)
        return "continue"
    if outcome is Outcome.WAITING:
        assert res is not None and res.query is not None
        qid = res.tally.pending
        payload = dict(res.pending.payload) if res.pending else {}
        if media := payload.pop("media", None):  # candidates drawn by the user's generator: stored beside the query
            store.put_media(job_id, qid, media)
        kind = res.query.kind
        record = {"id": qid, "job_id": job_id, "kind": kind, "step": res.tally.step + 1,
                  "created_at": datetime.now(timezone.utc).isoformat(), **payload}
        if kind == "ranking":
            record.setdefault("k", res.query.k)
        queries[qid] = dumps(record)
        events.append(("query", event_json(QueryEvent(time=datetime.now(timezone.utc), query_id=qid, kind=kind,
                                                      payload=payload))))
        events.append(("status", status_event(JobStatus.waiting, "waiting for an answer")))
        hset.update(status=JobStatus.waiting.value, pending_query=qid)
        store.commit(job_id, lease.token, events=events, hset=hset, queries=queries, ckpt=ckpt, release=True)
        return "waiting"
    if outcome is Outcome.DONE:
        assert res is not None and x_now is not None
        result = Result.model_validate(result_body(res.tally, res.reason, x_now))
        events.append(("result", event_json(ResultEvent(time=datetime.now(timezone.utc), result=result))))
        hset.update(status=JobStatus.succeeded.value, result=result.model_dump_json())
        store.commit(job_id, lease.token, events=events, hset=hset, ckpt=ckpt, release=True)
        return "succeeded"
    # cancelled
    problem = Problem(type="urn:zoserve:job-cancelled", title="Job cancelled", status=409,
                      detail="The job was cancelled by its owner.", instance=f"/v1/jobs/{job_id}")
    events.append(("error", error_event(problem, JobStatus.cancelled)))
    hset.update(status=JobStatus.cancelled.value, error=problem.model_dump_json())
    store.commit(job_id, lease.token, events=events, hset=hset, ckpt=ckpt, release=True)
    return "cancelled"


def _problem(exc: Exception, title: str) -> Problem:
    extra: dict[str, Any] = {}
    status = 422 if isinstance(exc, (ObjectiveInvalid, ObjectiveRefused, KeyError, ValueError)) else 502
    if isinstance(exc, ObjectiveError):
        if exc.status is not None:
            extra["endpoint_status"] = exc.status
        if exc.body is not None:
            extra["endpoint_body"] = exc.body[:200]
    kind = type(exc).__name__.removeprefix("Objective").lower() or "error"
    return Problem(type=f"urn:zoserve:objective-{kind}", title=title, status=status,
                   detail=str(exc.args[0] if exc.args else exc)[:1000], **extra)


def _fail(ctx: Context, lease: Lease, h: dict[str, str], problem: Problem,
          events: list[tuple[str, str]] = ()) -> str:  # type: ignore[assignment]
    problem.instance = f"/v1/jobs/{lease.job_id}"
    ctx.store.commit(lease.job_id, lease.token, events=[*events, ("error", error_event(problem))],
                     hset={"status": JobStatus.failed.value, "error": problem.model_dump_json()}, release=True)
    return "failed"


@signals.worker_ready.connect
def _start_reaper(sender: object = None, **_: object) -> None:
    """One reaper thread per worker (main process): revives dead segments, re-sends lost ones."""
    from .reaper import Reaper

    settings = get_settings()  # its own client: context() belongs to the processes that run segments
    store = WorkerStore(connect(redis_url()), settings.lease_seconds, settings.event_retention,
                        settings.segment_max_crashes)
    Reaper(store, app, settings.reaper_seconds).start()
