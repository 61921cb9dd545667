"""The worker's side of the job store (sync redis): lease, load, fenced commits, answers.

Same keys and Lua scripts as ``service.store`` (whose docstring states the invariants).
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from service import keys, scripts
from service.scripts import PROGRESS_RUN as RUN
from service.metrics import LatencyRecorder, push_latency
from service.records import now_iso, status_event

from .runner import PROGRESS_KEYS, ProgressRow, Signal, dumps, progress_event, wire_event


@dataclass(frozen=True)
class Lease:
    job_id: str
    token: str
    previous_status: str


def connect(url: str) -> redis.Redis:
    """A worker's Redis client: it rides out a Redis restart (up to ~15 s of retries with backoff);
    every write it retries is idempotent (``COMMIT`` carries a commit id)."""
    return redis.Redis.from_url(url, retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 12),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError], health_check_interval=30)


class ProgressRun:
    """Progress events of consecutive steps, serialised in bulk as the step loop hands them over (each
    flush) and stored by one COMMIT argument: JSON lines that the script splits into stream entries.

    One argument per flush instead of one per event keeps the flush thread's Python (which holds the
    GIL, so stalls the step loop) to a few calls however many steps a flush carries."""

    __slots__ = ("first", "lines", "last")

    def __init__(self, rows: list[ProgressRow]):
        self.first: int = rows[0][1]
        self.lines: list[bytes] = []
        self.last: dict[str, Any] = {}
        self.add(rows)

    def add(self, rows: list[ProgressRow]) -> bool:
        """Append ``rows`` if they start at the next step; False (nothing appended) otherwise."""
        if not rows:
            return True
        if rows[0][1] != self.first + len(self.lines):
            return False
        events = [progress_event(row) for row in rows]
        self.lines += [wire_event(event) for event in events]
        self.last = events[-1]
        return True


def progress_field(events: list[tuple[str, Any]]) -> dict[str, str]:
    """``{"progress": tally}`` of the last progress event given as a dict (or ending a run), or ``{}``."""
    for kind, ev in reversed(events):
        last = ev.last if isinstance(ev, ProgressRun) else ev
        if kind == "progress" and isinstance(last, dict):
            return {"progress": dumps({k: last[k] for k in PROGRESS_KEYS})}
    return {}


def _pair(kind: str, ev: Any) -> tuple[int, str, str | bytes]:
    """(step, type, payload) of one ``events`` item as COMMIT takes it (step 0: not a progress event)."""
    if isinstance(ev, ProgressRun):
        return ev.first, RUN, b"\n".join(ev.lines)
    if isinstance(ev, dict):
        return (ev["step"] if kind == "progress" else 0), kind, wire_event(ev)
    return 0, kind, ev


class LeaseRefused(Exception):
    """The segment must not run: ``code`` as in ``scripts.ACQUIRE``; ``info`` its detail."""

    def __init__(self, code: int, info: str):
        super().__init__(f"lease refused ({code}: {info})")
        self.code, self.info = code, info


class WorkerStore:
    """Sync store used by segments."""

    def __init__(self, client: redis.Redis, lease_ttl: int, maxlen: int, max_crashes: int = 3):
        self.r = client
        self.lease_ttl, self.maxlen, self.max_crashes = lease_ttl, maxlen, max_crashes
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._commit = client.register_script(scripts.COMMIT)
        self._renew = client.register_script(scripts.RENEW)
        self._revive = client.register_script(scripts.REVIVE)
        self._resend = client.register_script(scripts.RESEND)

    def acquire(self, job_id: str, ticket: str) -> Lease:
        from zoserve.models.jobs import JobStatus

        code, info = self._acquire(keys=[keys.fence(job_id), keys.lease(job_id), keys.job(job_id), keys.events(job_id),
                                         keys.OUTBOX, keys.OPEN],
                                   args=[ticket, self.lease_ttl, now_iso(), status_event(JobStatus.running),
                                         self.max_crashes, job_id])
        info = info.decode() if isinstance(info, bytes) else str(info)
        if int(code) in (-5, -6):
            raise LeaseRefused(int(code), info)  # cancel requested / crashed too often; info starts with the token
        if int(code) < 0:
            raise LeaseRefused(int(code), info)
        return Lease(job_id, str(code), info)

    def job(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(keys.job(job_id)).items()}

    def checkpoint(self, job_id: str) -> bytes | None:
        return self.r.get(keys.checkpoint(job_id))  # type: ignore[return-value]

    def answer(self, job_id: str, qid: str) -> dict[str, Any] | None:
        raw = self.r.hget(keys.answers(job_id), qid)
        return json.loads(raw) if raw else None

    def commit(self, job_id: str, token: str, *, events: list[tuple[str, Any]] = (),  # type: ignore[assignment]
               hset: dict[str, str] | None = None, queries: dict[str, str] | None = None, ckpt: bytes | None = None,
               release: bool = False, outbox: str | None = None, due_in: float = 0.0) -> int:
        """One fenced write of (type, json) events, fields, queries and checkpoint; see ``scripts.COMMIT``.

        The job's ``progress`` field follows the last progress event written (unless ``hset`` sets it): a
        resumed segment reads it to know which steps are already in the stream.

        ``outbox``: a ticket whose segment this worker is about to send (due ``due_in`` seconds from now); call
        :meth:`sent` after sending it. Idempotent: a retry after a lost reply (Redis restart) applies nothing twice.
        """
        hset = {**progress_field(events), **(hset or {})}
        op = {"hset": {"updated_at": now_iso(), **hset}, "queries": queries or {},
              "release": release, "lease_ttl": self.lease_ttl, "maxlen": self.maxlen, "cid": uuid.uuid4().hex,
              "job": job_id, "outbox": f"{job_id}|{outbox}" if outbox else "", "due": time.time() + due_in}
        pairs = [_pair(kind, ev) for kind, ev in events]
        op["steps"] = [step for step, _, _ in pairs]
        flat = [part for _, kind, payload in pairs for part in (kind, payload)]
        return int(self._commit(keys=[keys.fence(job_id), keys.lease(job_id), keys.job(job_id), keys.events(job_id),
                                      keys.checkpoint(job_id), keys.queries(job_id), keys.OUTBOX, keys.OPEN],
                                args=[token, json.dumps(op), ckpt or b"", *flat]))

    def put_media(self, job_id: str, query_id: str, media: dict[str, tuple[bytes, str]]) -> None:
        """Store a query's candidate images (written before the fenced commit that publishes the query)."""
        mapping: dict[str, bytes | str] = {}
        for cid, (data, media_type) in media.items():
            mapping[cid], mapping[f"{cid}:type"] = data, media_type
        self.r.hset(keys.candidate_media(job_id, query_id), mapping=mapping)

    def sent(self, job_id: str, ticket: str) -> None:
        """The segment ``(job_id, ticket)`` is in the broker: drop its outbox entry."""
        self.r.zrem(keys.OUTBOX, f"{job_id}|{ticket}")

    def renew(self, job_id: str, token: str) -> bool:
        """Extend a live segment's lease (a long step); False once it released or was fenced out."""
        return bool(self._renew(keys=[keys.fence(job_id), keys.lease(job_id), keys.job(job_id)],
                                args=[token, self.lease_ttl]))

    def revive(self, job_id: str) -> tuple[str, str] | None:
        """``(ticket, queue)`` of a new segment for a job whose segment died (see ``scripts.REVIVE``), or None."""
        ticket = uuid.uuid4().hex
        queue = self._revive(keys=[keys.job(job_id), keys.lease(job_id), keys.OUTBOX, keys.OPEN],
                             args=[job_id, ticket, time.time(), now_iso()])
        return (ticket, queue.decode()) if queue else None

    def resend(self, member: str) -> tuple[str, str, str] | None:
        """``(job_id, ticket, queue)`` of an outbox entry still worth sending (see ``scripts.RESEND``), or None."""
        job_id, _, ticket = member.partition("|")
        queue = self._resend(keys=[keys.job(job_id), keys.OUTBOX], args=[member, ticket, time.time()])
        return (job_id, ticket, queue.decode()) if queue else None


class RedisSink:
    """Buffers progress events and writes them (fenced) from a background thread, so the
    runner computes the next steps while Redis stores the last ones. Writes stay in order
    (one writer thread); a flush reports the outcome of the previous write (cancel, fenced)."""

    def __init__(self, store: WorkerStore, lease: Lease, cancel_flags: "CancelListener | None" = None):
        self.store, self.lease, self.cancel_flags = store, lease, cancel_flags
        self.buffer: list[tuple[str, Any]] = []  # (type, event JSON, dict or ProgressRun)
        self._run: ProgressRun | None = None  # the buffer's last item while it is a run
        self._cancel = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoserve-flush")
        self._inflight: Future[int] | None = None
        self.latency = LatencyRecorder()  # objective latency for /metrics, pushed with the flushes
        self.observe = self.latency.observe
        self.count_queries = self.latency.add_queries
        self._done = threading.Event()  # a step longer than the lease must not look like a dead segment
        threading.Thread(target=self._keep_lease, name="zoserve-lease", daemon=True).start()

    def _keep_lease(self) -> None:
        while not self._done.wait(max(1.0, self.store.lease_ttl / 3)):
            try:
                if not self.store.renew(self.lease.job_id, self.lease.token):
                    return
            except redis.RedisError:  # Redis restarting: try again next period
                pass

    def progress(self, rows: list[ProgressRow]) -> None:
        run = self._run
        if run is None or not run.add(rows):
            self._run = ProgressRun(rows)
            self.buffer.append(("progress", self._run))

    def flush(self) -> Signal:
        if self._inflight is not None and not self._inflight.done():
            return Signal.OK  # the last write is still going: keep buffering
        code = self._settle(wait=False)
        if code is None or code == 0:
            events, self.buffer, self._run = self.buffer, [], None
            self._inflight = self._writer.submit(self._write, events, self.latency.take())
        return self._signal(code)

    def _write(self, events: list[tuple[str, Any]], latency: dict[str, float] | None) -> int:
        code = self.store.commit(self.lease.job_id, self.lease.token, events=events)
        self._push(latency)
        return code

    def _push(self, latency: dict[str, float] | None) -> None:
        try:
            push_latency(self.store.r, latency)
        except redis.RedisError:  # metrics never fail a segment
            pass

    def close(self) -> None:
        """Abandon the segment (Redis unreachable): stop renewing its lease so that it lapses."""
        self._done.set()
        self._writer.shutdown(wait=False)

    def drain(self) -> Signal:
        """Wait for the write in flight (call before the segment's final commit)."""
        self._done.set()
        signal = self._signal(self._settle(wait=True))
        self._writer.shutdown(wait=True)
        self._push(self.latency.take(force=True))
        return signal

    def _settle(self, wait: bool) -> int | None:
        if self._inflight is None or (not wait and not self._inflight.done()):
            return None
        code, self._inflight = self._inflight.result(), None
        return code

    def _signal(self, code: int | None) -> Signal:
        if code in (-1, -2):
            return Signal.FENCED
        if code == 1:
            self._cancel = True
            return Signal.CANCEL
        return Signal.OK

    def cancelled(self) -> bool:
        return self._cancel or (self.cancel_flags is not None and self.cancel_flags.is_set(self.lease.job_id))


class CancelListener:
    """A thread per worker process that records cancel requests published on ``zo:cancel``,
    so a running job sees its cancel at its next flush without a Redis round trip."""

    def __init__(self, client: redis.Redis):
        self._ids: set[str] = set()
        self._client = client
        self._thread = threading.Thread(target=self._run, name="zoserve-cancel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.CANCEL_CHANNEL)
                for msg in pubsub.listen():
                    if msg and msg.get("type") == "message":
                        self._ids.add(msg["data"].decode())
            except Exception:  # noqa: BLE001 - reconnect after Redis restarts
                time.sleep(1.0)

    def is_set(self, job_id: str) -> bool:
        return job_id in self._ids


class Heartbeat:
    """Writes this worker's name and time into ``zo:workers`` so /readyz can count live workers."""

    def __init__(self, client: redis.Redis, name: str, every: float):
        self._client, self._name, self._every = client, name, every
        threading.Thread(target=self._run, name="zoserve-heartbeat", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self._client.zadd(keys.WORKERS, {self._name: time.time()})
            except Exception:  # noqa: BLE001 - keep beating after Redis restarts
                pass
            time.sleep(self._every)
