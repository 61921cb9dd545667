"""Chaos: 30 jobs on 2 workers that are SIGKILLed at random moments and restarted.

Every job must end ``succeeded`` with the result of an undisturbed in-process run (same seed), each
with exactly one terminal event, its steps 1..N each published once and in order, and per step the
same query count and value as the reference (so replayed steps were neither re-published nor
re-counted). Runs on its own Redis, API and workers with short leases, so recovery is quick.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.embedded import EmbeddedRedis
from service.settings import Settings
from tests.support.chaos import Worker, audit, reference_run, stream
from tests.support.stack import serve_app

KEY = "chaos-key"
N_JOBS, STEPS, LATENCY_MS = 30, 80, 25  # ≈2 s of (sleeping) objective time per job, ~8 segments each
FAST = dict(ZOSERVE_LEASE_SECONDS="5", ZOSERVE_VISIBILITY_TIMEOUT="5", ZOSERVE_SEGMENT_SECONDS="0.25",
            ZOSERVE_REAPER_SECONDS="1", ZOSERVE_SEGMENT_MAX_CRASHES="20")


def spec(i: int, latency_ms: float = LATENCY_MS) -> dict[str, object]:
    fn = ("sphere", "rosenbrock", "ackley")[i % 3]
    return {"algorithm": ("zo-sgd", "zo-adam")[i % 2], "seed": 100 + i, "name": f"chaos-{i}",
            "objective": {"kind": "builtin", "function": fn, "dim": 6 + i % 5, "latency_ms": latency_ms},
            "budget": {"max_steps": STEPS}}


@pytest.fixture()
def chaos_stack(tmp_path: Path) -> Iterator[tuple[str, redis.Redis, list[Worker]]]:
    from service.app import create_app

    with EmbeddedRedis(tmp_path / "redis") as server:
        settings = Settings(redis_url=server.url, data_dir=tmp_path / "data", api_keys={KEY: "chaos"},
                            lease_seconds=5, visibility_timeout=5, rate_limit_per_second=0)
        workers = []
        for name in ("chaos1", "chaos2"):
            log = tmp_path / f"worker-{name}.log"  # per run: other sessions may run this test at the same time
            workers.append(Worker(server.url, name, log, ZOSERVE_DATA_DIR=str(tmp_path / "data"), **FAST))
        try:
            for w in workers:
                w.start()
            with serve_app(create_app(settings)) as url:
                yield url, redis.Redis.from_url(server.url), workers
        finally:
            for w in workers:
                w.stop()


@pytest.mark.slow
def test_sigkilled_workers_lose_no_job_and_finish_none_twice(chaos_stack: tuple[str, redis.Redis, list[Worker]]) -> None:
    url, r, workers = chaos_stack
    rng = random.Random(8)
    t0 = time.monotonic()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        ids = [http.post("/v1/jobs", json=spec(i)).json()["id"] for i in range(N_JOBS)]
        references = [reference_run(spec(i, latency_ms=0)) for i in range(N_JOBS)]  # latency only sleeps

        def unfinished() -> list[str]:
            return [j for j in ids if r.hget(f"zo:job:{j}", "status") not in (b"succeeded", b"failed", b"cancelled")]

        kills_at: list[float] = []
        while unfinished() and len(kills_at) < 6 and time.monotonic() - t0 < 90:
            time.sleep(rng.uniform(1.0, 3.0))
            busy = [w for w in workers if w.ready()]  # kill running workers, not ones still starting up
            if len(busy) < 2 or not r.scard("zo:open"):  # (and keep one alive, whose reaper revives the job)
                continue
            victim = rng.choice(busy)
            victim.kill()
            kills_at.append(round(time.monotonic() - t0, 1))
            victim.start(wait=False)  # a supervisor brings it back; its old message is still unacked
        deadline = time.monotonic() + 150
        while unfinished() and time.monotonic() < deadline:
            time.sleep(0.5)
        elapsed = time.monotonic() - t0

        jobs = [http.get(f"/v1/jobs/{j}").json() for j in ids]
    logs = "".join(w.log.read_text(errors="replace") for w in workers)
    counts = {
        "jobs": N_JOBS,
        "succeeded": sum(j["status"] == "succeeded" for j in jobs),
        "kills": len(kills_at),
        "segments": sum(int(r.hget(f"zo:job:{j}", "segments") or 0) for j in ids),
        "revived_by_reaper": len(re.findall(r"reaper: revived", logs)),
        "resent_by_reaper": len(re.findall(r"reaper: re-sent", logs)),
        "stale_deliveries_skipped": len(re.findall(r"skipped \(-3", logs)),
        "fenced_segments": len(re.findall(r"succeeded in [0-9.]+s: 'fenced'", logs)),
        "republished_steps_dropped": sum(int(r.hget(f"zo:job:{j}", "republished_dropped") or 0) for j in ids),
        "terminal_events": sum(sum(e["type"] in ("result", "error") for e in stream(r, j)) for j in ids),
        "queries": sum((j.get("result") or {}).get("queries", 0) for j in jobs),
        "queries_undisturbed": sum(want["queries"] for want, _ in references),
        "seconds": round(elapsed, 1),
    }
    print(f"\nchaos counts: {counts}\nkills at (s): {kills_at}")
    assert counts["kills"] >= 4, counts
    bad = {}
    for job, (want, events_ref), job_id in zip(jobs, references, ids):
        problems = audit(stream(r, job_id), events_ref)
        if job["status"] != "succeeded":
            problems.append(f"status {job['status']}: {job.get('error')}")
        elif {k: job["result"][k] for k in ("x_best", "value_best", "steps", "queries", "reason")} != \
                {k: want[k] for k in ("x_best", "value_best", "steps", "queries", "reason")}:
            problems.append(f"result differs: {job['result']['value_best']} != {want['value_best']}")
        if problems:
            bad[job_id] = problems
    for job_id in bad:  # the evidence for a post-mortem: when each step landed, and what the workers did
        print(f"\n{job_id} steps (stream id: step):", [(e["id"], e.get("step")) for e in stream(r, job_id)])
        print("\n".join(line for line in logs.splitlines() if job_id in line))
    assert not bad, bad
    assert counts["succeeded"] == counts["terminal_events"] == N_JOBS
    assert counts["queries"] == counts["queries_undisturbed"]
