"""Helpers for crash tests: restartable worker processes, reference runs, event-stream audits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from tests.support.stack import ROOT, stop_process, wait_for_worker, worker_env


class Worker:
    """A `celery worker` that can be SIGKILLed and started again under the same name and log."""

    def __init__(self, redis_url: str, name: str, log: Path, app: str = "workers.celery_app", pool: str = "solo",
                 **env: str):
        self.redis_url, self.name, self.log, self.app, self.pool, self.env = redis_url, name, log, app, pool, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = self.starts = 0

    def start(self, wait: bool = True) -> "Worker":
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "worker", "--pool", self.pool, "-c", "1",
               "-Q", "cpu,gpu", "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(self.redis_url, **self.env), stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        if wait:
            wait_for_worker(self.redis_url, self.name, self.proc, self.log)
        return self

    def ready(self) -> bool:
        """Alive and past its startup (as many "ready." lines in its log as it was started)."""
        alive = self.proc is not None and self.proc.poll() is None
        return alive and self.log.read_text(errors="replace").count(f"{self.name}@") and \
            self.log.read_text(errors="replace").count(" ready.") >= self.starts

    def kill(self) -> None:
        """kill -9 of the whole worker (its process group), like an OOM kill or a lost machine."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def reference_run(body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An undisturbed in-process run of a job spec: ``(result body, progress events)``."""
    import torch

    from service.settings import Settings
    from workers.algorithms.registry import build_algorithm
    from workers.objectives.registry import build_objective
    from workers.runner import Limits, MemorySink, initial_state, result_body, run_segment, split_state
    from zoserve.models.jobs import job_create_adapter

    spec = job_create_adapter.validate_python(body)
    algo = build_algorithm(spec.algorithm, spec.algorithm_hparams())
    objective = build_objective(spec.objective, spec.seed, Settings(redis_url="redis://unused"))
    x0 = torch.tensor(spec.x0, dtype=torch.float64) if spec.x0 is not None else objective.default_x0()
    sink = MemorySink()
    limits = Limits(spec.budget.max_steps, spec.budget.max_queries, spec.budget.max_seconds)
    res = asyncio.run(run_segment(algo, initial_state(algo, x0, spec.seed), objective, sink, limits))
    return result_body(res.tally, res.reason, algo.x_of(split_state(res.state)[0])), sink.events


def stream(r: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    """Every event of a job, in stream order, as stored (``t`` type + ``e`` JSON)."""
    return [{"id": rid.decode(), "type": f[b"t"].decode(), **json.loads(f[b"e"])}
            for rid, f in r.xrange(f"zo:job:{job_id}:events")]


def audit(events: list[dict[str, Any]], reference: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a finished job's stream against its reference run (empty: nothing)."""
    problems = []
    terminal = [e for e in events if e["type"] in ("result", "error")]
    if len(terminal) != 1:
        problems.append(f"{len(terminal)} terminal events")
    progress = [e for e in events if e["type"] == "progress"]
    steps = [e["step"] for e in progress]
    if steps != list(range(1, len(reference) + 1)):
        backwards = sum(1 for a, b in zip(steps, steps[1:]) if b <= a)
        problems.append(f"steps {steps[:3]}..{steps[-3:]} (n={len(steps)}, {backwards} not increasing)")
    for got, want in zip(progress, reference):
        if (got["step"], got["queries"], got["value"]) != (want["step"], want["queries"], want["value"]):
            problems.append(f"step {got['step']}: {got['queries'], got['value']} != {want['queries'], want['value']}")
            break
    return problems
