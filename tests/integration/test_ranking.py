"""ZO-RankSGD through the service: builtin oracle, a program ranking via serve, a human that waits."""

from __future__ import annotations

import torch
from fastapi import FastAPI, Request

import zoserve
from tests.support.model_server import serve
from tests.support.stack import wait_until
from workers.objectives.builtin import sphere

RANK = {"algorithm": "zo-ranksgd", "seed": 3,
        "objective": {"kind": "ranking", "oracle": "builtin", "function": "sphere", "dim": 100, "m": 10, "k": 5, "x0": 1.0},
        "budget": {"max_queries": 3000}}


def test_builtin_oracle_job_reaches_small_f(client: zoserve.Client) -> None:
    job = client.jobs.create(RANK).wait()
    assert job.result is not None
    x = torch.tensor(job.result.x_best, dtype=torch.float64)
    assert float(sphere(x)) < 0.1, float(sphere(x))
    assert job.progress.queries == 3000  # one per oracle call
    assert job.progress.evaluations > job.progress.queries  # candidates shown
    assert job.progress.value is not None and job.progress.value < 0.1  # monitored true f, never told


def test_program_ranking_via_serve_matches_builtin(client: zoserve.Client) -> None:
    spec = {**RANK, "budget": {"max_queries": 40}}
    builtin = client.jobs.create(spec).wait()
    served = client.jobs.create({**spec, "objective": {**spec["objective"], "oracle": "client", "function": None}})

    def rank(candidates: list[dict]) -> list[str]:
        scored = sorted(candidates, key=lambda c: float(sphere(torch.tensor(c["point"], dtype=torch.float64))))
        return [c["id"] for c in scored]

    out = client.jobs.serve(served.id, rank)
    assert out.status.value == "succeeded" and out.result is not None and builtin.result is not None
    assert out.result.x_best == builtin.result.x_best  # same iterates for the same seed


def test_human_job_waits_without_holding_a_worker(client: zoserve.Client) -> None:
    human = client.jobs.create({**RANK, "objective": {**RANK["objective"], "oracle": "human", "function": None},
                                "budget": {"max_queries": 3}})
    q = wait_until(lambda: client.jobs.queries(human.id, "pending"))[0]
    assert client.jobs.get(human.id).status.value == "waiting"
    assert q.kind == "ranking" and q.k == 5 and len(q.candidates) == 10
    assert sorted(c["id"] for c in q.candidates) == list("ABCDEFGHIJ")
    # the worker is free: another job runs to completion while the human thinks
    other = client.jobs.create({"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 5},
                                "budget": {"max_steps": 20}}).wait()
    assert other.status.value == "succeeded"
    with __import__("pytest").raises(zoserve.Unprocessable):
        client.jobs.answer(human.id, q.id, ranking=["A", "B"])  # k = 5 needed
    ids = [c["id"] for c in q.candidates]
    client.jobs.answer(human.id, q.id, ranking=ids[:5])
    nxt = wait_until(lambda: [p for p in client.jobs.queries(human.id, "pending") if p.id != q.id])[0]
    assert nxt.step == 2


def test_endpoint_oracle_ranks_by_a_scoring_service(client: zoserve.Client) -> None:
    """A reward service on 127.0.0.1 scores candidates (higher is better); secrets never echo."""
    app = FastAPI()
    seen: list[str] = []

    @app.post("/score")
    async def score(request: Request) -> dict:
        seen.append(request.headers.get("authorization", ""))
        rows = (await request.json())["inputs"]
        return {"outputs": [-float(sum(v * v for v in r)) for r in rows]}  # reward = −‖x‖²

    with serve(app) as server:
        spec = {**RANK, "objective": {"kind": "ranking", "oracle": "endpoint", "url": server.url + "/score",
                                      "headers": {"Authorization": "Bearer reward-secret"}, "dim": 100, "m": 10, "k": 5,
                                      "x0": 1.0}, "budget": {"max_queries": 300}}
        job = client.jobs.create(spec)
        assert job.spec["objective"]["headers"] == {"Authorization": "**********"}
        done = job.wait()
    assert seen and all(h == "Bearer reward-secret" for h in seen)
    x = torch.tensor(done.result.x_best, dtype=torch.float64)
    assert float(sphere(x)) < 50.0  # from 100, by rankings of a reward model alone
    assert done.progress.queries == 300
