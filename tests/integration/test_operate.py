"""Operating zoserve: /metrics, JSON logs, Flower's Celery events, graceful SIGTERM, scale-out.

The SIGTERM and scale-out tests start their own workers on their own embedded Redis (the
session worker is never disturbed)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

import zoserve
from service import metrics
from service.app import create_app
from service.embedded import EmbeddedRedis
from service.logs import JOB_ID, JsonFormatter
from service.settings import Settings
from tests.support.stack import celery_worker, serve_app, wait_until

OUT = Path(__file__).resolve().parents[2] / "test-output"


def spec(steps: int, latency_ms: float, queue: str = "cpu", dim: int = 8) -> dict[str, Any]:
    return {"algorithm": "zo-sgd", "config": {"q": 2, "lr": 1e-3}, "budget": {"max_steps": steps}, "queue": queue,
            "objective": {"kind": "builtin", "function": "sphere", "dim": dim, "latency_ms": latency_ms}}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def segments_by_job(log: Path) -> dict[str, list[str]]:
    """job id -> outcomes of the segments this worker ran, from its JSON log lines."""
    out: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("message", "").startswith("segment of") and rec.get("job_id"):
                out.setdefault(rec["job_id"], []).append(rec["outcome"])
    return out


# --- against the session stack -------------------------------------------------------------

def test_metrics_report_jobs_queues_workers_and_objective_latency(client: zoserve.Client, api_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "JOBS_CACHE_SECONDS", 0.0)  # the API runs in this process: count at every scrape
    before = scrape(api_url)
    job = client.jobs.create(spec(60, 2.0)).wait()
    assert job.result is not None and job.result.steps == 60
    after = wait_until(lambda: (m := scrape(api_url))[("zoserve_objective_latency_seconds_count", ())]
                       >= before.get(("zoserve_objective_latency_seconds_count", ()), 0) + 60 and m, timeout=10)
    key = lambda name: (name, ())  # noqa: E731
    assert after[key("zoserve_queries_total")] - before.get(key("zoserve_queries_total"), 0) >= 60 * 3  # q+1 per step
    latency = after[key("zoserve_objective_latency_seconds_sum")] - before.get(key("zoserve_objective_latency_seconds_sum"), 0)
    assert latency >= 60 * 0.002  # each evaluation slept 2 ms
    le = lambda bound, m: m.get(("zoserve_objective_latency_seconds_bucket", (("le", bound),)), 0.0)  # noqa: E731
    count = lambda m: m.get(key("zoserve_objective_latency_seconds_count"), 0.0)  # noqa: E731
    assert le("+Inf", after) == count(after)
    assert (count(after) - count(before)) - (le("0.001", after) - le("0.001", before)) >= 60  # the 2 ms sleeps
    assert after[key("zoserve_workers_alive")] >= 1
    assert any(name == "zoserve_worker_heartbeat_age_seconds" and dict(lbl)["worker"].startswith("w1@")
               for name, lbl in after)
    for q in ("cpu", "gpu"):
        assert (("zoserve_queue_depth", (("queue", q),))) in after
    assert after[("zoserve_jobs", (("status", "succeeded"),))] >= 1 + before.get(("zoserve_jobs", (("status", "succeeded"),)), 0)
    assert after[key("zoserve_jobs_truncated")] == 0


def test_metrics_count_the_queries_of_objectives_computed_in_the_step(client: zoserve.Client, api_url: str) -> None:
    """Builtin functions answer in the step (no latency sample each): their queries still reach the counter."""
    key = ("zoserve_queries_total", ())
    before = scrape(api_url).get(key, 0.0)
    job = client.jobs.create(spec(40, 0.0)).wait()
    assert job.result is not None and job.result.queries == 40 * 3  # q+1 = 3 points per step
    wait_until(lambda: scrape(api_url).get(key, 0.0) - before >= job.result.queries, timeout=10)


def test_job_count_is_capped_and_says_so(redis_server: EmbeddedRedis, client: zoserve.Client,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    client.jobs.create(spec(5, 0.0)).wait()

    async def count() -> tuple[dict[str, int], bool]:
        r = aioredis.Redis.from_url(redis_server.url)
        try:
            return await metrics.count_jobs(r)
        finally:
            await r.aclose()

    full, truncated = asyncio.run(count())
    assert not truncated and full["succeeded"] >= 1
    monkeypatch.setattr(metrics, "JOBS_CAP", 1)
    capped, truncated = asyncio.run(count())
    assert truncated and sum(capped.values()) == 1


def test_celery_events_for_flower(redis_server: EmbeddedRedis, client: zoserve.Client) -> None:
    from celery import Celery

    app = Celery(broker=redis_server.url)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    receiver: list[Any] = []

    def listen() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": seen.append})
            receiver.append(recv)
            ready.set()
            recv.capture(limit=None, timeout=None, wakeup=False)

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    time.sleep(0.5)  # the fanout subscription is live
    client.jobs.create(spec(5, 0.0)).wait()
    try:
        wait_until(lambda: {"task-received", "task-started", "task-succeeded", "worker-heartbeat"}
                   <= {e["type"] for e in seen}, timeout=15)
    finally:
        receiver[0].should_stop = True
    assert any(e["type"] == "task-received" and e.get("name") == "zoserve.run_segment" for e in seen)


def test_json_log_lines_carry_job_ids() -> None:
    fmt = JsonFormatter({"worker": "w@h"})
    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                            ("1.2.3.4:5", "GET", "/v1/jobs/job_" + "a" * 32, "1.1", 200), None)
    out = json.loads(fmt.format(rec))
    assert out["job_id"] == "job_" + "a" * 32 and out["status"] == 200 and out["worker"] == "w@h"
    token = JOB_ID.set("job_" + "b" * 32)
    try:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom %d", (1,), None)
        rec.outcome = "failed"
        out = json.loads(fmt.format(rec))
    finally:
        JOB_ID.reset(token)
    assert out == {**out, "job_id": "job_" + "b" * 32, "message": "boom 1", "level": "ERROR", "outcome": "failed"}
    assert "job_id" not in json.loads(fmt.format(logging.LogRecord("x", 20, __file__, 1, "no job", None, None)))


# --- a stack of our own: SIGTERM and scale-out ---------------------------------------------

@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(redis url, api url, log dir) on a fresh embedded Redis."""
    tmp = tmp_path_factory.mktemp("operate")
    OUT.mkdir(exist_ok=True)
    with EmbeddedRedis(tmp / "redis") as server, \
            serve_app(create_app(Settings(redis_url=server.url, auth_disabled=True))) as url:
        yield server.url, url, tmp


WORKER_ENV = {"ZOSERVE_LOG_JSON": "true", "ZOSERVE_SEGMENT_SECONDS": "1.0"}


def test_sigterm_checkpoints_the_segment_and_another_worker_finishes(own_stack: tuple[str, str, Path]) -> None:
    redis_url, url, tmp = own_stack
    log_a, log_b = OUT / "operate-sigterm-a.log", OUT / "operate-sigterm-b.log"
    for log in (log_a, log_b):
        log.unlink(missing_ok=True)
    steps = 400
    with zoserve.Client(url) as client:
        with celery_worker(redis_url, "sigterm-a", log_a, queues="cpu", **WORKER_ENV) as a:
            job = client.jobs.create(spec(steps, 4.0))
            wait_until(lambda: (client.jobs.get(job.id).progress.step or 0) >= 20, timeout=20)
            t0 = time.monotonic()
            os.killpg(a.pid, signal.SIGTERM)  # what `docker stop` / a k8s scale-down sends
            assert a.wait(20) == 0  # warm shutdown: exit code 0
            assert time.monotonic() - t0 < 1.0 + 5.0  # the segment (<= 1 s) finished, nothing more
        stopped = client.jobs.get(job.id)
        assert not stopped.status.terminal and 20 <= stopped.progress.step < steps
        assert redis.Redis.from_url(redis_url).llen("cpu") == 1  # its next segment waits in the queue
        assert scrape(url)[("zoserve_queue_depth", (("queue", "cpu"),))] == 1
        with celery_worker(redis_url, "sigterm-b", log_b, queues="cpu", **WORKER_ENV):
            done = client.jobs.get(job.id).wait()
        assert done.result is not None and done.result.steps == steps
        progress = [e.step for e in client.jobs.get(job.id).stream() if e.type == "progress"]
    assert progress == list(range(1, steps + 1))  # every step once, in order: never backwards
    assert segments_by_job(log_a)[job.id][-1] == "continue"  # a checkpointed and requeued
    assert segments_by_job(log_b)[job.id][-1] == "succeeded"  # b finished it
    assert "Warm shutdown" in log_a.read_text()


def test_two_workers_share_a_queue_and_routing_holds(own_stack: tuple[str, str, Path]) -> None:
    redis_url, url, tmp = own_stack
    logs = {name: OUT / f"operate-scale-{name}.log" for name in ("cpu-only", "cpu-gpu")}
    for log in logs.values():
        log.unlink(missing_ok=True)
    with zoserve.Client(url) as client, \
            celery_worker(redis_url, "cpu-only", logs["cpu-only"], queues="cpu", **WORKER_ENV), \
            celery_worker(redis_url, "cpu-gpu", logs["cpu-gpu"], queues="cpu,gpu", **WORKER_ENV):
        cpu_jobs = [client.jobs.create(spec(40, 20.0)).id for _ in range(4)]
        gpu_job = client.jobs.create(spec(10, 5.0, queue="gpu")).id
        for jid in [*cpu_jobs, gpu_job]:
            assert client.jobs.get(jid).wait().status.value == "succeeded"
    ran = {name: segments_by_job(log) for name, log in logs.items()}
    assert set(ran["cpu-only"]) & set(cpu_jobs) and set(ran["cpu-gpu"]) & set(cpu_jobs)  # both took cpu jobs
    assert set(cpu_jobs) <= set(ran["cpu-only"]) | set(ran["cpu-gpu"])
    assert gpu_job in ran["cpu-gpu"] and gpu_job not in ran["cpu-only"]  # only a gpu consumer runs gpu jobs
