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


async def measure(url: str, batch: int, q: int, concurrency: int, steps: int, adapter_too: bool = True) -> tuple[float, float]:
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
            sides = {"direct": direct, "adapter": ours} if adapter_too else {"direct": direct}
            for name, step in sorted(sides.items(), reverse=i % 2 == 1):
                start = time.perf_counter()
                await step()
                times[name].append(time.perf_counter() - start)
    await adapter.aclose()
    return q / statistics.median(times["direct"]), (q / statistics.median(times["adapter"]) if adapter_too else 0.0)


def via_service(url: str, batch: int, q: int, concurrency: int, steps: int) -> tuple[float, float]:
    """A real job (API + Celery worker + Redis) against the same server: (direct q/s, job q/s).

    The job is ZO-SGD with forward RGE and q − 1 directions, so each step sends q points; its
    rate is taken from its own progress events (first to last step), then a direct loop runs
    the same number of steps right after, so both see the same machine.
    """
    import tempfile

    import zoserve
    from service.app import create_app
    from service.embedded import EmbeddedRedis
    from service.settings import Settings
    from tests.support.stack import celery_worker, serve_app

    tmp = Path(tempfile.mkdtemp(prefix="zoserve-ept-"))
    objective = {"kind": "endpoint", "url": url + "/predict", "dim": 64, "batch_size": batch,
                 "concurrency": concurrency, "output": "margin", "targets": 0}
    spec = {"algorithm": "zo-sgd", "config": {"q": q - 1, "lr": 1e-6}, "objective": objective,
            "x0": digits_data()[0][0].double().tolist(), "budget": {"max_steps": steps}}
    env = {"ZOSERVE_SSRF_ALLOW": '["127.0.0.1"]'}
    with EmbeddedRedis(tmp / "redis") as redis_server, celery_worker(redis_server.url, "ept", tmp / "w.log", **env), \
            serve_app(create_app(Settings(redis_url=redis_server.url, auth_disabled=True, ssrf_allow=["127.0.0.1"]))) as api, \
            zoserve.Client(api) as client:
        client.jobs.create({**spec, "budget": {"max_steps": 2}}).wait()  # warm the worker
        job = client.jobs.create(spec)
        times = [ev.time for ev in job.stream() if ev.type == "progress"]
        job_qps = q * (len(times) - 1) / (times[-1] - times[0]).total_seconds()
    direct, _ = asyncio.run(measure(url, batch, q, concurrency, steps, adapter_too=False))
    return direct, job_qps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=int, default=256, help="points per step")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="steps per side at batch 16 and 64 (a quarter at 1)")
    parser.add_argument("--server", choices=["process", "thread"], default="process")
    parser.add_argument("--no-service", action="store_true", help="skip the whole-service measurement")
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
        service = {}
        if not args.no_service:
            print(f"{'batch':>6} {'direct q/s':>12} {'job q/s':>12} {'ratio':>7}   (a real job: API + Celery + Redis)")
            for batch in (1, 16, 64):
                steps = max(4, args.steps // 4) if batch == 1 else args.steps
                direct, job_qps = via_service(url, batch, args.q, args.concurrency, steps)
                service[str(batch)] = round(job_qps / direct, 3)
                print(f"{batch:>6} {direct:>12.0f} {job_qps:>12.0f} {job_qps / direct:>7.3f}")
    print(json.dumps({"bench": "endpoint_throughput", "ratio": service.get("64", by_batch["64"]), "target": 0.9,
                      "ratio_of": "job via service ÷ direct loop, batch 64" if service else "adapter ÷ direct, batch 64",
                      "by_batch_service": service, "by_batch_adapter": by_batch}))


if __name__ == "__main__":
    main()
