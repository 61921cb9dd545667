"""``GET /metrics``: Prometheus text exposition, computed from Redis at scrape time.

Workers and API replicas are separate processes, so nothing here lives in one process's
registry: every series is read from Redis when Prometheus scrapes, and any API replica
reports the same numbers (aggregate them with ``max``, not ``sum``).

* ``zoserve_jobs{status}`` — the newest ``JOBS_CAP`` jobs over all tenants, counted by status
  (a capped SCAN of the tenants' job sets, cached ``JOBS_CACHE_SECONDS``: cheap at any size;
  ``zoserve_jobs_truncated`` says when the cap cut the count short).
* ``zoserve_queue_depth{queue}`` — messages waiting in the Celery ``cpu``/``gpu`` lists (LLEN);
  ``zoserve_broker_unacked`` — messages taken by workers and not yet acked (incl. countdowns).
* ``zoserve_workers_alive``, ``zoserve_worker_heartbeat_age_seconds{worker}`` — from ``zo:workers``.
* ``zoserve_objective_latency_seconds`` (histogram) and ``zoserve_queries_total`` — workers
  accumulate objective latency in a :class:`LatencyRecorder` (a few list increments per awaited
  evaluation; adapters computed in the step add only their queries, once a flush) and push it with
  one pipelined HINCRBY round trip from their flush thread at most once a second (``LATENCY_KEY``).
  ``rate(zoserve_queries_total[1m])`` is queries/s.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from zoserve.models.jobs import JobStatus

from . import keys
from .queue import QUEUES

LATENCY_KEY = f"{keys.PREFIX}:metrics:latency"  # hash: b<i> (per-bucket counts), count, sum, queries
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                              10.0, 30.0, 60.0)
PUSH_SECONDS = 1.0  # a worker pushes its latency counts at most this often (and when a segment ends)
JOBS_CAP = 20_000  # jobs counted per scrape (newest per tenant first)
SCAN_CALLS = 50  # SCAN calls (COUNT 1000 each) spent finding tenants' job sets per count
JOBS_CACHE_SECONDS = 10.0
WORKERS_CAP = 1000
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's redis priority lists per queue
UNACKED_KEY = "unacked"  # kombu's redis transport: delivered, not yet acked

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LatencyRecorder:
    """Per-process objective latency accumulator (worker side). ``observe`` costs one bisect
    and four additions; :meth:`take` hands the increments to the flush thread and resets."""

    __slots__ = ("counts", "total", "n", "queries", "_last")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total, self.n, self.queries = 0.0, 0, 0
        self._last = time.monotonic()

    def observe(self, seconds: float, queries: int) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1
        self.queries += queries

    def add_queries(self, queries: int) -> None:
        """Count queries answered without a latency sample (adapters computed in the step, e.g. builtin functions)."""
        self.queries += queries

    def take(self, force: bool = False) -> dict[str, float] | None:
        """The increments since the last take, or None when empty or (unless ``force``) not yet due."""
        if (self.n == 0 and self.queries == 0) or not (force or time.monotonic() - self._last >= PUSH_SECONDS):
            return None
        out: dict[str, float] = {f"b{i}": c for i, c in enumerate(self.counts) if c}
        out.update(count=self.n, sum=self.total, queries=self.queries)
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total, self.n, self.queries = 0.0, 0, 0
        self._last = time.monotonic()
        return out


def push_latency(client: Any, increments: dict[str, float] | None) -> None:
    """Add a :meth:`LatencyRecorder.take` result to ``LATENCY_KEY`` in one round trip (sync redis)."""
    if not increments:
        return
    pipe = client.pipeline(transaction=False)
    for field, value in increments.items():
        if field == "sum":
            pipe.hincrbyfloat(LATENCY_KEY, field, value)
        else:
            pipe.hincrby(LATENCY_KEY, field, int(value))
    pipe.execute()


async def count_jobs(r: Any) -> tuple[dict[str, int], bool]:
    """Jobs by status among the newest ``JOBS_CAP`` (per tenant, newest first); True if truncated."""
    counts = {s.value: 0 for s in JobStatus}
    truncated, cursor, calls, sets = False, 0, 0, []
    while True:
        cursor, found = await r.scan(cursor, match=f"{keys.PREFIX}:tenant:*:jobs", count=1000, _type="zset")
        sets.extend(found)
        calls += 1
        if int(cursor) == 0:
            break
        if calls >= SCAN_CALLS:
            truncated = True
            break
    left = JOBS_CAP
    for key in sets:
        if left <= 0:
            truncated = True
            break
        ids = await r.zrevrange(key, 0, left - 1)
        if len(ids) == left and await r.zcard(key) > left:
            truncated = True
        left -= len(ids)
        pipe = r.pipeline(transaction=False)
        for jid in ids:
            pipe.hget(keys.job(jid.decode()), "status")
        for status in await pipe.execute():
            if status is not None:
                key_s = status.decode()
                counts[key_s] = counts.get(key_s, 0) + 1
    return counts, truncated


class _JobCountCache:
    def __init__(self) -> None:
        self.at = -1e18
        self.value: tuple[dict[str, int], bool] = ({}, False)

    async def get(self, r: Any) -> tuple[dict[str, int], bool]:
        if time.monotonic() - self.at >= JOBS_CACHE_SECONDS:
            self.value, self.at = await count_jobs(r), time.monotonic()
        return self.value


async def snapshot(r: Any, heartbeat_window: float, cache: _JobCountCache) -> dict[str, Any]:
    """Everything /metrics reports, read from Redis (one pipeline plus the cached job count)."""
    pipe = r.pipeline(transaction=False)
    for q in QUEUES:
        for suffix in PRIORITY_SUFFIXES:
            pipe.llen(q + suffix)
    pipe.hlen(UNACKED_KEY)
    pipe.zrevrange(keys.WORKERS, 0, WORKERS_CAP - 1, withscores=True)
    pipe.hgetall(LATENCY_KEY)
    out = await pipe.execute()
    n = len(PRIORITY_SUFFIXES)
    depth = {q: sum(out[i * n:(i + 1) * n]) for i, q in enumerate(QUEUES)}
    unacked, workers, latency = out[len(QUEUES) * n:]
    jobs, truncated = await cache.get(r)
    now = time.time()
    return {"jobs": jobs, "truncated": truncated, "depth": depth, "unacked": unacked,
            "workers": {w.decode(): now - float(t) for w, t in workers}, "window": heartbeat_window,
            "latency": {k.decode(): float(v) for k, v in latency.items()}}


def families(snap: dict[str, Any]) -> list[Metric]:
    """Prometheus metric families of a :func:`snapshot` (pure)."""
    jobs = GaugeMetricFamily("zoserve_jobs", "Jobs by status (newest jobs, capped).", labels=["status"])
    for status, n in sorted(snap["jobs"].items()):
        jobs.add_metric([status], n)
    truncated = GaugeMetricFamily("zoserve_jobs_truncated", "1 when zoserve_jobs counted only the newest jobs.",
                                  value=int(snap["truncated"]))
    depth = GaugeMetricFamily("zoserve_queue_depth", "Celery messages waiting in a queue.", labels=["queue"])
    for q, n in snap["depth"].items():
        depth.add_metric([q], n)
    unacked = GaugeMetricFamily("zoserve_broker_unacked", "Celery messages delivered to workers, not yet acked.",
                                value=snap["unacked"])
    ages = snap["workers"]
    alive = GaugeMetricFamily("zoserve_workers_alive", "Workers whose heartbeat is recent.",
                              value=sum(1 for a in ages.values() if a <= snap["window"]))
    age = GaugeMetricFamily("zoserve_worker_heartbeat_age_seconds", "Seconds since a worker's last heartbeat.",
                            labels=["worker"])
    for name, a in sorted(ages.items()):
        age.add_metric([name], max(0.0, a))
    lat = snap["latency"]
    cumulative, buckets = 0.0, []
    for i, le in enumerate([*map(str, BUCKETS), "+Inf"]):
        cumulative += lat.get(f"b{i}", 0.0)
        buckets.append((le, cumulative))
    hist = HistogramMetricFamily("zoserve_objective_latency_seconds", "Objective evaluation time per step.",
                                 buckets=buckets, sum_value=lat.get("sum", 0.0))
    queries = CounterMetricFamily("zoserve_queries", "Objective queries evaluated by workers.",
                                  value=lat.get("queries", 0.0))
    return [jobs, truncated, depth, unacked, alive, age, hist, queries]


class _Static:
    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics: jobs by status, queue depth, workers, objective latency",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    state = request.app.state
    if not hasattr(state, "job_count_cache"):
        state.job_count_cache = _JobCountCache()
    window = max(10.0, 5 * state.settings.worker_heartbeat_seconds)  # as /readyz counts workers
    snap = await snapshot(state.store.r, window, state.job_count_cache)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Static(families(snap)))  # type: ignore[arg-type]
    body = generate_latest(registry) + generate_latest(REGISTRY)  # + this API process's own (process_*, python_*)
    return Response(body, media_type=CONTENT_TYPE)
