"""SSE fan-out (service/fanout.py): one XREAD per process feeds every subscriber, exactly.

Events are published the way a worker writes them (a lease, then fenced COMMITs), while the
subscribers are live, so the hub path (not only the XRANGE backlog) is what delivers them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from service.app import create_app
from service.settings import Settings
from tests.conftest import API_KEY
from tests.support.stack import serve_app
from workers.jobstore import WorkerStore

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SPEC = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 3},
        "budget": {"max_steps": 10}}


class NoBroker:
    """Stands in for the Celery producer: the session's worker must not lease our jobs."""

    def send_task(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def app_and_url(settings: Settings) -> Iterator[tuple[Any, str]]:
    """The API with no broker behind it (the test publishes as the worker), no rate limit or quota."""
    app = create_app(settings.model_copy(update={"rate_limit_per_second": 0.0, "max_jobs_in_flight": 0}))
    with serve_app(app) as url:
        app.state.celery = NoBroker()
        yield app, url


def leased_job(url: str, redis_url: str) -> tuple[str, WorkerStore, str]:
    job_id = httpx.post(f"{url}/v1/jobs", json=SPEC, headers=AUTH).raise_for_status().json()["id"]
    store = WorkerStore(redis.Redis.from_url(redis_url), lease_ttl=60, maxlen=10_000)
    ticket = store.r.hget(f"zo:job:{job_id}", "ticket").decode()  # type: ignore[union-attr]
    return job_id, store, store.acquire(job_id, ticket).token


def publish(store: WorkerStore, job_id: str, token: str, n: int, every: float, first: int = 0) -> None:
    for i in range(first, first + n):
        ev = {"type": "progress", "time": "2026-01-01T00:00:00Z", "step": i, "queries": i, "failed_queries": 0,
              "evaluations": i, "value": 1.0, "best_value": 1.0, "extra": {}}
        assert store.commit(job_id, token, events=[("progress", json.dumps(ev))]) == 0
        time.sleep(every)


def finish(store: WorkerStore, job_id: str, token: str) -> None:
    result = {"type": "result", "time": "2026-01-01T00:00:00Z", "status": "succeeded",
              "result": {"x_best": [0.0], "best_value": 0.0, "steps": 1, "queries": 1}}
    store.commit(job_id, token, events=[("result", json.dumps(result))], hset={"status": "succeeded"}, release=True)


def publish_and_finish(store: WorkerStore, job_id: str, token: str, phases: list[tuple[int, int, float]]) -> None:
    """``(first, n, every)`` phases of progress events, then the terminal result."""
    for first, n, every in phases:
        publish(store, job_id, token, n, every, first)
    finish(store, job_id, token)


async def read_ids(client: httpx.AsyncClient, url: str, started: asyncio.Event | None = None,
                   last_id: str | None = None, stop_after: int | None = None) -> list[str]:
    """Event ids of one SSE stream, until the terminal event (or ``stop_after`` progress events)."""
    headers = {**AUTH, **({"Last-Event-ID": last_id} if last_id else {})}
    ids: list[str] = []
    async with client.stream("GET", url, headers=headers) as r:
        assert r.status_code == 200
        buf = ""
        async for text in r.aiter_text():
            buf += text
            *frames, buf = buf.split("\n\n")
            for frame in frames:
                fields = dict(line.split(": ", 1) for line in frame.split("\n") if ": " in line and line[0] != ":")
                if "id" not in fields:
                    continue
                ids.append(fields["id"])
                if started is not None and fields["event"] == "status" and '"running"' in fields["data"]:
                    started.set()
                if fields["event"] in ("result", "error") or (stop_after is not None and len(ids) >= stop_after):
                    return ids
    return ids


def all_ids(redis_url: str, job_id: str) -> list[str]:
    rows: list[tuple[bytes, Any]] = redis.Redis.from_url(redis_url).xrange(f"zo:job:{job_id}:events")  # type: ignore[assignment]
    return [rid.decode() for rid, _ in rows]


def test_more_subscribers_than_redis_connections_all_get_every_event(app_and_url: tuple[Any, str],
                                                                   settings: Settings) -> None:
    app, url = app_and_url
    job_id, store, token = leased_job(url, str(settings.redis_url))
    n_subs = 120  # > the 100 connections of the API's Redis pool

    async def main() -> list[list[str]]:
        limits = httpx.Limits(max_connections=n_subs + 5)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            events = [asyncio.Event() for _ in range(n_subs)]
            tasks = [asyncio.create_task(read_ids(client, f"/v1/jobs/{job_id}/events", e)) for e in events]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
            assert app.state.store.hub.watched() == 1  # one job, one feed, whatever the subscribers
            pub = threading.Thread(target=publish_and_finish, args=(store, job_id, token, [(0, 25, 0.005)]))
            pub.start()
            out = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            pub.join()
            return out

    streams = asyncio.run(main())
    expected = all_ids(str(settings.redis_url), job_id)
    assert len(expected) == 2 + 25 + 1  # queued, running, 25 progress, result
    assert all(ids == expected for ids in streams)
    assert app.state.store.hub.watched() == 0  # the feed is gone with its last subscriber


def test_a_full_queue_drops_the_batch_and_marks_the_subscriber(settings: Settings) -> None:
    import redis.asyncio as aioredis

    from service.fanout import EventHub

    async def main() -> tuple[int, bool, int]:
        client = aioredis.Redis.from_url(str(settings.redis_url))
        hub = EventHub(client, queue_size=1)
        key = "zo:job:hub-test:events"
        await client.delete(key)
        try:
            async with hub.subscribe("hub-test") as sub:
                for i in range(2):  # two batches; nobody consumes, so the second finds the queue full
                    await client.xadd(key, {"t": "progress", "e": str(i)})
                    for _ in range(200):
                        if sub.queue.qsize() == 1 and hub.dropped == i:
                            break
                        await asyncio.sleep(0.01)
                return hub.dropped, sub.lagged, sub.queue.qsize()
        finally:
            await hub.aclose()
            await client.delete(key)
            await client.aclose()

    assert asyncio.run(main()) == (1, True, 1)


def test_gaps_are_read_from_redis_and_resume_is_exact(app_and_url: tuple[Any, str], settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other batch is lost on its way to each subscriber (the terminal one excepted, which
    would otherwise only be found at the next keep-alive): the batch after a loss starts past
    the subscriber's position, so the gap is read from Redis and the stream must not notice."""
    from service import fanout

    app, url = app_and_url
    job_id, store, token = leased_job(url, str(settings.redis_url))
    offered = {"n": 0}
    real_offer = fanout.Subscription.offer

    def lossy_offer(self: fanout.Subscription, batch: fanout.Batch) -> bool:
        offered["n"] += 1
        if offered["n"] % 2 and not any(kind == "result" for _, kind, _ in batch.rows):
            return True  # lost without a trace: only ``batch.prev`` of the next one reveals it
        return real_offer(self, batch)

    monkeypatch.setattr(fanout.Subscription, "offer", lossy_offer)

    async def main() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            started = asyncio.Event()
            full = asyncio.create_task(read_ids(client, f"/v1/jobs/{job_id}/events", started))
            await asyncio.wait_for(started.wait(), 30)
            burst_then_trickle = [(0, 40, 0.0), (40, 40, 0.003)]
            pub = threading.Thread(target=publish_and_finish, args=(store, job_id, token, burst_then_trickle))
            pub.start()
            first = await asyncio.wait_for(read_ids(client, f"/v1/jobs/{job_id}/events", stop_after=12), 30)
            # resume from the last id seen, most likely while the trickle is still being published
            resumed = await asyncio.wait_for(read_ids(client, f"/v1/jobs/{job_id}/events", last_id=first[-1]), 30)
            pub.join()
            return await asyncio.wait_for(full, 30), first + resumed

    full, stitched = asyncio.run(main())
    expected = all_ids(str(settings.redis_url), job_id)
    assert len(expected) == 2 + 80 + 1
    assert full == expected and stitched == expected
    assert offered["n"] >= 4  # the hub path really ran (and half of it was dropped)


def test_a_new_job_joins_a_blocked_reader_at_once(settings: Settings) -> None:
    """The reader is blocked (5 s) on job A's stream when job B gets its first subscriber: B's
    events must still arrive within a fraction of that (the wake stream interrupts the XREAD)."""
    import redis.asyncio as aioredis

    from service.fanout import EventHub

    async def main() -> float:
        client = aioredis.Redis.from_url(str(settings.redis_url))
        hub = EventHub(client, block_ms=5000)
        a, b = "zo:job:hub-a:events", "zo:job:hub-b:events"
        await client.delete(a, b)
        try:
            async with hub.subscribe("hub-a"):
                for _ in range(300):
                    if hub._in_xread:
                        break
                    await asyncio.sleep(0.01)
                assert hub._in_xread
                async with hub.subscribe("hub-b") as sub_b:
                    t0 = time.perf_counter()
                    await client.xadd(b, {"t": "progress", "e": "{}"})
                    batch = await asyncio.wait_for(sub_b.queue.get(), 2.0)
                    assert [kind for _, kind, _ in batch.rows] == ["progress"]
                    return time.perf_counter() - t0
        finally:
            await hub.aclose()
            await client.delete(a, b)
            await client.aclose()

    assert asyncio.run(main()) < 1.0
