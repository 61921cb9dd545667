"""Service overhead: steps/s of a job through API + Celery + Redis ÷ the same algorithm in-process.

ZO-SGD with RGE (gaussian, q = 20) on a cheap objective (sphere, d = 1000). Both sides run in one
invocation on this machine, so the ratio is meaningful even when absolute speeds are noisy: each round
runs the bare loop right before and right after the job and compares the job with both.
Last line: one JSON object with bench, ratio and target. ``cpu_ratio`` beside it compares CPU
seconds per step (the bare loop's thread ÷ the worker process, all its threads): what the service
spends per step on the worker's side.

The headline is POST → ``wait()`` returns, as an SDK user sees it (queueing, start-up and the
notice of the end included; ``wait()`` follows the job's status events, not every step's
progress). Beside it: the job's steady rate from its own progress events (worker clock, first →
last step), and a control that bounds what any service can reach on this machine: the same
in-process loop while the other core runs a memory-bound loop, standing in for the API, Redis and
the event writer that share the machine with the worker during a job. The API runs in a uvicorn
process of its own, as deployed (``--api thread`` puts it in this process, as before session 6; the
two gave the same ratios). Two diagnostics follow the table: the job's fixed costs from its events'
times, and the Python opcodes per step of the bare loop and of the runner (a count, not a timing).

    python bench/overhead.py [--steps 5000] [--rounds 21] [--no-control] [--api process|thread]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client"), str(ROOT / "bench")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import psutil  # noqa: E402
import torch  # noqa: E402

from _stats import median_ci  # noqa: E402
from workers.algorithms.base import Answer  # noqa: E402
from workers.algorithms.registry import build_algorithm  # noqa: E402
from workers.objectives.builtin import BuiltinObjective  # noqa: E402
from workers.runner import Limits, MemorySink, initial_state, run_segment  # noqa: E402
from zoserve.models.algorithms import ZOSGDConfig  # noqa: E402

if TYPE_CHECKING:
    import zoserve

D, Q = 1000, 20
CONFIG = {"q": Q, "lr": 1e-3}


def in_process(steps: int, cpu: list[float] | None = None) -> float:
    """Plain ask → evaluate → tell loop: the algorithm with nothing around it. Steps/s; appends its
    CPU seconds per step to ``cpu`` when given."""
    algo = build_algorithm("zo-sgd", ZOSGDConfig(**CONFIG).hparams())
    f = BuiltinObjective("sphere", D)
    state = algo.init(f.default_x0(), 0)
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        query = algo.ask(state)
        state, _ = algo.tell(state, query, Answer(values=f.values(query.points)))
    if cpu is not None:
        cpu.append((time.thread_time() - c0) / steps)
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
def service(segment_seconds: float, api: str = "process") -> Iterator["zoserve.Client"]:
    """Embedded Redis + one Celery worker process + the API on 127.0.0.1, and an SDK client.

    ``api="process"``: the API in a uvicorn process of its own, as deployed (and as the other service
    benches run it). ``"thread"``: in a thread of this process, sharing the client's GIL (before session 6)."""
    import zoserve
    from _serve import redis_and_api
    from service.app import create_app
    from service.embedded import EmbeddedRedis
    from service.settings import Settings
    from tests.support.stack import celery_worker, serve_app

    with contextlib.ExitStack() as stack:
        if api == "process":
            redis_url, url, tmp = stack.enter_context(redis_and_api())
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zoserve-bench-")))
            redis_url = stack.enter_context(EmbeddedRedis(tmp / "redis")).url
            url = stack.enter_context(serve_app(create_app(Settings(redis_url=redis_url, auth_disabled=True))))
        stack.enter_context(celery_worker(redis_url, "bench", tmp / "worker.log",
                                          ZOSERVE_SEGMENT_SECONDS=str(segment_seconds)))
        yield stack.enter_context(zoserve.Client(url))


def spec(steps: int) -> dict[str, Any]:
    return {"algorithm": "zo-sgd", "config": CONFIG, "budget": {"max_steps": steps},
            "objective": {"kind": "builtin", "function": "sphere", "dim": D}}


PHASES = ("POST → running", "running → first step", "last step → result", "result → wait() returns")


def via_service(client: "zoserve.Client", steps: int, worker: Any = None, cpu: list[float] | None = None,
                phases: dict[str, list[float]] | None = None) -> tuple[float, float]:
    """(POST → ``wait()`` returns, the job's steady rate from its progress events: worker clock, first → last step).

    With ``worker`` (a psutil.Process), appends the worker process's CPU seconds per step (every thread:
    the step loop, the event writer, Celery) to ``cpu``. With ``phases``, appends the job's fixed costs
    (:data:`PHASES`, seconds; one clock: the worker runs on this machine) from its events' times."""
    c0 = sum(worker.cpu_times()[:2]) if worker is not None else 0.0
    t0, wall0 = time.perf_counter(), time.time()
    job = client.jobs.create(spec(steps)).wait()
    rate = steps / (time.perf_counter() - t0)
    wall1 = time.time()
    if worker is not None and cpu is not None:
        cpu.append((sum(worker.cpu_times()[:2]) - c0) / steps)
    assert job.progress.step == steps
    events, after = [], "0"
    while True:  # page through the stream
        page = client.jobs.poll_events(job.id, after=after, limit=10_000)
        events += page.items
        if page.done or not page.items:
            break
        after = page.last_id
    times = [ev.time.timestamp() for ev in events if ev.type == "progress"]
    assert len(times) == steps, (len(times), steps)
    if phases is not None:
        running = next(ev.time.timestamp() for ev in events if ev.type == "status" and ev.status.value == "running")
        result = next(ev.time.timestamp() for ev in events if ev.type == "result")
        for name, v in zip(PHASES, (running - wall0, times[0] - running, result - times[-1], wall1 - result)):
            phases.setdefault(name, []).append(v)
    return rate, (steps - 1) / (times[-1] - times[0])


def opcodes_per_step(steps: int = 200) -> dict[str, float]:
    """Python bytecodes executed per step by the bare loop and by the runner (``sys.settrace`` with
    ``f_trace_opcodes``): a count that, unlike the timings, does not move with the machine."""
    counts = {}
    for name, run in (("bare", in_process), ("runner", in_process_runner)):
        n = 0

        def trace(frame: Any, event: str, arg: Any) -> Any:
            nonlocal n
            frame.f_trace_opcodes = True
            n += event == "opcode"
            return trace

        run(20)  # warm (imports, caches) outside the count
        sys.settrace(trace)
        try:
            run(steps)
        finally:
            sys.settrace(None)
        counts[name] = n / steps
    return counts


@contextmanager
def other_core_busy() -> Iterator[None]:
    """A memory-bound numpy loop in a child process (the other core's share of a service run, at its worst)."""
    code = "import numpy as np\na = np.ones(4_000_000)\nwhile True: a *= 1.0000001"
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.3)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


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
    p.add_argument("--rounds", type=int, default=21, help="alternating rounds; the medians count")
    p.add_argument("--segment-seconds", type=float, default=2.0)
    p.add_argument("--no-control", action="store_true", help="skip the in-process run beside a busy core")
    p.add_argument("--api", choices=["process", "thread"], default="process",
                   help="the API in its own uvicorn process (as deployed) or in a thread of this one")
    args = p.parse_args()
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {"in-process (ask/eval/tell)": [], "in-process runner + events": [],
                                     "service: POST → wait() returns (SDK)": [],
                                     "service: steady rate (worker clock)": [],
                                     "control: in-process, other core busy": []}
    ratios: dict[str, list[float]] = {k: [] for k in ("runner", "service", "steady", "control")}
    cpu: dict[str, list[float]] = {"bare": [], "worker": []}
    phases: dict[str, list[float]] = {}
    with service(args.segment_seconds, args.api) as client:
        client.jobs.create({**spec(50)}).wait()  # warm the worker (imports, caches)
        worker = next(p for p in psutil.Process().children(recursive=True) if "celery" in " ".join(p.cmdline()))
        in_process(500)
        for _ in range(args.rounds):  # alternate, so drifts in machine speed hit every side alike
            # the bare loop runs right before and right after the job it is compared with, so a steady drift
            # in the machine's speed over the round cancels out of the ratio
            bare_cpu: list[float] = []
            before = in_process(args.steps, bare_cpu)
            svc, steady = via_service(client, args.steps, worker, cpu["worker"], phases)
            after = in_process(args.steps, bare_cpu)
            runner = in_process_runner(args.steps)
            base = 2 / (1 / before + 1 / after)  # steps/s over both runs
            cpu["bare"].append(sum(bare_cpu) / 2)
            row = [base, runner, svc, steady]
            if not args.no_control:
                with other_core_busy():
                    row.append(in_process(args.steps))
            for name, v in zip(rates, row):
                rates[name].append(v)
            for name, v in zip(ratios, row[1:]):
                ratios[name].append(v / base)
        streamed = via_service_streaming(client, args.steps)
    base = median(rates["in-process (ask/eval/tell)"])
    print(f"ZO-SGD RGE q={Q}, sphere d={D}: {args.rounds} alternating rounds of {args.steps} steps, "
          f"segment {args.segment_seconds}s, API in a {args.api} (median steps/s; ratio = median of per-round ratios; "
          f"each round's baseline: the bare loop before and after its job)")
    for (name, vs), r in zip(rates.items(), (None, *ratios.values())):
        if not vs:
            continue
        spread = f"  (rounds {min(r):.3f}–{max(r):.3f})" if r else ""
        print(f"  {name:<48} {median(vs):10.1f} steps/s  {median(r) if r else 1.0:6.3f}×{spread}")
    print(f"  {'service: POST → last SSE event (client streams)':<48} {streamed:10.1f} steps/s  "
          f"{streamed / base:6.3f}×  (one run)")
    lo, hi, coverage = median_ci(ratios["service"])
    print(f"  headline (POST → wait()) ratio {median(ratios['service']):.3f}, {coverage:.0%} interval of its median "
          f"{lo:.3f}–{hi:.3f} (order statistics of the {len(ratios['service'])} rounds)")
    bare_us, worker_us = median(cpu["bare"]) * 1e6, median(cpu["worker"]) * 1e6
    cpu_rounds = [b / w for b, w in zip(cpu["bare"], cpu["worker"])]
    print(f"  CPU per step: bare loop {bare_us:.0f} µs, worker process (all threads) {worker_us:.0f} µs → "
          f"{bare_us / worker_us:.3f}×  (rounds {min(cpu_rounds):.3f}–{max(cpu_rounds):.3f})")
    fixed = {k: round(median(v) * 1e3, 2) for k, v in phases.items()}
    print("  fixed costs of a job, median ms: " + ", ".join(f"{k} {v}" for k, v in fixed.items()))
    ops = opcodes_per_step()
    print(f"  Python opcodes per step: bare loop {ops['bare']:.0f}, runner {ops['runner']:.0f} "
          f"(+{ops['runner'] - ops['bare']:.0f}; a deterministic count)")
    print(json.dumps({"bench": "overhead", "ratio": round(median(ratios["service"]), 4), "target": 0.9,
                      "rounds": [round(r, 4) for r in ratios["service"]],
                      "ratio_ci": [round(lo, 4), round(hi, 4)], "ratio_ci_coverage": round(coverage, 4),
                      "runner_ratio": round(median(ratios["runner"]), 4),
                      "steady_ratio": round(median(ratios["steady"]), 4),
                      "control_ratio": round(median(ratios["control"]), 4) if ratios["control"] else None,
                      "steps_per_s": {k: round(median(v), 1) for k, v in rates.items() if v},
                      "streaming_ratio": round(streamed / base, 4), "cpu_ratio": round(bare_us / worker_us, 4),
                      "cpu_us_per_step": {"bare": round(bare_us, 1), "worker": round(worker_us, 1)},
                      "fixed_ms": fixed, "api": args.api, "opcodes_per_step": {k: round(v, 1) for k, v in ops.items()},
                      "d": D, "q": Q, "steps": args.steps}))


if __name__ == "__main__":
    main()
