"""API load: job-create requests/s and latency with one and with two uvicorn workers.

A loopback load loop (one asyncio process, ``--concurrency`` requests in flight on keep-alive
connections) POSTs ``/v1/jobs`` — validation, the CREATE Lua script, the job read-back and the
Celery enqueue (a real broker publish into the embedded Redis; no worker consumes it) — against
``uvicorn --workers N --factory service.app:create_app`` (auth disabled, so no rate limit; the
per-tenant quota of unfinished jobs is lifted, as nothing finishes them). Every run is bounded by
``--requests`` and ``--seconds``, after a warm-up. Both servers (each with its own embedded
Redis) are up at once and loaded in turn, in ``--rounds`` alternating rounds, so the slow spells
of a shared machine fall on both sides; rates and latencies are pooled over the rounds.

Two load generators run against the same servers:

* ``httpx``: ``httpx.AsyncClient.post`` — what an SDK user runs. On these 2-core machines it
  spends about as much CPU per request as the server (measured ≈ 1.7–2.8 ms), so with two
  workers the client, not the API, takes the second core.
* ``raw``: a minimal HTTP/1.1 client on asyncio streams (a pre-encoded request, status line and
  Content-Length parsing only; ≈ 0.1 ms CPU per request), so the ratio measures the server.

Target: rps(2 workers) ÷ rps(1 worker) ≥ 1.5, taken from the ``raw`` generator (``ratio``; the
httpx figure is ``ratio_httpx``). Last line: one JSON object.

    OMP_NUM_THREADS=1 PYTHONPATH=.:client .venv/bin/python bench/api_load.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import percentile, redis_and_api  # noqa: E402

import httpx  # noqa: E402

SPEC = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 10},
        "budget": {"max_steps": 100}}
TARGET = 1.5
Post = Callable[[], Awaitable[int]]


async def httpx_posters(url: str, n: int) -> tuple[list[Post], Callable[[], Awaitable[None]]]:
    """``n`` posters sharing one httpx client with ``n`` keep-alive connections."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    client = httpx.AsyncClient(base_url=url, limits=limits, timeout=30)

    async def post() -> int:
        return (await client.post("/v1/jobs", json=SPEC)).status_code

    return [post] * n, client.aclose


async def raw_posters(url: str, n: int) -> tuple[list[Post], Callable[[], Awaitable[None]]]:
    """``n`` posters, each its own keep-alive connection speaking minimal HTTP/1.1."""
    host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80
    body = json.dumps(SPEC).encode()
    request = (f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    conns = [await asyncio.open_connection(host, port) for _ in range(n)]

    def poster(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Post:
        async def post() -> int:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15:head.index(b"\r\n", at)]) if at >= 0 else 0
            await reader.readexactly(length)
            return int(head[9:12])
        return post

    async def close() -> None:
        for _, writer in conns:
            writer.close()

    return [poster(r, w) for r, w in conns], close


async def load(url: str, kind: str, concurrency: int, requests: int, seconds: float) -> dict[str, float]:
    """``concurrency`` posters POST until ``requests`` are done or ``seconds`` have passed."""
    posters, close = await (raw_posters if kind == "raw" else httpx_posters)(url, concurrency)
    lat: list[float] = []
    codes: dict[int, int] = {}
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker(post: Post) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            issued += 1
            t0 = time.perf_counter()
            code = await post()
            if code == 201:
                lat.append(time.perf_counter() - t0)
            else:
                codes[code] = codes.get(code, 0) + 1

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker(p) for p in posters))
    finally:
        await close()
    wall = time.perf_counter() - t0
    lat.sort()
    if codes:
        print(f"  non-201 answers ({kind}): {codes}", file=sys.stderr)
    return {"requests": len(lat), "errors": sum(codes.values()), "seconds": wall, "rps": len(lat) / wall,
            "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3, "latencies": lat}  # type: ignore[dict-item]


def run(args: argparse.Namespace) -> dict[tuple[int, str], dict[str, float]]:
    """Both servers (1 and 2 workers) up at once, loaded in turn for ``--rounds`` alternating rounds,
    so slow spells of this shared machine hit both; returns pooled figures per (workers, client)."""
    lat: dict[tuple[int, str], list[float]] = {}
    tally: dict[tuple[int, str], list[float]] = {}
    # no worker drains the queue, so every job stays in flight: lift the per-tenant quota (429s otherwise)
    with ExitStack() as stack:
        urls = {w: stack.enter_context(redis_and_api(workers=w, ZOSERVE_MAX_JOBS_IN_FLIGHT="0"))[1] for w in (1, 2)}
        for url in urls.values():
            asyncio.run(load(url, "httpx", args.concurrency, args.warmup, 30))  # imports, pools, caches
        for _ in range(args.rounds):
            for w, url in urls.items():
                for kind in ("raw", "httpx"):
                    r = asyncio.run(load(url, kind, args.concurrency, args.requests, args.seconds))
                    lat.setdefault((w, kind), []).extend(r.pop("latencies"))  # type: ignore[arg-type]
                    t = tally.setdefault((w, kind), [0.0, 0.0, 0.0])
                    t[0], t[1], t[2] = t[0] + r["requests"], t[1] + r["errors"], t[2] + r["seconds"]
    out = {}
    for key, (n, errors, secs) in tally.items():
        ls = sorted(lat[key])
        out[key] = {"requests": int(n), "errors": int(errors), "rps": n / secs,
                    "p50_ms": percentile(ls, 50) * 1e3, "p99_ms": percentile(ls, 99) * 1e3}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3000, help="per run (one client, one server, one round)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.seconds, args.warmup, args.rounds = 1000, 2.0, 100, 1
    res = run(args)
    print(f"job create (POST /v1/jobs → 201, Celery enqueue included), loopback, {args.concurrency} in flight, "
          f"{os.cpu_count()} CPUs shared by the load generator, the API and Redis")
    print(f"  {'client':<6} {'workers':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind in ("raw", "httpx"):
        for w in (1, 2):
            r = res[(w, kind)]
            print(f"  {kind:<6} {w:>7} {r['requests']:>8} {r['errors']:>6} {r['rps']:>8.1f} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f}")
    raw, hx = (res[(1, "raw")], res[(2, "raw")]), (res[(1, "httpx")], res[(2, "httpx")])
    print(json.dumps({"bench": "api_load", "ratio": round(raw[1]["rps"] / raw[0]["rps"], 4), "target": TARGET,
                      "ratio_httpx": round(hx[1]["rps"] / hx[0]["rps"], 4),
                      "rps_1": round(raw[0]["rps"], 1), "rps_2": round(raw[1]["rps"], 1),
                      "p50_ms_1": round(raw[0]["p50_ms"], 2), "p99_ms_1": round(raw[0]["p99_ms"], 2),
                      "p50_ms_2": round(raw[1]["p50_ms"], 2), "p99_ms_2": round(raw[1]["p99_ms"], 2),
                      "rps_httpx_1": round(hx[0]["rps"], 1), "rps_httpx_2": round(hx[1]["rps"], 1),
                      "p99_ms_httpx_1": round(hx[0]["p99_ms"], 2), "p99_ms_httpx_2": round(hx[1]["p99_ms"], 2),
                      "errors": sum(r["errors"] for r in res.values()), "concurrency": args.concurrency,
                      "rounds": args.rounds, "seconds_per_run": args.seconds, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
