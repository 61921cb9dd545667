"""Endpoint objective throughput ÷ a direct batched httpx loop, against the test model server.

Both sides send the same step (q points of 64 digit pixels) to ``POST /predict`` in requests of
``batch`` rows with ``concurrency`` in flight, on one pooled client, in the same run:

* direct: ``json.dumps`` + ``client.post`` + ``response.json()`` per request, ``gather``;
* adapter: ``EndpointObjective.evaluate(Query(points))`` as a job's worker calls it (SSRF guard,
  retries, redirects by hand, shape checks, margin loss).

Steps alternate between the two to cancel drift; queries/s come from median step times, and
the ratio is adapter queries/s ÷ direct queries/s.
The server runs in a child process by default (``--server thread`` keeps it in-process, where
both sides also share the GIL with it). The last line is JSON for the tracker.

    PYTHONPATH=.:client OMP_NUM_THREADS=1 .venv/bin/python bench/endpoint_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "client")]

import httpx  # noqa: E402
import torch  # noqa: E402
from zoserve.models.endpoint import EndpointObjective as EndpointSpec  # noqa: E402

from tests.support.model_server import digits_data, serve  # noqa: E402
from workers.algorithms.base import Query  # noqa: E402
from workers.objectives.endpoint import EndpointObjective  # noqa: E402


def _serve_forever(port_box: Any, stop: Any) -> None:
    torch.set_num_threads(1)
    with serve() as server:
        port_box.put(server.url)
        stop.wait()


@contextlib.contextmanager
def model_server(mode: str) -> Iterator[str]:
    """The test model server's base URL, in a thread or a child process."""
    if mode == "thread":
        with serve() as server:
            yield server.url
        return
    ctx = mp.get_context("spawn")
    box, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve_forever, args=(box, stop), daemon=True)
    proc.start()
    try:
        yield box.get(timeout=120)
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


async def direct_step(client: httpx.AsyncClient, url: str, points: torch.Tensor, batch: int, slots: asyncio.Semaphore) -> int:
    """One step the plain way; returns the number of outputs received."""

    async def one(chunk: torch.Tensor) -> int:
        body = json.dumps({"inputs": chunk.tolist()}, separators=(",", ":")).encode()
        async with slots:
            response = await client.post(url, content=body, headers={"content-type": "application/json"})
        response.raise_for_status()
        return len(response.json()["outputs"])

    return sum(await asyncio.gather(*(one(c) for c in torch.split(points, batch))))


async def measure(url: str, batch: int, q: int, concurrency: int, steps: int) -> tuple[float, float]:
    """Queries/s from the median step time of each side: (direct, adapter).

    Steps alternate direct/adapter (order swapped every pair) so that load from other
    processes on this shared machine hits both sides alike; medians drop the spikes.
    """
    x, _ = digits_data()
    points = x[torch.arange(q) % len(x)].double()
    spec = EndpointSpec(url=url + "/predict", dim=64, batch_size=batch, concurrency=concurrency, output="margin", targets=0)
    adapter = EndpointObjective(spec, allow=["127.0.0.1"])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    times: dict[str, list[float]] = {"direct": [], "adapter": []}
    async with httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False) as client:
        slots = asyncio.Semaphore(concurrency)

        async def direct() -> None:
            assert await direct_step(client, url + "/predict", points, batch, slots) == q

        async def ours() -> None:
            assert (await adapter.evaluate(Query(points=points))).queries == q

        await direct()  # warm both pools
        await ours()
        for i in range(steps):
            for name, step in sorted({"direct": direct, "adapter": ours}.items(), reverse=i % 2 == 1):
                start = time.perf_counter()
                await step()
                times[name].append(time.perf_counter() - start)
    await adapter.aclose()
    return q / statistics.median(times["direct"]), q / statistics.median(times["adapter"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=int, default=256, help="points per step")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="steps per side at batch 16 and 64 (a quarter at 1)")
    parser.add_argument("--server", choices=["process", "thread"], default="process")
    args = parser.parse_args()
    torch.set_num_threads(1)
    by_batch: dict[str, float] = {}
    print(f"q={args.q} points/step, concurrency={args.concurrency}, server in a {args.server}")
    print(f"{'batch':>6} {'direct q/s':>12} {'adapter q/s':>12} {'ratio':>7}")
    with model_server(args.server) as url:
        for batch in (1, 16, 64):
            steps = max(2, args.steps // 4) if batch == 1 else args.steps
            direct, ours = asyncio.run(measure(url, batch, args.q, args.concurrency, steps))
            by_batch[str(batch)] = round(ours / direct, 3)
            print(f"{batch:>6} {direct:>12.0f} {ours:>12.0f} {ours / direct:>7.3f}")
    print(json.dumps({"bench": "endpoint_throughput", "ratio": by_batch["64"], "target": 0.9, "by_batch": by_batch}))


if __name__ == "__main__":
    main()
