"""API load: job-create requests/s and latency with one and with two uvicorn workers.

A loopback httpx load loop (one asyncio client process, ``--concurrency`` requests in flight)
POSTs ``/v1/jobs`` — validation, the CREATE Lua script, the job read-back and the Celery
enqueue (a real broker publish into the embedded Redis; no worker consumes it) — against
``uvicorn --workers N --factory service.app:create_app`` (auth disabled, so no rate limit; the
per-tenant quota of unfinished jobs is lifted, as nothing finishes them).
Each run is bounded by ``--requests`` and ``--seconds`` and starts from a fresh Redis after a
warm-up. Target: rps(2 workers) ÷ rps(1 worker) ≥ 1.5. Last line: one JSON object.

    OMP_NUM_THREADS=1 PYTHONPATH=.:client .venv/bin/python bench/api_load.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import percentile, redis_and_api  # noqa: E402

import httpx  # noqa: E402

SPEC = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 10},
        "budget": {"max_steps": 100}}
TARGET = 1.5


async def load(url: str, concurrency: int, requests: int, seconds: float) -> dict[str, float]:
    """``concurrency`` workers POST until ``requests`` are done or ``seconds`` have passed."""
    lat: list[float] = []
    errors = 0
    codes: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds
        issued = 0

        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                r = await client.post("/v1/jobs", json=SPEC)
                if r.status_code == 201:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
                    codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    if codes:
        print(f"  non-201 answers: {codes}", file=sys.stderr)
    return {"requests": len(lat), "errors": errors, "seconds": wall, "rps": len(lat) / wall,
            "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3}


def run(workers: int, args: argparse.Namespace) -> dict[str, float]:
    # no worker drains the queue, so every job stays in flight: lift the per-tenant quota (429s otherwise)
    with redis_and_api(workers=workers, ZOSERVE_MAX_JOBS_IN_FLIGHT="0") as (_, url, _tmp):
        asyncio.run(load(url, args.concurrency, args.warmup, 30))  # imports, pools, JIT-free warm caches
        return {"workers": workers, **asyncio.run(load(url, args.concurrency, args.requests, args.seconds))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.seconds, args.warmup = 1000, 5.0, 100
    one, two = run(1, args), run(2, args)
    print(f"job create (POST /v1/jobs → 201, Celery enqueue included), loopback, {args.concurrency} in flight, "
          f"{os.cpu_count()} CPUs shared by client, API and Redis")
    print(f"  {'workers':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in (one, two):
        print(f"  {r['workers']:>7} {r['requests']:>8} {r['errors']:>6} {r['rps']:>8.1f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f}")
    print(json.dumps({"bench": "api_load", "ratio": round(two["rps"] / one["rps"], 4), "target": TARGET,
                      "rps_1": round(one["rps"], 1), "rps_2": round(two["rps"], 1),
                      "p50_ms_1": round(one["p50_ms"], 2), "p99_ms_1": round(one["p99_ms"], 2),
                      "p50_ms_2": round(two["p50_ms"], 2), "p99_ms_2": round(two["p99_ms"], 2),
                      "errors": one["errors"] + two["errors"], "concurrency": args.concurrency,
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
