"""Service overhead: steps/s of a job through API + Celery + Redis ÷ the same algorithm in-process.

ZO-SGD with RGE (gaussian, q = 20) on a cheap objective (sphere, d = 1000). Both sides run in one
invocation on this machine, so the ratio is meaningful even when absolute speeds are noisy.
Last line: one JSON object with bench, ratio and target.

    python bench/overhead.py [--steps 5000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from workers.algorithms.base import Answer  # noqa: E402
from workers.algorithms.registry import build_algorithm  # noqa: E402
from workers.objectives.builtin import BuiltinObjective  # noqa: E402
from workers.runner import Limits, MemorySink, initial_state, run_segment  # noqa: E402
from zoserve.models.algorithms import ZOSGDConfig  # noqa: E402

if TYPE_CHECKING:
    import zoserve

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


@contextmanager
def service(segment_seconds: float) -> Iterator["zoserve.Client"]:
    """API (uvicorn on 127.0.0.1) + one Celery worker process + embedded Redis, and an SDK client."""
    import zoserve
    from service.app import create_app
    from service.embedded import EmbeddedRedis
    from service.settings import Settings
    from tests.support.stack import celery_worker, serve_app

    with tempfile.TemporaryDirectory(prefix="zoserve-bench-") as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis_server, \
            celery_worker(redis_server.url, "bench", Path(tmp) / "worker.log",
                          ZOSERVE_SEGMENT_SECONDS=str(segment_seconds)), \
            serve_app(create_app(Settings(redis_url=redis_server.url, auth_disabled=True))) as url, \
            zoserve.Client(url) as client:
        yield client


def spec(steps: int) -> dict[str, Any]:
    return {"algorithm": "zo-sgd", "config": CONFIG, "budget": {"max_steps": steps},
            "objective": {"kind": "builtin", "function": "sphere", "dim": D}}


def via_service(client: "zoserve.Client", steps: int) -> float:
    """POST → succeeded, as a client polling the job record every 20 ms sees it: the job's own throughput."""
    t0 = time.perf_counter()
    job = client.jobs.create(spec(steps))
    while not client.jobs.get(job.id).status.terminal:
        time.sleep(0.02)
    rate = steps / (time.perf_counter() - t0)
    assert client.jobs.get(job.id).progress.step == steps
    return rate


def via_service_streaming(client: "zoserve.Client", steps: int) -> float:
    """POST → last event for a client that parses every event over SSE (API + SDK share these 2 cores)."""
    t0 = time.perf_counter()
    job = client.jobs.create(spec(steps))
    n = sum(1 for ev in job.stream() if ev.type == "progress")
    assert n == steps
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5000, help="steps per job (and per in-process run)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds; the medians count")
    p.add_argument("--segment-seconds", type=float, default=2.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {"in-process (ask/eval/tell)": [], "in-process runner + events": [],
                                     "service: POST → succeeded (client polls)": []}
    ratios: dict[str, list[float]] = {"runner": [], "service": []}
    with service(args.segment_seconds) as client:
        client.jobs.create({**spec(50)}).wait()  # warm the worker (imports, caches)
        in_process(500)
        for _ in range(args.rounds):  # alternate, so drifts in machine speed hit every side alike
            base, runner, svc = in_process(args.steps), in_process_runner(args.steps), via_service(client, args.steps)
            for name, v in zip(rates, (base, runner, svc)):
                rates[name].append(v)
            ratios["runner"].append(runner / base)
            ratios["service"].append(svc / base)
        streamed = via_service_streaming(client, args.steps)
    base = median(rates["in-process (ask/eval/tell)"])
    print(f"ZO-SGD RGE q={Q}, sphere d={D}: {args.rounds} alternating rounds of {args.steps} steps, "
          f"segment {args.segment_seconds}s (median steps/s; ratio = median of per-round ratios)")
    for (name, vs), r in zip(rates.items(), (None, ratios["runner"], ratios["service"])):
        spread = f"  (rounds {min(r):.3f}–{max(r):.3f})" if r else ""
        print(f"  {name:<48} {median(vs):10.1f} steps/s  {median(r) if r else 1.0:6.3f}×{spread}")
    print(f"  {'service: POST → last SSE event (client streams)':<48} {streamed:10.1f} steps/s  "
          f"{streamed / base:6.3f}×  (one run)")
    print(json.dumps({"bench": "overhead", "ratio": round(median(ratios["service"]), 4), "target": 0.9,
                      "rounds": [round(r, 4) for r in ratios["service"]],
                      "runner_ratio": round(median(ratios["runner"]), 4),
                      "steps_per_s": {k: round(median(v), 1) for k, v in rates.items()},
                      "streaming_ratio": round(streamed / base, 4), "d": D, "q": Q, "steps": args.steps}))


if __name__ == "__main__":
    main()
