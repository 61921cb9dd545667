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


@pytest.fixture(scope="module")
def app_and_url(settings: Settings) -> Iterator[tuple[Any, str]]:
    """The API without a worker (jobs stay ours to publish into), no rate limit or quota."""
    app = create_app(settings.model_copy(update={"rate_limit_per_second": 0.0, "max_jobs_in_flight": 0}))
    with serve_app(app) as url:
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
    return [rid.decode() for rid, _ in redis.Redis.from_url(redis_url).xrange(f"zo:job:{job_id}:events")]


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
            pub = threading.Thread(target=lambda: (publish(store, job_id, token, 25, 0.005), finish(store, job_id, token)))
            pub.start()
            out = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            pub.join()
            return out

    streams = asyncio.run(main())
    expected = all_ids(str(settings.redis_url), job_id)
    assert len(expected) == 2 + 25 + 1  # queued, running, 25 progress, result
    assert all(ids == expected for ids in streams)
    assert app.state.store.hub.watched() == 0  # the feed is gone with its last subscriber


def test_overflowing_queues_fall_back_to_redis_and_stay_exact(app_and_url: tuple[Any, str],
                                                             settings: Settings) -> None:
    app, url = app_and_url
    hub = app.state.store.hub
    job_id, store, token = leased_job(url, str(settings.redis_url))
    old, dropped = hub.queue_size, hub.dropped
    hub.queue_size = 1  # every burst overflows: the gap must come from XRANGE

    async def main() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            started = asyncio.Event()
            full = asyncio.create_task(read_ids(client, f"/v1/jobs/{job_id}/events", started))
            await asyncio.wait_for(started.wait(), 30)
            pub = threading.Thread(target=lambda: (publish(store, job_id, token, 40, 0.0),  # a burst, then a trickle
                                                   publish(store, job_id, token, 40, 0.003, first=40),
                                                   finish(store, job_id, token)))
            pub.start()
            first = await asyncio.wait_for(read_ids(client, f"/v1/jobs/{job_id}/events", stop_after=12), 30)
            # resume from the last id seen, most likely while the trickle is still being published
            resumed = await asyncio.wait_for(read_ids(client, f"/v1/jobs/{job_id}/events", last_id=first[-1]), 30)
            pub.join()
            return await asyncio.wait_for(full, 30), first + resumed

    try:
        full, stitched = asyncio.run(main())
    finally:
        hub.queue_size = old
    expected = all_ids(str(settings.redis_url), job_id)
    assert len(expected) == 2 + 80 + 1
    assert full == expected and stitched == expected
    assert hub.dropped > dropped  # the overflow path really ran
