"""Scale-out: jobs/min with 1, 2 and 3 Celery worker processes consuming the same 20 jobs.

Each run gets a fresh embedded Redis, the API (in this process) and N workers with their own
node names and queues (1: ``cpu,gpu``; 2: ``cpu`` + ``gpu``; 3: ``cpu`` + ``gpu`` + ``cpu,gpu``);
the jobs alternate between the ``cpu`` and ``gpu`` queues. The objective is I/O-bound (a
builtin sphere that waits ``latency_ms`` per evaluation, like a remote model), because this
machine has 2 cores: CPU-bound jobs could not scale past 2 workers here, so that would measure
the machine, not the service. Jobs span several segments, so they hop between workers.
Last line: JSON with ``ratio`` = jobs/min(3 workers) / jobs/min(1 worker).

    python bench/scaleout.py [--jobs 20] [--steps 50] [--latency-ms 40] [--quick (10 jobs)]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client")]
os.environ.setdefault("OMP_NUM_THREADS", "1")

LAYOUT = {1: ["cpu,gpu"], 2: ["cpu", "gpu"], 3: ["cpu", "gpu", "cpu,gpu"]}
TARGET = 2.0  # of an ideal 3.0: the API, Redis and three workers share 2 cores


def job_spec(i: int, steps: int, latency_ms: float) -> dict[str, object]:
    return {"algorithm": "zo-sgd", "config": {"q": 2, "lr": 1e-3}, "budget": {"max_steps": steps}, "seed": i,
            "queue": "cpu" if i % 2 == 0 else "gpu", "name": f"scaleout-{i}",
            "objective": {"kind": "builtin", "function": "sphere", "dim": 8, "latency_ms": latency_ms}}


def segments_per_worker(logs: dict[str, Path]) -> dict[str, int]:
    """Segments each worker ran, from its JSON log (``segment of job_… done`` lines)."""
    out = {}
    for name, log in logs.items():
        lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
        out[name] = sum(1 for rec in lines if rec.get("message", "").startswith("segment of"))
    return out


def run(n_workers: int, n_jobs: int, steps: int, latency_ms: float, segment_seconds: float) -> dict[str, object]:
    import zoserve
    from service.app import create_app
    from service.embedded import EmbeddedRedis
    from service.settings import Settings
    from tests.support.stack import celery_worker, serve_app

    tmp = Path(tempfile.mkdtemp(prefix=f"zoserve-scaleout-{n_workers}-"))
    env = {"ZOSERVE_SEGMENT_SECONDS": str(segment_seconds), "ZOSERVE_LOG_JSON": "true"}
    logs = {f"scale{k + 1}": tmp / f"scale{k + 1}.log" for k in range(n_workers)}
    with ExitStack() as stack:
        server = stack.enter_context(EmbeddedRedis(tmp / "redis"))
        for (name, log), queues in zip(logs.items(), LAYOUT[n_workers]):
            stack.enter_context(celery_worker(server.url, name, log, queues=queues, **env))
        url = stack.enter_context(serve_app(create_app(Settings(redis_url=server.url, auth_disabled=True))))
        client = stack.enter_context(zoserve.Client(url))
        t0 = time.perf_counter()
        ids = [client.jobs.create(job_spec(i, steps, latency_ms)).id for i in range(n_jobs)]
        pending = set(ids)
        while pending:
            time.sleep(0.1)
            pending = {j for j in pending if not client.jobs.get(j).status.terminal}
        elapsed = time.perf_counter() - t0
        statuses = {client.jobs.get(j).status.value for j in ids}
    assert statuses == {"succeeded"}, statuses
    return {"workers": n_workers, "seconds": round(elapsed, 2), "jobs_per_min": round(n_jobs / elapsed * 60, 1),
            "segments": segments_per_worker(logs), "queues": LAYOUT[n_workers]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--latency-ms", type=float, default=40.0)
    p.add_argument("--segment-seconds", type=float, default=1.0)
    p.add_argument("--quick", action="store_true", help="10 jobs (make bench --scaleout)")
    args = p.parse_args()
    if args.quick:
        args.jobs = 10
    rates: dict[int, float] = {}
    for n in (1, 2, 3):
        res = run(n, args.jobs, args.steps, args.latency_ms, args.segment_seconds)
        print(json.dumps(res), flush=True)
        rates[n] = float(res["jobs_per_min"])  # type: ignore[arg-type]
    print(json.dumps({"bench": "scaleout", "ratio": round(rates[3] / rates[1], 2), "target": TARGET,
                      "jobs_per_min": rates, "jobs": args.jobs, "steps": args.steps, "latency_ms": args.latency_ms,
                      "ratio_2": round(rates[2] / rates[1], 2), "quick": args.quick}))


if __name__ == "__main__":
    main()
