"""Federated rounds on Celery: each round is two chords with the barriers FZooS needs.

    round r:  chord(client_local(i) for i) → server_mid   (x̄ = Σ p_i x_i, radii ρ_i)
              chord(client_check(i) for i) → server_end   (w̄ = Σ p_i w_i, F(x̄) = Σ p_i f_i(x̄))
              server_end checkpoints the round, publishes its event and launches round r + 1.

Only iterates, surrogate weights, values and counters cross the broker (the RFF basis is
regenerated from the shared seed on every side). Each client's tasks go to that client's queue
(``clients[i].queue``) so a participant can run a worker next to its private objective.

Crash-safe: Celery's chords are not (a worker that dies after its task's result is stored, before
the chord's callback is sent, leaves no message behind and nothing is redelivered), so every task id
starts with the job id and the reaper relaunches a round none of whose messages is left
(:func:`relaunch_round`).

Idempotent under redelivery: every client result is cached per (round, phase, client) and a
client's state is saved with it in one transaction; the server steps advance ``fed_round`` with a
compare-and-set, so a duplicated callback does nothing. A failing client is reported and left out
of the round; the job fails only past ``max_failed_fraction``.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import torch
from celery import chord, current_task
from torch import Tensor

from service import keys
from service.queue import FED_RELAUNCH, fed_task_id
from service.records import error_event, event_json
from zoserve.models.events import ResultEvent
from zoserve.models.jobs import JobStatus, Result, job_create_adapter
from zoserve.models.problems import Problem

from .algorithms import fed_baselines as fb
from .algorithms import fzoos as fz
from .algorithms.base import Query
from .algorithms.checkpoint import dump_state, load_state
from .algorithms.fed_problems import make_problem
from .celery_app import app
from .jobstore import Lease
from .objectives.registry import build_objective
from .runner import PROGRESS_KEYS, dumps

FEDERATED = frozenset({"fzoos", "fedzo"})
_B = 8  # bytes per float64 on the wire


def _k(job_id: str, part: str) -> str:
    return f"{keys.job(job_id)}:fed:{part}"


# ------------------------------------------------------------------ job context (per task)
class FedJob:
    """A federated job's spec, parameters and client objectives, loaded from Redis."""

    def __init__(self, job_id: str):
        from .tasks import context

        self.ctx = context()
        self.r = self.ctx.store.r
        self.id = job_id
        self.hash = self.ctx.store.job(job_id)
        self.spec = job_create_adapter.validate_python(json.loads(self.hash["spec"]))
        self.method = self.spec.algorithm
        hp = self.spec.config.hparams()
        self.params: Any = fz.FZooSParams(**hp) if self.method == "fzoos" else fb.FedZOParams(**hp)
        obj = self.spec.objective
        self.weights = obj.weights()
        self.n = len(self.weights)
        self.problem = make_problem(obj.family, obj.n_clients, obj.dim, obj.heterogeneity, obj.problem_seed) if obj.family else None
        self._opened: list[Any] = []  # objectives built by f_batch, closed by aclose

    def queue(self, i: int) -> str:
        clients = self.spec.objective.clients
        return (clients[i].queue if clients and clients[i].queue else None) or self.spec.queue or "cpu"

    def x0(self) -> Tensor:
        if self.spec.x0 is not None:
            return torch.tensor(self.spec.x0, dtype=torch.float64)
        if self.problem is not None:
            return self.problem.x0.clone()
        return torch.zeros(int(self.spec.objective.dim), dtype=torch.float64)

    def f_batch(self, i: int, loop: asyncio.AbstractEventLoop) -> Callable[[Tensor], Tensor]:
        """Client i's objective as a batched callable (its I/O runs on ``loop``)."""
        if self.problem is not None:
            return self.problem.clients[i]
        spec = job_create_adapter.validate_python({**json.loads(self.hash["spec"]), "algorithm": "zo-sgd", "config": {},
                                                    "objective": self.spec.objective.clients[i].objective})
        objective = build_objective(spec.objective, self.spec.seed * 1000 + i, self.ctx.settings)
        self._opened.append(objective)

        def f(points: Tensor) -> Tensor:
            ev = loop.run_until_complete(objective.evaluate(Query(points=points)))
            return ev.answer.values  # type: ignore[union-attr,return-value]

        return f

    async def aclose(self) -> None:
        """Close the objectives :meth:`f_batch` built (their connection pools), on the loop they ran on."""
        while self._opened:
            await self._opened.pop().aclose()

    def server(self) -> dict[str, Any]:
        raw = self.r.get(_k(self.id, "server"))
        return load_state(raw) if raw else {}

    def client_state(self, i: int) -> dict[str, Any] | None:
        raw = self.r.get(_k(self.id, f"client:{i}"))
        return load_state(raw) if raw else None

    def status(self) -> tuple[str, bool]:
        st, cancel = self.r.hmget(keys.job(self.id), "status", "cancel_requested")
        return (st or b"").decode(), cancel == b"1"


# ------------------------------------------------------------------ start (from run_segment)
def start(lease: Lease) -> str:
    """First segment of a federated job: initialise the server and launch round 1 (or resume)."""
    job = FedJob(lease.job_id)
    store = job.ctx.store
    server = job.server()
    if not server:
        server = {"x": job.x0(), "round": 0, "queries": 0, "bytes": 0, "t0": time.time()}
        job.r.set(_k(job.id, "server"), dump_state(server))
    store.commit(job.id, lease.token, hset={"fed_round": str(server["round"])}, release=True)
    launch_round(job, int(server["round"]) + 1)
    return "federated"


def launch_round(job: FedJob, r: int) -> None:
    _phase(job, r, client_local, range(job.n), server_mid)


def _phase(job: FedJob, r: int, client_task: Any, clients: Iterable[int], barrier: Any) -> None:
    """One chord of round ``r``: ``client_task`` on each client's queue, then ``barrier`` on the job's. Every
    task id starts with the job id (:func:`~service.queue.fed_task_id`), so the reaper finds them."""
    header = [client_task.si(job.id, r, i).set(queue=job.queue(i), task_id=fed_task_id(job.id, f"{client_task.name}.{r}.{i}"))
              for i in clients]
    chord(header)(barrier.s(job.id, r).set(queue=job.spec.queue or "cpu", task_id=fed_task_id(job.id, f"{barrier.name}.{r}")))


@app.task(name=FED_RELAUNCH, acks_late=True, reject_on_worker_lost=True)
def relaunch_round(job_id: str, r: int) -> str:
    """Launch round ``r`` again: the reaper found no message of the job anywhere (a worker died between a
    chord's last client and its callback, or between a round's checkpoint and the next launch). Clients
    that finished answer from their cache; if the old chain lives on after all, ``fed_round``'s
    compare-and-set lets only one of the two advance."""
    job = FedJob(job_id)
    status, _ = job.status()
    if status != JobStatus.running.value or job.r.hget(keys.job(job_id), "fed_round") != str(r - 1).encode():
        return "moved on"
    launch_round(job, r)
    return "relaunched"


# ------------------------------------------------------------------ client tasks
def _cached(job: FedJob, phase: str, r: int, i: int) -> dict[str, Any] | None:
    raw = job.r.hget(_k(job.id, f"{phase}:{r}"), str(i))
    return json.loads(raw) if raw else None


def _save(job: FedJob, phase: str, r: int, i: int, state: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    pipe = job.r.pipeline(transaction=True)
    pipe.set(_k(job.id, f"client:{i}"), dump_state(state))
    pipe.hset(_k(job.id, f"{phase}:{r}"), str(i), json.dumps(result))
    pipe.execute()
    return result


def _client_task(phase: str, job_id: str, r: int, i: int, work: Callable[[FedJob, Callable[[Tensor], Tensor]], tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    job = FedJob(job_id)
    if (hit := _cached(job, phase, r, i)) is not None:
        return hit  # a redelivered task: the work was done and saved
    loop = asyncio.new_event_loop()
    t0 = time.perf_counter()
    try:
        state, result = work(job, _Counter(job.f_batch(i, loop)))
    except Exception as exc:  # noqa: BLE001 - a failing client is reported, the round goes on
        return {"ok": False, "client": i, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        loop.run_until_complete(job.aclose())
        loop.close()
    worker = getattr(current_task.request, "hostname", None) or socket.gethostname()
    result.update(ok=True, client=i, worker=worker, seconds=time.perf_counter() - t0)
    return _save(job, phase, r, i, state, result)


class _Counter:
    """Counts the points a client asks for (every query is charged, including checks)."""

    def __init__(self, f: Callable[[Tensor], Tensor]):
        self.f, self.n = f, 0

    def __call__(self, points: Tensor) -> Tensor:
        self.n += int(points.shape[0])
        return self.f(points)


@app.task(name="zoserve.fed.client_local", acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def client_local(job_id: str, r: int, i: int) -> dict[str, Any]:
    """Phase A on client i: T local steps from the broadcast (x̄, w̄); returns x_i."""

    def work(job: FedJob, f: _Counter) -> tuple[dict[str, Any], dict[str, Any]]:
        server = job.server()
        x = server["x"]
        state = job.client_state(i)
        if job.method == "fzoos":
            state = state or fz.client_init(job.x0(), i, job.spec.seed, job.params)
            if state["phase"] == "init":
                state = fz.client_run(state, job.params, f)
            elif state["phase"] != "ready":  # it missed the last refit: forget its stale weights
                state = {**state, "phase": "ready", "w_own": torch.zeros(0, dtype=torch.float64)}
            w = server.get("w")
            x_new, state, _ = fz.client_local_round(state, x, w, job.params, f)
        else:
            state = state or fb.zo_client_init(x.numel(), i, job.spec.seed)
            x_new, state, _ = fb.zo_local_round(state, x, r, job.params, f)
        return state, {"x": x_new.tolist(), "queries": f.n, "bytes": 2 * x.numel() * _B}

    return _client_task("local", job_id, r, i, work)


@app.task(name="zoserve.fed.client_check", acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def client_check(job_id: str, r: int, i: int) -> dict[str, Any]:
    """Phase C on client i: f_i(x̄) and (FZooS) the RFF weights refitted around x̄."""

    def work(job: FedJob, f: _Counter) -> tuple[dict[str, Any], dict[str, Any]]:
        mid = json.loads(job.r.get(_k(job.id, f"mid:{r}")))
        x_cand = torch.tensor(mid["x"], dtype=torch.float64)
        state = job.client_state(i)
        assert state is not None, "client state missing"
        if job.method == "fzoos":
            w, f_cand, state = fz.client_refit_round(state, x_cand, mid["rho"][str(i)], job.params, f)
            out = {"w": w.tolist() if w is not None else None, "f": f_cand}
            sent = (w.numel() if w is not None else 0) + 1
        else:
            f_cand, state, _ = fb.zo_check(state, x_cand, f)
            out, sent = {"w": None, "f": f_cand}, 1
        return state, {**out, "queries": f.n, "bytes": (x_cand.numel() + sent) * _B}

    return _client_task("check", job_id, r, i, work)


# ------------------------------------------------------------------ server steps
def _survivors(job: FedJob, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ok = [res for res in results if res.get("ok")]
    if not fz.survivors_ok(len(ok), job.n, job.params.max_failed_fraction):
        reasons = "; ".join(f"client {res['client']}: {res.get('error')}" for res in results if not res.get("ok"))
        raise RoundFailed(f"{job.n - len(ok)} of {job.n} clients failed: {reasons}"[:900])
    return ok


class RoundFailed(Exception):
    """Too many clients failed in a round."""


def _barrier(job_id: str, r: int, results: list[dict[str, Any]]) -> tuple[FedJob, list[dict[str, Any]] | str]:
    """A server step's prologue: the job, and its surviving clients' results — or why to stop."""
    job = FedJob(job_id)
    if (done := _stop_if_needed(job)) is not None:
        return job, done
    try:
        return job, _survivors(job, results)
    except RoundFailed as exc:
        return job, _fail(job, r, str(exc))


@app.task(name="zoserve.fed.server_mid", acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def server_mid(results: list[dict[str, Any]], job_id: str, r: int) -> str:
    """Barrier 1: average the clients' iterates, then ask every survivor for f_i(x̄) (+ refit)."""
    job, ok = _barrier(job_id, r, results)
    if isinstance(ok, str):
        return ok
    xs = [torch.tensor(res["x"], dtype=torch.float64) for res in ok]
    x_bar, _ = fz.server_aggregate(xs, None, [job.weights[res["client"]] for res in ok])
    rho = fz.server_radii(x_bar, xs)
    mid = {"x": x_bar.tolist(), "rho": {str(res["client"]): p for res, p in zip(ok, rho)}, "local": ok}
    job.r.set(_k(job.id, f"mid:{r}"), json.dumps(mid), nx=True)
    _phase(job, r, client_check, (res["client"] for res in ok), server_end)
    return "mid"


@app.task(name="zoserve.fed.server_end", acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def server_end(results: list[dict[str, Any]], job_id: str, r: int) -> str:
    """Barrier 2: average surrogate weights, score F(x̄), checkpoint the round, go on or finish."""
    job, ok = _barrier(job_id, r, results)
    if isinstance(ok, str):
        return ok
    mid = json.loads(job.r.get(_k(job.id, f"mid:{r}")))
    p = [job.weights[res["client"]] for res in ok]
    ws = [torch.tensor(res["w"], dtype=torch.float64) for res in ok if res["w"] is not None]
    server = job.server()
    accepted, f_cand = fz.server_accept([res["f"] for res in ok], p, server.get("f"))
    x_cand = torch.tensor(mid["x"], dtype=torch.float64)
    if len(ws) == len(ok) and ws:
        server["w"] = fz.server_aggregate(ws, None, p)[0]
    if accepted or not job.params.accept_test:
        server["x"], server["f"] = x_cand, f_cand
    round_queries = sum(res["queries"] for res in mid["local"]) + sum(res["queries"] for res in ok)
    round_bytes = sum(res["bytes"] for res in mid["local"]) + sum(res["bytes"] for res in ok)
    server.update(round=r, queries=int(server["queries"]) + round_queries, bytes=int(server["bytes"]) + round_bytes)
    if "best" not in server or f_cand < float(server["best"]):
        server["best"], server["x_best"] = f_cand, x_cand
    event = {"type": "progress", "time": datetime.now(timezone.utc).isoformat(), "step": r,
             "queries": int(server["queries"]), "failed_queries": 0, "evaluations": int(server["queries"]),
             "value": f_cand, "best_value": float(server["best"]),
             "extra": {"round_bytes": float(round_bytes), "round_queries": float(round_queries),
                       "failed_clients": float(job.n - len(ok)), "wall_s": time.time() - float(server.get("t_round", server["t0"])),
                       "workers": float(len({res.get("worker") for res in ok + mid["local"]}))}}
    server["t_round"] = time.time()
    max_rounds = min(job.spec.config.rounds, job.spec.budget.max_steps or math.inf)
    over = job.spec.budget.max_queries is not None and server["queries"] >= job.spec.budget.max_queries
    finished = r >= max_rounds or over
    events = [("progress", dumps(event))]
    hset = {"progress": dumps({k: event[k] for k in PROGRESS_KEYS})}
    if finished:
        reason = "max_queries reached" if over else f"{r} rounds done"
        result = Result(x_best=server["x_best"].tolist(), value_best=float(server["best"]), steps=r,
                        queries=int(server["queries"]), reason=reason)
        events.append(("result", event_json(ResultEvent(time=datetime.now(timezone.utc), result=result))))
        hset.update(status=JobStatus.succeeded.value, result=result.model_dump_json())
    if not _advance(job, r, server, events, hset):
        return "duplicate"
    if not finished:
        launch_round(job, r + 1)
    return "done" if finished else "next"


# KEYS: job, events, server   ARGV: expected round, new round, server bytes, hset json, then (type, json) pairs
_ADVANCE = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return -2 end
if redis.call('HGET', KEYS[1], 'fed_round') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'fed_round', ARGV[2])
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[1], k, v) end
redis.call('SET', KEYS[3], ARGV[3])
for i = 5, #ARGV, 2 do redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 'e', ARGV[i + 1]) end
return 0
"""


def _advance(job: FedJob, r: int, server: dict[str, Any], events: list[tuple[str, str]], hset: dict[str, str]) -> bool:
    """Compare-and-set the round counter and write the round's results in one script."""
    script = job.r.register_script(_ADVANCE)
    flat = [part for pair in events for part in pair]
    code = script(keys=[keys.job(job.id), keys.events(job.id), _k(job.id, "server")],
                  args=[str(r - 1), str(r), dump_state(server), json.dumps({**hset, "updated_at": _now()}), *flat])
    return int(code) == 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _stop_if_needed(job: FedJob) -> str | None:
    status, cancel = job.status()
    if status in ("succeeded", "failed", "cancelled"):
        return "terminal"
    if cancel:
        problem = Problem(type="urn:zoserve:job-cancelled", title="Job cancelled", status=409,
                          detail="The job was cancelled by its owner.", instance=f"/v1/jobs/{job.id}")
        _terminal(job, JobStatus.cancelled, problem)
        return "cancelled"
    return None


def _fail(job: FedJob, r: int, reason: str) -> str:
    problem = Problem(type="urn:zoserve:round-failed", title="Federated round failed", status=502,
                      detail=f"round {r}: {reason}", instance=f"/v1/jobs/{job.id}")
    _terminal(job, JobStatus.failed, problem)
    return "failed"


def _terminal(job: FedJob, status: JobStatus, problem: Problem) -> None:
    pipe = job.r.pipeline(transaction=True)
    pipe.hset(keys.job(job.id), mapping={"status": status.value, "error": problem.model_dump_json(), "updated_at": _now()})
    pipe.xadd(keys.events(job.id), {"t": "error", "e": error_event(problem, status)})
    pipe.execute()
