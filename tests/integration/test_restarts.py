"""Restarts: Redis (AOF) mid-run loses no job, event or pending query; the API restarting under an
open SSE stream costs the SDK nothing (it resumes after Last-Event-ID)."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

import zoserve
from service.embedded import EmbeddedRedis, free_port
from service.settings import Settings
from tests.conftest import API_KEY
from tests.support.chaos import Worker, audit, reference_run, stream
from tests.support.stack import serve_app, wait_until


def spec(i: int, latency_ms: float = 20) -> dict[str, Any]:
    return {"algorithm": "zo-sgd", "seed": 7 + i, "name": f"durable-{i}",
            "objective": {"kind": "builtin", "function": ("sphere", "rosenbrock")[i % 2], "dim": 5,
                          "latency_ms": latency_ms},
            "budget": {"max_steps": 50}}


class Collector(threading.Thread):
    """Consumes a job's events through the SDK in the background."""

    def __init__(self, client: zoserve.Client, job_id: str):
        super().__init__(daemon=True)
        self.client, self.job_id, self.events, self.error = client, job_id, [], None  # type: ignore[var-annotated]

    def run(self) -> None:
        try:
            for ev in self.client.jobs.events(self.job_id):
                self.events.append(ev)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_redis_restart_mid_run_loses_nothing(tmp_path: Path) -> None:
    from service.app import create_app

    server = EmbeddedRedis(tmp_path / "redis").start()
    worker = Worker(server.url, "durable", tmp_path / "worker.log", ZOSERVE_LEASE_SECONDS="5",
                    ZOSERVE_REAPER_SECONDS="1", ZOSERVE_SEGMENT_SECONDS="0.25", ZOSERVE_DATA_DIR=str(tmp_path / "data"))
    settings = Settings(redis_url=server.url, data_dir=tmp_path / "data", api_keys={API_KEY: "tenant-a"},
                        rate_limit_per_second=0)
    with ExitStack() as stack:
        stack.callback(server.stop)
        stack.callback(worker.stop)
        worker.start()
        url = stack.enter_context(serve_app(create_app(settings)))
        client = stack.enter_context(zoserve.Client(url, api_key=API_KEY))
        waiting = client.jobs.create({**spec(99), "objective": {"kind": "client", "dim": 5}, "budget": {"max_steps": 2}})
        pending = wait_until(lambda: client.jobs.queries(waiting.id, "pending"), timeout=30)
        ids = [client.jobs.create(spec(i)).id for i in range(6)]
        watcher = Collector(client, ids[-1])
        watcher.start()
        r = redis.Redis.from_url(server.url)
        wait_until(lambda: int(r.hget(f"zo:job:{ids[0]}", "segments") or 0) >= 2, timeout=30)
        before = {j: len(stream(r, j)) for j in [*ids, waiting.id]}
        server.stop()  # SIGTERM: Redis writes its AOF and exits
        time.sleep(1.0)
        server.start()  # same port, same data dir
        r = redis.Redis.from_url(server.url)
        assert all(len(stream(r, j)) >= n for j, n in before.items())  # nothing lost with the restart
        assert [q.id for q in client.jobs.queries(waiting.id, "pending")] == [pending[0].id]
        served = client.jobs.serve(waiting.id, lambda pts: [sum(x * x for x in p) for p in pts])
        assert served.status.value == "succeeded"
        for j in ids:
            wait_until(lambda: client.jobs.get(j).status.value in ("succeeded", "failed"), timeout=60)
        watcher.join(30)
        assert watcher.error is None and watcher.events and watcher.events[-1].type == "result"
        assert [e.id for e in watcher.events] == [e["id"] for e in stream(r, ids[-1])]  # the SDK saw it all
        bad = {}
        for i, j in enumerate(ids):
            want, events = reference_run(spec(i, latency_ms=0))
            job = client.jobs.get(j)
            problems = audit(stream(r, j), events)
            if job.status.value != "succeeded" or job.result is None or job.result.x_best != want["x_best"]:
                problems.append(f"{job.status.value}: {job.error or (job.result and job.result.value_best)}")
            if problems:
                bad[j] = problems
        assert not bad, bad


def test_api_restart_mid_stream_sdk_resumes(settings: Settings, worker: object) -> None:
    """uvicorn stops while the SDK holds an SSE stream; a new API comes up on the same port."""
    from service.app import create_app

    port = free_port()
    first = serve_app(create_app(settings), port=port)
    url = first.__enter__()
    with zoserve.Client(url, api_key=API_KEY) as client:
        job = client.jobs.create({**spec(0, latency_ms=20), "budget": {"max_steps": 150}})
        watcher = Collector(client, job.id)
        watcher.start()
        wait_until(lambda: len(watcher.events) >= 10, timeout=30)
        first.__exit__(None, None, None)  # the API goes away mid-stream
        seen_at_stop = len(watcher.events)
        time.sleep(1.0)
        with serve_app(create_app(settings), port=port):
            watcher.join(60)
            r = redis.Redis.from_url(settings.redis_url or "")
            full = [e["id"] for e in stream(r, job.id)]
    assert watcher.error is None, watcher.error
    got = [e.id for e in watcher.events]
    assert got == full and len(got) > seen_at_stop and watcher.events[-1].type == "result"  # no gap, no repeat
