"""Event latency publish → SSE client on loopback, with 1 and with 200 concurrent subscribers.

The real stack: embedded Redis, the API as a uvicorn subprocess, and a publisher process that
writes progress events the way a worker does — one fenced ``WorkerStore.commit`` (the COMMIT
Lua script: XADD into the job's stream) per event, under a lease taken with ``acquire``. Each
event carries ``time.monotonic_ns()`` (system-wide on Linux, so comparable across processes)
and the subscribers, httpx streams in one asyncio loop in this process, stamp each chunk as it
arrives. Latency = arrival − publish.

Phase 1: one subscriber, 10 000 events at ``--rate`` events/s (p50, p99).
Phase 2: 200 subscribers held on one job, ``--events-200`` events at ``--rate-200`` events/s;
every subscriber must receive every event (missing events are counted and reported).
Target: p99 < 100 ms with 200 subscribers. Last line: JSON with ``ratio`` = that p99 / 100 ms.

    OMP_NUM_THREADS=1 PYTHONPATH=.:client .venv/bin/python bench/events_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import percentile, redis_and_api  # noqa: E402

import httpx  # noqa: E402
import redis  # noqa: E402

TARGET_MS = 100.0
SPEC = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 10},
        "budget": {"max_steps": 1_000_000}}


def publish(redis_url: str, job_id: str, token: str, n: int, rate: float, go: "mp.synchronize.Event") -> None:
    """Publisher process: ``n`` progress events, one fenced commit each, paced at ``rate``/s; then a result."""
    from workers.jobstore import WorkerStore

    store = WorkerStore(redis.Redis.from_url(redis_url), lease_ttl=600, maxlen=200_000)
    go.wait()
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event = {"type": "progress", "time": datetime.now(timezone.utc).isoformat(), "step": i + 1,
                 "queries": 11 * (i + 1), "failed_queries": 0, "evaluations": 11 * (i + 1), "value": 1.0 / (i + 1),
                 "best_value": 1.0 / (i + 1), "extra": {"t_pub_ns": float(time.monotonic_ns()), "i": float(i)}}
        code = store.commit(job_id, token, events=[("progress", json.dumps(event))])
        assert code == 0, f"commit refused: {code}"
    result = {"type": "result", "time": datetime.now(timezone.utc).isoformat(), "status": "succeeded",
              "result": {"x_best": [0.0], "best_value": 0.0, "steps": n, "queries": 11 * n}}
    store.commit(job_id, token, events=[("result", json.dumps(result))], hset={"status": "succeeded"}, release=True)


async def subscribe(client: httpx.AsyncClient, url: str, lat_ms: list[float], seen: list[int],
                    ready: asyncio.Event, n_ready: list[int], n_subs: int) -> None:
    """Read one SSE stream to its terminal event; record each progress event's latency."""
    async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as r:
        r.raise_for_status()
        buf, count = b"", 0
        async for chunk in r.aiter_raw():
            now = time.monotonic_ns()
            buf += chunk
            *frames, buf = buf.split(b"\n\n")
            for frame in frames:
                kind, data = b"", b""
                for line in frame.split(b"\n"):
                    if line.startswith(b"event: "):
                        kind = line[7:]
                    elif line.startswith(b"data: "):
                        data = line[6:]
                if kind == b"status" and b'"running"' in data:
                    n_ready[0] += 1
                    if n_ready[0] == n_subs:
                        ready.set()
                elif kind == b"progress":
                    extra = json.loads(data)["extra"]
                    lat_ms.append((now - extra["t_pub_ns"]) / 1e6)
                    count += 1
                elif kind in (b"result", b"error"):
                    seen.append(count)
                    return
    seen.append(count)


async def phase(api_url: str, redis_url: str, n_subs: int, n_events: int, rate: float) -> dict[str, float]:
    """Create a job, take its lease as a worker would, hold ``n_subs`` streams, publish, measure."""
    from workers.jobstore import WorkerStore

    limits = httpx.Limits(max_connections=n_subs + 10, max_keepalive_connections=n_subs + 10)
    async with httpx.AsyncClient(base_url=api_url, limits=limits, timeout=httpx.Timeout(60, read=120)) as client:
        job = (await client.post("/v1/jobs", json=SPEC)).raise_for_status().json()
        r = redis.Redis.from_url(redis_url)
        ticket = r.hget(f"zo:job:{job['id']}", "ticket").decode()  # type: ignore[union-attr]
        lease = WorkerStore(r, lease_ttl=600, maxlen=200_000).acquire(job["id"], ticket)
        r.close()
        go = mp.get_context("fork").Event()
        pub = mp.get_context("fork").Process(target=publish, args=(redis_url, job["id"], lease.token, n_events, rate, go),
                                             daemon=True)
        pub.start()
        lat: list[float] = []
        seen: list[int] = []
        ready, n_ready = asyncio.Event(), [0]
        url = f"/v1/jobs/{job['id']}/events"
        tasks = [asyncio.create_task(subscribe(client, url, lat, seen, ready, n_ready, n_subs)) for _ in range(n_subs)]
        await asyncio.wait_for(ready.wait(), 60)
        t0 = time.perf_counter()
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=n_events / rate + 120)
        wall = time.perf_counter() - t0
        pub.join(30)
    lat.sort()
    missing = n_subs * n_events - sum(seen)
    return {"subscribers": n_subs, "events": n_events, "rate": rate, "deliveries": len(lat), "missing": missing,
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
            "max_ms": lat[-1] if lat else float("nan"), "mean_ms": statistics.fmean(lat) if lat else float("nan"),
            "deliveries_per_s": len(lat) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="events/s in phase 1")
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--events-200", type=int, default=300)
    ap.add_argument("--rate-200", type=float, default=20.0, help="events/s in phase 2")
    ap.add_argument("--quick", action="store_true", help="2 000 events, 100 for phase 2")
    args = ap.parse_args()
    if args.quick:
        args.events, args.events_200 = 2000, 100
    with redis_and_api() as (redis_url, api_url, _):
        asyncio.run(phase(api_url, redis_url, 1, 200, 200.0))  # warm-up: imports, connections
        one = asyncio.run(phase(api_url, redis_url, 1, args.events, args.rate))
        many = asyncio.run(phase(api_url, redis_url, args.subscribers, args.events_200, args.rate_200))
    print("event latency publish (fenced COMMIT → XADD) → SSE client, loopback, API in a uvicorn subprocess")
    print(f"  {'subscribers':>11} {'events':>7} {'ev/s':>6} {'deliveries':>10} {'missing':>7} {'p50 ms':>8} "
          f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in (one, many):
        print(f"  {r['subscribers']:>11} {r['events']:>7} {r['rate']:>6.0f} {r['deliveries']:>10} {r['missing']:>7} "
              f"{r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f}")
    print(json.dumps({"bench": "events_latency", "ratio": round(many["p99_ms"] / TARGET_MS, 4), "target": 1.0,
                      "p50_ms": round(one["p50_ms"], 3), "p99_ms": round(one["p99_ms"], 3),
                      "p50_ms_200_subscribers": round(many["p50_ms"], 3),
                      "p99_ms_200_subscribers": round(many["p99_ms"], 3),
                      "missing": one["missing"] + many["missing"], "events": args.events,
                      "subscribers": args.subscribers, "rate": args.rate, "rate_200": args.rate_200}))


if __name__ == "__main__":
    main()
