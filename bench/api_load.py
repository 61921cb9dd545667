"""API load: job-create requests/s and latency with one and with two uvicorn workers.

A loopback load loop (one asyncio process, ``--concurrency`` requests in flight on keep-alive
connections) POSTs ``/v1/jobs`` against ``uvicorn --workers N --factory service.app:create_app``
(auth disabled, so no rate limit; the per-tenant quota of unfinished jobs is lifted, as nothing
finishes them): validation, the CREATE Lua script, and the Celery enqueue that the API's sender
makes right after the 201 (a real broker publish into the embedded Redis; no worker consumes it).
A run ends when the API's outbox is empty, so every send counts in its time. Every run is bounded
by ``--requests`` and ``--seconds``, after a warm-up. Both servers (each with its own embedded
Redis) are up at once and loaded in turn, in ``--rounds`` alternating rounds, so the slow spells
of a shared machine fall on both sides. Figures are medians over the rounds; the ratio is the
median of the rounds' own ratios. ``cpu ms`` is the API processes' CPU time per 201 (psutil),
which other load on the machine disturbs far less than req/s. uvicorn runs with its defaults,
``http="auto"`` and ``loop="auto"``: httptools and uvloop when installed (the ``server`` extra).

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
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import percentile, redis_and_api  # noqa: E402

import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from service import keys  # noqa: E402

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


async def load(url: str, outbox: redis.Redis, kind: str, concurrency: int, requests: int,
               seconds: float) -> dict[str, float]:
    """``concurrency`` posters POST until ``requests`` are done or ``seconds`` have passed; the run
    ends when their jobs' messages are in the broker (``outbox`` is the API's Redis)."""
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
    await sent(outbox)
    wall = time.perf_counter() - t0
    lat.sort()
    if codes:
        print(f"  non-201 answers ({kind}): {codes}", file=sys.stderr)
    return {"requests": len(lat), "errors": sum(codes.values()), "rps": len(lat) / wall,
            "p50_ms": percentile(lat, 50) * 1e3, "p99_ms": percentile(lat, 99) * 1e3}


async def sent(outbox: redis.Redis, timeout: float = 30) -> None:
    """Until the API has handed every created job to the broker (it sends after the 201)."""
    deadline = time.perf_counter() + timeout
    while outbox.zcard(keys.OUTBOX) and time.perf_counter() < deadline:
        await asyncio.sleep(0.002)


def api_processes(url: str) -> list[psutil.Process]:
    """The uvicorn process serving ``url`` and its worker processes."""
    port = str(urlsplit(url).port)
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "uvicorn" in cmd and port in cmd:
            return [p, *p.children(recursive=True)]
    raise RuntimeError(f"no uvicorn process for {url}")


def cpu_seconds(procs: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def run(args: argparse.Namespace) -> tuple[dict[tuple[int, str], dict[str, float]], dict[str, float]]:
    """Both servers (1 and 2 workers) up at once, loaded in turn for ``--rounds`` alternating rounds,
    so slow spells of this shared machine hit both. Returns per (workers, client) the medians over
    the rounds (requests and errors summed), and per client the median of the rounds' 2 ÷ 1 ratios."""
    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    # no worker drains the queue, so every job stays in flight: lift the per-tenant quota (429s otherwise)
    with ExitStack() as stack:
        servers = {w: stack.enter_context(redis_and_api(workers=w, ZOSERVE_MAX_JOBS_IN_FLIGHT="0")) for w in (1, 2)}
        urls = {w: api_url for w, (_, api_url, _) in servers.items()}
        outboxes = {w: redis.Redis.from_url(redis_url) for w, (redis_url, _, _) in servers.items()}
        procs = {w: api_processes(url) for w, url in urls.items()}
        for w, url in urls.items():
            asyncio.run(load(url, outboxes[w], "httpx", args.concurrency, args.warmup, 30))  # imports, pools, caches
        for _ in range(args.rounds):
            for w, url in urls.items():
                for kind in ("raw", "httpx"):
                    cpu0 = cpu_seconds(procs[w])
                    r = asyncio.run(load(url, outboxes[w], kind, args.concurrency, args.requests, args.seconds))
                    r["cpu_ms"] = (cpu_seconds(procs[w]) - cpu0) / max(r["requests"], 1) * 1e3
                    runs.setdefault((w, kind), []).append(r)
    out = {key: {"requests": sum(r["requests"] for r in rs), "errors": sum(r["errors"] for r in rs),
                 **{m: statistics.median(r[m] for r in rs) for m in ("rps", "p50_ms", "p99_ms", "cpu_ms")}}
           for key, rs in runs.items()}
    ratios = {kind: statistics.median(two["rps"] / one["rps"] for one, two in zip(runs[(1, kind)], runs[(2, kind)]))
              for kind in ("raw", "httpx")}
    return out, ratios


def server_stack() -> dict[str, str]:
    """What uvicorn's ``http="auto"`` and ``loop="auto"`` pick in this environment."""
    have = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    return {"http": "httptools" if have("httptools") else "h11", "loop": "uvloop" if have("uvloop") else "asyncio"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3000, help="per run (one client, one server, one round)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.seconds, args.warmup, args.rounds = 1000, 2.0, 100, 1
    res, ratios = run(args)
    stack = server_stack()
    print(f"job create (POST /v1/jobs → 201), loopback, {args.concurrency} in flight, uvicorn {stack['http']} + "
          f"{stack['loop']}, {os.cpu_count()} CPUs shared by the load generator, the API and Redis; "
          f"medians of {args.rounds} rounds")
    print(f"  {'client':<6} {'workers':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'cpu ms':>7}")
    for kind in ("raw", "httpx"):
        for w in (1, 2):
            r = res[(w, kind)]
            print(f"  {kind:<6} {w:>7} {r['requests']:>8} {r['errors']:>6} {r['rps']:>8.1f} {r['p50_ms']:>8.2f} "
                  f"{r['p99_ms']:>8.2f} {r['cpu_ms']:>7.2f}")
    raw, hx = (res[(1, "raw")], res[(2, "raw")]), (res[(1, "httpx")], res[(2, "httpx")])
    print(json.dumps({"bench": "api_load", "ratio": round(ratios["raw"], 4), "target": TARGET,
                      "ratio_httpx": round(ratios["httpx"], 4),
                      "rps_1": round(raw[0]["rps"], 1), "rps_2": round(raw[1]["rps"], 1),
                      "p50_ms_1": round(raw[0]["p50_ms"], 2), "p99_ms_1": round(raw[0]["p99_ms"], 2),
                      "p50_ms_2": round(raw[1]["p50_ms"], 2), "p99_ms_2": round(raw[1]["p99_ms"], 2),
                      "cpu_ms_per_create_1": round(raw[0]["cpu_ms"], 3), "cpu_ms_per_create_2": round(raw[1]["cpu_ms"], 3),
                      "rps_httpx_1": round(hx[0]["rps"], 1), "rps_httpx_2": round(hx[1]["rps"], 1),
                      "p99_ms_httpx_1": round(hx[0]["p99_ms"], 2), "p99_ms_httpx_2": round(hx[1]["p99_ms"], 2),
                      "errors": sum(r["errors"] for r in res.values()), "concurrency": args.concurrency,
                      "rounds": args.rounds, "seconds_per_run": args.seconds, "cpus": os.cpu_count(), **stack}))


if __name__ == "__main__":
    main()
