"""Service overhead: steps/s of a job through API + Celery + Redis ÷ the same algorithm in-process.

ZO-SGD with RGE (gaussian, q = 20) on a cheap objective (sphere, d = 1000). Both sides run in one
invocation on this machine, so the ratio is meaningful even when absolute speeds are noisy.
Last line: one JSON object with bench, ratio and target.

    python bench/overhead.py [--steps 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from workers.algorithms.base import Answer  # noqa: E402
from workers.algorithms.registry import build_algorithm  # noqa: E402
from workers.objectives.builtin import BuiltinObjective  # noqa: E402
from workers.runner import Limits, MemorySink, initial_state, run_segment  # noqa: E402
from zoserve.models.algorithms import ZOSGDConfig  # noqa: E402

D, Q = 1000, 20
CONFIG = {"q": Q, "lr": 1e-3}


def in_process(steps: int) -> float:
    """Plain ask → evaluate → tell loop: the algorithm with nothing around it."""
    algo = build_algorithm("zo-sgd", ZOSGDConfig(**CONFIG).hparams())
    f = BuiltinObjective("sphere", D)
    state = algo.init(f.default_x0(), 0)
    t0 = time.perf_counter()
    for _ in range(steps):
        query = algo.ask(state)
        state, _ = algo.tell(state, query, Answer(values=f.values(query.points)))
    return steps / (time.perf_counter() - t0)


def in_process_runner(steps: int) -> float:
    """The same through the runner (tally + one event per step), still no Redis."""
    algo = build_algorithm("zo-sgd", ZOSGDConfig(**CONFIG).hparams())
    f = BuiltinObjective("sphere", D)
    state = initial_state(algo, f.default_x0(), 0)
    t0 = time.perf_counter()
    res = asyncio.run(run_segment(algo, state, f, MemorySink(), Limits(max_steps=steps)))
    assert res.tally.step == steps
    return steps / (time.perf_counter() - t0)


def via_service(steps: int, segment_seconds: float) -> tuple[float, float]:
    """Submit the job through the SDK and time POST → finished, polling and streaming. Returns both rates."""
    import zoserve
    from service.app import create_app
    from service.embedded import EmbeddedRedis
    from service.settings import Settings
    from tests.support.stack import celery_worker, serve_app

    tmp = Path(tempfile.mkdtemp(prefix="zoserve-bench-"))
    with EmbeddedRedis(tmp / "redis") as redis_server, \
            celery_worker(redis_server.url, "bench", tmp / "worker.log", ZOSERVE_SEGMENT_SECONDS=str(segment_seconds)), \
            serve_app(create_app(Settings(redis_url=redis_server.url, auth_disabled=True))) as url, \
            zoserve.Client(url) as client:
        spec = {"algorithm": "zo-sgd", "config": CONFIG, "budget": {"max_steps": steps},
                "objective": {"kind": "builtin", "function": "sphere", "dim": D}}
        client.jobs.create({**spec, "budget": {"max_steps": 50}}).wait()  # warm the worker (imports, caches)
        # (a) a client that polls the job record: the job's own throughput
        t0 = time.perf_counter()
        job = client.jobs.create(spec)
        while not client.jobs.get(job.id).status.terminal:
            time.sleep(0.02)
        polled = steps / (time.perf_counter() - t0)
        # (b) a client that consumes every event over SSE on the same 2 cores (API + SDK parse 1 event/step)
        t0 = time.perf_counter()
        job = client.jobs.create(spec)
        n = sum(1 for ev in job.stream() if ev.type == "progress")
        streamed = steps / (time.perf_counter() - t0)
        assert n == steps and client.jobs.get(job.id).progress.step == steps
        return polled, streamed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--segment-seconds", type=float, default=2.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    in_process(500)  # warm-up
    base = in_process(args.steps)
    runner = in_process_runner(args.steps)
    service, streamed = via_service(args.steps, args.segment_seconds)
    rows = [("in-process (ask/eval/tell)", base), ("in-process runner + events", runner),
            ("service: POST → succeeded (client polls)", service),
            ("service: POST → last SSE event (client streams)", streamed)]
    print(f"ZO-SGD RGE q={Q}, sphere d={D}, {args.steps} steps, segment {args.segment_seconds}s")
    for name, v in rows:
        print(f"  {name:<48} {v:10.1f} steps/s  {v / base:6.3f}×")
    print(json.dumps({"bench": "overhead", "ratio": round(service / base, 4), "target": 0.9,
                      "steps_per_s": {"in_process": round(base, 1), "runner": round(runner, 1),
                                      "service": round(service, 1), "service_streaming": round(streamed, 1)},
                      "d": D, "q": Q, "steps": args.steps}))


if __name__ == "__main__":
    main()
