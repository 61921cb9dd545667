"""JobStore: the API's view of jobs, events and queries in Redis (async).

Invariants (each enforced by one Lua script in ``scripts.py``):

* A job is written with its first ``status`` event in one transaction; an Idempotency-Key maps
  to at most one job for 24 h, and reusing it with a different body is refused.
* Status moves ``queued → running ⇄ waiting → succeeded | failed | cancelled`` and never leaves a
  terminal status. Each change appends one ``status`` event (terminal ones a result/error event).
* Only the segment holding the current fencing token may write progress, checkpoints, pending
  queries or results; a stale segment's writes are rejected as a whole.
* Each step's progress event is appended once (``published_step``), and ``progress`` never moves back.
* A pending query is answered at most once, and only while it is the job's pending query.
* Events are read in stream order; ids are Redis Stream ids, strictly increasing per job.
* Every read and write is scoped by tenant: another tenant's job is "not found".
* A tenant has at most ``max_jobs_in_flight`` unfinished jobs (counted in the create script).
* Every new segment ticket (create, answer, continue, revival) is written with an outbox entry; the
  sender removes it once the message is in the broker, the segment's lease removes it too, and a
  worker's reaper re-sends entries whose sender died (``workers/reaper.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel

from zoserve.models.jobs import JobStatus

from . import keys, scripts
from .fanout import EventHub
from .records import body_hash, cancelled_problem, error_event, now_iso, reveal, status_event


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body."""


class StoreConflict(Exception):
    """A state change that the job's current state forbids (stale or duplicate answer)."""


class QuotaExceeded(Exception):
    """The tenant already has ``in_flight`` jobs that are not finished (``max_jobs_in_flight``)."""

    def __init__(self, in_flight: int):
        super().__init__(f"{in_flight} jobs in flight")
        self.in_flight = in_flight


def outbox_member(job_id: str, ticket: str) -> str:
    """The outbox entry of the segment ``(job_id, ticket)``; see ``keys.OUTBOX``."""
    return f"{job_id}|{ticket}"


class JobStore:
    """Async Redis-backed store used by the API."""

    def __init__(self, client: aioredis.Redis):
        self.r = client
        self.hub = EventHub(client)  # live SSE rows: one XREAD per process, not per subscriber
        self._create = client.register_script(scripts.CREATE)
        self._cancel = client.register_script(scripts.CANCEL)
        self._answer = client.register_script(scripts.ANSWER)

    async def create_job(self, tenant: str, spec: BaseModel, idem_key: str | None,
                         max_in_flight: int = 0) -> tuple[dict[str, str], bool]:
        """Record a queued job; returns ``(hash, created)``, ``created`` False on an idempotent replay.

        The hash is the job's as :meth:`get_hash` reads it; a new job's is the fields just written
        (all but ``seq``), not read back. Raises :class:`QuotaExceeded` when the tenant already has
        ``max_in_flight`` (> 0) unfinished jobs. The first segment is recorded in the outbox: call
        :meth:`sent` once it is enqueued (``queue.Sender`` does)."""
        job_id = "job_" + uuid.uuid4().hex
        digest = body_hash(spec) if idem_key else ""
        now = now_iso()
        objective = getattr(spec, "objective")
        fields = {
            "id": job_id, "tenant": tenant, "status": JobStatus.queued.value,
            "algorithm": getattr(spec, "algorithm"), "objective_kind": objective.kind,
            "name": getattr(spec, "name") or "", "spec": json.dumps(reveal(spec)),
            "spec_public": spec.model_dump_json(), "progress": "{}", "created_at": now, "updated_at": now,
            "ticket": uuid.uuid4().hex, "queue": getattr(spec, "queue", None) or "cpu",
        }
        flat = [x for kv in fields.items() for x in kv]
        idem = keys.idempotency(tenant, idem_key) if idem_key else keys.idempotency(tenant, "-")
        existing = await self._create(
            keys=[idem, keys.job(job_id), keys.events(job_id), keys.tenant_jobs(tenant), keys.SEQUENCE,
                  keys.tenant_active(tenant), keys.OUTBOX, keys.ACTIVE],
            args=[job_id, digest, keys.IDEMPOTENCY_TTL, status_event(JobStatus.queued), max_in_flight, keys.JOB_PREFIX,
                  outbox_member(job_id, fields["ticket"]), time.time(), *flat],
        )
        if existing and existing.startswith(b"!quota:"):
            raise QuotaExceeded(int(existing[7:]))
        if existing:
            old_id, old_digest = existing.decode().split("|", 1)
            if old_digest != digest:
                raise IdempotencyConflict(idem_key)
            h = await self.get_hash(tenant, old_id)
            assert h is not None, old_id  # jobs are never deleted, and the key is the tenant's
            return h, False
        return fields, True

    async def get_hash(self, tenant: str, job_id: str) -> dict[str, str] | None:
        """The job's hash, or None if it does not exist or belongs to another tenant."""
        raw = await self.r.hgetall(keys.job(job_id))
        if not raw:
            return None
        h = {k.decode(): v.decode() for k, v in raw.items()}
        return h if h.get("tenant") == tenant else None

    async def list_jobs(self, tenant: str, status: set[str] | None, cursor: int | None, limit: int) -> tuple[list[dict[str, str]], int | None]:
        """Newest first. ``cursor`` is the sequence number to continue below."""
        out: list[dict[str, str]] = []
        top: float | str = f"({cursor}" if cursor is not None else "+inf"
        while len(out) < limit:
            batch = await self.r.zrevrangebyscore(keys.tenant_jobs(tenant), top, "-inf", start=0, num=limit * 2, withscores=True)
            if not batch:
                return out, None
            pipe = self.r.pipeline(transaction=False)
            for jid, _ in batch:
                pipe.hgetall(keys.job(jid.decode()))
            for (jid, score), raw in zip(batch, await pipe.execute()):
                top = f"({int(score)}"
                h = {k.decode(): v.decode() for k, v in raw.items()}
                if h and (not status or h["status"] in status):
                    out.append(h)
                    if len(out) == limit:
                        return out, int(score)
        return out, None

    async def cancel(self, job_id: str) -> int:
        """See ``scripts.CANCEL`` for the return codes."""
        problem = cancelled_problem(job_id)
        code = int(await self._cancel(keys=[keys.job(job_id), keys.events(job_id)],
                                      args=[error_event(problem, JobStatus.cancelled), problem.model_dump_json(), now_iso()]))
        if code == 1:
            await self.r.publish(keys.CANCEL_CHANNEL, job_id)
        return code

    async def aclose(self) -> None:
        """Stop background readers (before the Redis client closes)."""
        await self.hub.aclose()

    async def read_events(self, job_id: str, after: str, count: int = 1000, block_ms: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Events strictly after stream id ``after`` ("0" = from the start)."""
        if block_ms is None:
            rows = await self.r.xrange(keys.events(job_id), min=f"({after}" if after != "0" else "-", count=count)
        else:
            res = await self.r.xread({keys.events(job_id): after}, count=count, block=block_ms)
            rows = res[0][1] if res else []
        return [(rid.decode(), {"id": rid.decode(), **orjson.loads(f[b"e"])}) for rid, f in rows]

    async def read_raw(self, job_id: str, after: str, count: int = 1000, block_ms: int | None = None) -> list[tuple[str, str, str]]:
        """Like :meth:`read_events` but unparsed: (id, type, json) — the SSE path passes JSON through."""
        if block_ms is None:
            rows = await self.r.xrange(keys.events(job_id), min=f"({after}" if after != "0" else "-", count=count)
        else:
            res = await self.r.xread({keys.events(job_id): after}, count=count, block=block_ms)
            rows = res[0][1] if res else []
        return [(rid.decode(), f[b"t"].decode(), f[b"e"].decode()) for rid, f in rows]

    async def list_queries(self, job_id: str, status: str | None) -> list[dict[str, Any]]:
        raw = await self.r.hgetall(keys.queries(job_id))
        answered = {k.decode() for k in await self.r.hkeys(keys.answers(job_id))}
        out = []
        for qid, body in raw.items():
            q = json.loads(body)
            q["status"] = "answered" if qid.decode() in answered else "pending"
            if status is None or q["status"] == status:
                out.append(q)
        return sorted(out, key=lambda q: q["step"])

    async def get_query(self, job_id: str, qid: str) -> dict[str, Any] | None:
        body = await self.r.hget(keys.queries(job_id), qid)
        return json.loads(body) if body else None

    async def answer(self, job_id: str, qid: str, answer: dict[str, Any]) -> str:
        """Store an answer and re-queue the job; returns the new segment ticket."""
        ticket = uuid.uuid4().hex
        code = int(await self._answer(
            keys=[keys.job(job_id), keys.queries(job_id), keys.answers(job_id), keys.events(job_id), keys.OUTBOX],
            args=[qid, json.dumps(answer), ticket, now_iso(), status_event(JobStatus.queued, "answer received"),
                  outbox_member(job_id, ticket), time.time()],
        ))
        if code == -1:
            raise KeyError(qid)
        if code == -2:
            raise StoreConflict(f"query {qid} was already answered")
        if code == -3:
            raise StoreConflict(f"query {qid} is not the job's pending query (stale)")
        return ticket

    async def sent(self, job_id: str, ticket: str) -> None:
        """The segment ``(job_id, ticket)`` is in the broker: drop its outbox entry (else a reaper re-sends it)."""
        await self.r.zrem(keys.OUTBOX, outbox_member(job_id, ticket))

    async def sent_many(self, segments: list[tuple[str, str]]) -> None:
        """:meth:`sent` for several ``(job_id, ticket)`` segments in one command."""
        await self.r.zrem(keys.OUTBOX, *(outbox_member(job_id, ticket) for job_id, ticket in segments))

    async def workers_alive(self, window_s: float) -> int:
        return int(await self.r.zcount(keys.WORKERS, time.time() - window_s, "+inf"))
