"""Endpoint objective throughput ÷ a direct batched httpx loop, against the test model server.

Every side sends the same kind of step: q points near a digit image, perturbed the way ZO-SGD's
forward RGE perturbs them (x + μu, so 17-digit floats), to ``POST /predict`` in requests of
``batch`` rows with ``concurrency`` in flight on one pooled client.

* direct: ``orjson.dumps`` of the numpy rows + ``client.post`` + ``orjson.loads`` of the answer
  per request, ``gather`` (the quick way a careful caller would write it);
* adapter: ``EndpointObjective.evaluate(Query(points))`` as a job's worker calls it (aiohttp with
  the SSRF guard, retries, redirects by hand, shape checks, margin loss); steps alternate with
  direct ones and queries/s come from median step times; the client's CPU per query of both sides
  is printed beside them (the server runs in another process, so this is all the caller's);
* job: a real ZO-SGD job (API + Celery worker + Redis, q − 1 directions, so q points a step).
  Rounds alternate job, direct, direct, job, ... (order swapped each round); each round runs
  ``--round-seconds`` of steps. The direct rounds run in a child process in a session of its
  own, like the Celery worker (see ``_direct_rounds``). The job's rate is taken from its
  progress events (worker clock, first → last step: segment boundaries inside count, queueing
  before the first step does not; created → result event is printed beside it); a direct round's from
  its wall time over all its steps. The job is watched by a slow status poll, not by SSE, so
  no stream competes for the 2 cores. The ratio is the median of the per-round ratios.

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
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "client"),
               str(Path(__file__).resolve().parent)]

import httpx  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402
from _stats import median_ci  # noqa: E402
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


MU = 1e-3  # ZO-SGD's default smoothing radius


def step_points(q: int) -> torch.Tensor:
    """``(q, 64)`` points like one ZO-SGD forward-RGE step: a digit image x and x + μu."""
    x0 = digits_data()[0][0].double()
    u = torch.randn(q - 1, 64, generator=torch.Generator().manual_seed(0)).double()
    return torch.cat([x0[None], x0 + MU * u])


async def direct_step(client: httpx.AsyncClient, url: str, points: torch.Tensor, batch: int, slots: asyncio.Semaphore) -> int:
    """One step the plain way; returns the number of outputs received."""

    async def one(chunk: torch.Tensor) -> int:
        body = orjson.dumps({"inputs": chunk.numpy()}, option=orjson.OPT_SERIALIZE_NUMPY)
        async with slots:
            response = await client.post(url, content=body, headers={"content-type": "application/json"})
        response.raise_for_status()
        return len(orjson.loads(response.content)["outputs"])

    return sum(await asyncio.gather(*(one(c) for c in torch.split(points, batch))))


def direct_client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False)


async def measure(url: str, batch: int, q: int, concurrency: int, steps: int) -> tuple[float, float, float, float]:
    """(direct q/s, adapter q/s, direct client CPU µs/query, adapter client CPU µs/query).

    Rates come from the median step time of each side, CPU from this thread's CPU time per step
    (both sides run on this one event loop; the server is another process). Steps alternate
    direct/adapter (order swapped every pair) so that load from other processes on this shared
    machine hits both sides alike; medians drop the spikes.
    """
    points = step_points(q)
    spec = EndpointSpec(url=url + "/predict", dim=64, batch_size=batch, concurrency=concurrency, output="margin", targets=0)
    adapter = EndpointObjective(spec, allow=["127.0.0.1"])
    times: dict[str, list[float]] = {"direct": [], "adapter": []}
    cpu: dict[str, list[float]] = {"direct": [], "adapter": []}
    async with direct_client(concurrency) as client:
        slots = asyncio.Semaphore(concurrency)

        async def direct() -> None:
            assert await direct_step(client, url + "/predict", points, batch, slots) == q

        async def ours() -> None:
            assert (await adapter.evaluate(Query(points=points))).queries == q

        await direct()  # warm both pools
        await ours()
        for i in range(steps):
            for name, step in sorted({"direct": direct, "adapter": ours}.items(), reverse=i % 2 == 1):
                start, cpu0 = time.perf_counter(), time.thread_time()
                await step()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.thread_time() - cpu0)
    await adapter.aclose()
    rate = {k: q / statistics.median(v) for k, v in times.items()}
    us = {k: statistics.median(v) / q * 1e6 for k, v in cpu.items()}
    return rate["direct"], rate["adapter"], us["direct"], us["adapter"]


async def direct_round(url: str, batch: int, q: int, concurrency: int, steps: int) -> float:
    """Queries/s of ``steps`` direct steps back to back (wall time, like the job's first → last)."""
    points = step_points(q)
    async with direct_client(concurrency) as client:
        slots = asyncio.Semaphore(concurrency)
        await direct_step(client, url + "/predict", points, batch, slots)  # connect, like a job's first step
        start = time.perf_counter()
        for _ in range(steps):
            await direct_step(client, url + "/predict", points, batch, slots)
        return q * steps / (time.perf_counter() - start)


def _direct_rounds(conn: Any) -> None:
    """Serve ``direct_round`` calls over ``conn`` from a session of its own, as the Celery worker has.

    Linux schedules by autogroup (one per session) by default: a direct loop left in the bench's
    session would share one group's CPU with the model server, while the worker and the server
    each have a group's share, which made the job look up to 1.5x faster than direct on a busy machine.
    """
    os.setsid()
    torch.set_num_threads(1)
    try:
        while (args := conn.recv()) is not None:
            conn.send(asyncio.run(direct_round(*args)))
    except EOFError:  # the bench went away
        pass


@contextlib.contextmanager
def direct_process() -> Iterator[Callable[..., float]]:
    """``run(url, batch, q, concurrency, steps) -> q/s`` in a child process (see ``_direct_rounds``)."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_direct_rounds, args=(theirs,), daemon=True)
    proc.start()

    def run(*args: Any) -> float:
        ours.send(args)
        return float(ours.recv())

    try:
        yield run
    finally:
        ours.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


def job_round(client: Any, spec: dict[str, Any]) -> tuple[float, float]:
    """Run one job to its end: (q/s from its progress events first → last, q/s from created → result).

    Both come from the service's own timestamps, so a slow poll (cheap for the API, which shares
    the CPU with the model server) loses no precision.
    """
    q, steps = spec["config"]["q"] + 1, spec["budget"]["max_steps"]
    job = client.jobs.create(spec)
    while (status := client.jobs.get(job.id).status.value) not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
    if status != "succeeded":
        raise RuntimeError(f"job {job.id} ended {status}")
    events = client.jobs.poll_events(job.id, limit=10_000).items
    times = [ev.time.timestamp() for ev in events if ev.type == "progress"]
    end = next(ev.time.timestamp() for ev in events if ev.type == "result")
    assert len(times) == steps, (len(times), steps)
    return q * (steps - 1) / (times[-1] - times[0]), q * steps / (end - job.created_at.timestamp())


def via_service(url: str, q: int, concurrency: int, batches: dict[int, int], rounds: int) -> dict[int, dict[str, float]]:
    """Job vs direct at each batch size (steps per round in ``batches``), rounds alternating.

    One stack (API + Celery worker + Redis) serves every batch size; a short job warms it first.
    """
    import zoserve
    from service.app import create_app
    from service.embedded import EmbeddedRedis
    from service.settings import Settings
    from tests.support.stack import celery_worker, serve_app

    tmp = Path(tempfile.mkdtemp(prefix="zoserve-ept-"))
    env = {"ZOSERVE_SSRF_ALLOW": '["127.0.0.1"]'}
    out: dict[int, dict[str, float]] = {}
    with EmbeddedRedis(tmp / "redis") as redis_server, celery_worker(redis_server.url, "ept", tmp / "w.log", **env), \
            serve_app(create_app(Settings(redis_url=redis_server.url, auth_disabled=True, ssrf_allow=["127.0.0.1"]))) as api, \
            zoserve.Client(api) as client, direct_process() as direct_rate:
        for batch, steps in batches.items():
            objective = {"kind": "endpoint", "url": url + "/predict", "dim": 64, "batch_size": batch,
                         "concurrency": concurrency, "output": "margin", "targets": 0}
            spec = {"algorithm": "zo-sgd", "config": {"q": q - 1, "lr": 1e-6, "mu": MU}, "objective": objective,
                    "x0": digits_data()[0][0].double().tolist(), "budget": {"max_steps": steps}}
            job_round(client, {**spec, "budget": {"max_steps": 2}})  # warm the worker
            ratios, jobs, posts, directs = [], [], [], []
            for r in range(rounds):
                sides: list[str] = ["job", "direct"] if r % 2 == 0 else ["direct", "job"]
                for side in sides:
                    if side == "job":
                        job_qps, post_qps = job_round(client, spec)
                    else:
                        direct = direct_rate(url, batch, q, concurrency, steps)
                ratios.append(job_qps / direct)
                jobs.append(job_qps)
                posts.append(post_qps)
                directs.append(direct)
            lo, hi, coverage = median_ci(ratios)
            out[batch] = {"direct": statistics.median(directs), "job": statistics.median(jobs),
                          "post": statistics.median(posts), "ratio": statistics.median(ratios),
                          "min": min(ratios), "max": max(ratios), "steps": steps, "ci": (lo, hi), "coverage": coverage}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=int, default=256, help="points per step")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="adapter table: steps per side at batch 16 and 64 (a quarter at 1)")
    parser.add_argument("--rounds", type=int, default=5, help="job/direct rounds per batch size")
    parser.add_argument("--round-seconds", type=float, default=5.0, help="about how long one job round runs")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16, 64],
                        help="batch sizes, comma-separated")
    parser.add_argument("--server", choices=["process", "thread"], default="process")
    parser.add_argument("--no-service", action="store_true", help="skip the whole-service measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    by_batch: dict[str, float] = {}
    direct_qps: dict[int, float] = {}
    client_us: dict[str, dict[str, float]] = {}
    print(f"q={args.q} points/step, concurrency={args.concurrency}, server in a {args.server}")
    print(f"{'batch':>6} {'direct q/s':>12} {'adapter q/s':>12} {'ratio':>7}   client CPU µs/query: direct  adapter")
    with model_server(args.server) as url:
        for batch in args.batches:
            steps = max(2, args.steps // 4) if batch == 1 else args.steps
            direct, ours, direct_us, ours_us = asyncio.run(measure(url, batch, args.q, args.concurrency, steps))
            direct_qps[batch] = direct
            by_batch[str(batch)] = round(ours / direct, 3)
            client_us[str(batch)] = {"direct": round(direct_us, 1), "adapter": round(ours_us, 1)}
            print(f"{batch:>6} {direct:>12.0f} {ours:>12.0f} {ours / direct:>7.3f}   {direct_us:>26.1f} {ours_us:>8.1f}")
        service: dict[str, float] = {}
        intervals: dict[str, list[float]] = {}
        if not args.no_service:
            # steps per round: about --round-seconds at the direct rate measured above (at least 3)
            plan = {b: max(3, round(args.round_seconds * qps / args.q)) for b, qps in direct_qps.items()}
            res = via_service(url, args.q, args.concurrency, plan, args.rounds)
            print(f"a real job (API + Celery + Redis): median of {args.rounds} alternating rounds; job q/s from its "
                  "progress events (first -> last step), created -> result beside it")
            print(f"{'batch':>6} {'steps':>6} {'direct q/s':>12} {'job q/s':>9} {'create->end':>11} {'ratio':>7} "
                  f"{'interval of the median (order statistics)':>43}")
            for batch, m in res.items():
                service[str(batch)] = round(m["ratio"], 3)
                (lo, hi), coverage = m["ci"], m["coverage"]
                intervals[str(batch)] = [round(lo, 3), round(hi, 3), round(coverage, 3)]
                print(f"{batch:>6} {m['steps']:>6.0f} {m['direct']:>12.0f} {m['job']:>9.0f} {m['post']:>11.0f} "
                      f"{m['ratio']:>7.3f} {lo:>23.3f}-{hi:.3f} at {coverage:.0%}")
    print(json.dumps({"bench": "endpoint_throughput", "ratio": min((service or by_batch).values()),
                      "target": 0.9,
                      "ratio_of": ("job via service ÷ direct loop, worst batch size (median of alternating rounds, "
                                   "job rate from progress events)" if service else "adapter ÷ direct, worst batch size"),
                      "by_batch_service": service, "ci_by_batch_service": intervals, "by_batch_adapter": by_batch,
                      "client_cpu_us_per_query": client_us}))


if __name__ == "__main__":
    main()
