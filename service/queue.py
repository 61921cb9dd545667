"""The Celery side the API needs: configuration, enqueueing segments by task name, and the sender.

The API never imports the workers; it sends ``zoserve.run_segment(job_id, ticket)`` by name
after the job record is written. Only ids travel through the broker; the spec stays in Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

import anyio
from celery import Celery
from kombu import Queue

from .settings import Settings

log = logging.getLogger(__name__)
RUN_SEGMENT = "zoserve.run_segment"
FED_RELAUNCH = "zoserve.fed.relaunch"
QUEUES = ("cpu", "gpu")
Segment = tuple[str, str]  # (job id, ticket)


def make_celery(settings: Settings, redis_url: str) -> Celery:
    """A Celery app configured for zoserve: JSON only, acks_late, prefetch 1, queues cpu and gpu."""
    app = Celery("zoserve", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_queues=[Queue(q) for q in QUEUES],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )
    return app


def enqueue_segment(app: Celery, job_id: str, ticket: str, queue: str | None, countdown: float | None = None) -> None:
    """Send one segment of a job to its queue.

    ``ignore_result``: nobody waits for a segment's result, and without it ``send_task`` subscribes
    to the result's pub/sub channel (and unsubscribes when the AsyncResult is dropped): two more
    broker round trips per send."""
    app.send_task(RUN_SEGMENT, args=[job_id, ticket], queue=queue or "cpu", countdown=countdown, ignore_result=True)


def fed_task_id(job_id: str, tag: str) -> str:
    """A federated task's id: it starts with the job's id, so the reaper finds a job's messages in the broker."""
    return f"{job_id}.{tag}.{uuid.uuid4().hex[:12]}"


def fed_queues(spec_json: str | bytes) -> set[str]:
    """Every queue a federated job's tasks go to: the job's, and each client's own."""
    spec = json.loads(spec_json)
    clients = spec.get("objective", {}).get("clients") or []
    return {q for q in (spec.get("queue"), *(c.get("queue") for c in clients)) if q} | {"cpu"}


def enqueue_relaunch(app: Celery, job_id: str, round_: int, queue: str | None) -> None:
    """Ask a worker to launch a federated job's round again (the reaper found none of its messages)."""
    app.send_task(FED_RELAUNCH, args=[job_id, round_], queue=queue or "cpu", ignore_result=True,
                  task_id=fed_task_id(job_id, f"relaunch{round_}"))


class Sender:
    """Sends the API's new segments to the broker from worker threads, after the 201 (one per process).

    ``send_task`` is synchronous (two broker round trips: the message and the ``task-sent`` event)
    and, run by the route, blocked the event loop for a third of a create. The route now only queues the
    segment here; a background task takes whatever has queued up, sends it spread over up to
    ``threads`` threads and drops those outbox entries with one ZREM. One thread was not enough:
    a send waits for each round trip, then for the GIL and the CPU (on a busy 2-core machine
    ~11 ms a send, so the sender, not the API, set the rate with two workers). A thread per request
    (``run_in_threadpool``) cost 1.4–1.8× the API CPU per create of this sender (bench/api_load.py setup).

    Nothing is lost by answering first: the job and its outbox entry were written together
    (``scripts.CREATE``), and a worker's reaper re-sends every entry still there after one period.
    So a process that dies with segments queued here, or a broker error (that segment and the rest
    of its thread's share stay in the outbox), delays those jobs by one reaper period; a duplicate
    send is harmless (the second message finds its ticket used). The queue is small: when the
    sender falls behind, creates wait for room, so a job's message trails its 201 by at most
    2 × ``maxsize`` sends (a batch in flight, a full queue).
    """

    def __init__(self, sent: Callable[[list[Segment]], Awaitable[None]], maxsize: int = 64, threads: int = 4):
        self._sent = sent  # drops the outbox entries of segments that are in the broker
        self._queue: asyncio.Queue[tuple[Celery, str, str, str | None]] = asyncio.Queue(maxsize)
        self._threads = threads
        self._task: asyncio.Task[None] | None = None

    async def send(self, app: Celery, job_id: str, ticket: str, queue: str | None) -> None:
        """Queue one segment for the broker (waits only while ``maxsize`` segments are queued)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="zoserve-sender")
        await self._queue.put((app, job_id, ticket, queue))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            shares = [batch[i::self._threads] for i in range(min(self._threads, len(batch)))]
            try:
                sent = await asyncio.gather(*(anyio.to_thread.run_sync(_send_all, share) for share in shares))
                done = [segment for share in sent for segment in share]
                if done:
                    await self._sent(done)
            except Exception:  # noqa: BLE001 - the sender must outlive a Redis restart; the reaper covers
                log.exception("dropping the outbox entries of %d sent segments failed", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` s; the reaper sends what is left), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("stopping before every queued segment was sent: a worker's reaper sends the rest")
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _send_all(batch: list[tuple[Celery, str, str, str | None]]) -> list[Segment]:
    """Send in order; at the first broker error, leave the rest to the reaper. Returns what was sent."""
    done: list[Segment] = []
    for app, job_id, ticket, queue in batch:
        try:
            enqueue_segment(app, job_id, ticket, queue)
        except Exception:  # noqa: BLE001 - kombu raises many types; the outbox entries stay
            log.warning("broker send failed; %d segments stay in the outbox for the reaper", len(batch) - len(done),
                        exc_info=True)
            break
        done.append((job_id, ticket))
    return done
