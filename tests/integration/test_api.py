"""API contract with the real stack: cancel, idempotency, problem details, SSE resume, pagination, answers."""

from __future__ import annotations

import httpx
import pytest

import zoserve
from tests.conftest import API_KEY, OTHER_KEY
from tests.support.stack import wait_until

SPEC = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 10},
        "budget": {"max_steps": 50}}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _http(api_url: str, key: str = API_KEY) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _sse(api_url: str, job_id: str, last_id: str | None = None) -> list[tuple[str, str]]:
    """(id, event type) pairs of a whole SSE stream, read raw."""
    headers = {**AUTH, **({"Last-Event-ID": last_id} if last_id else {})}
    out, cur = [], {}
    with httpx.stream("GET", f"{api_url}/v1/jobs/{job_id}/events", headers=headers, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                cur["id"] = line[4:]
            elif line.startswith("event: "):
                cur["event"] = line[7:]
            elif line == "" and "id" in cur:
                out.append((cur["id"], cur["event"]))
                cur = {}
    return out


def test_post_returns_201_location_and_problem_on_bad_input(api_url: str) -> None:
    with _http(api_url) as h:
        r = h.post("/v1/jobs", json=SPEC)
        assert r.status_code == 201 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        bad = h.post("/v1/jobs", json={**SPEC, "algorithm": "nope"})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        body = bad.json()
        assert body["status"] == 422 and body["title"] and "algorithm" in body["detail"] or "nope" in str(body)
        bad_budget = h.post("/v1/jobs", json={**SPEC, "budget": {}}).json()
        assert "max_queries or max_steps" in bad_budget["detail"]
        bad_x0 = h.post("/v1/jobs", json={**SPEC, "x0": [1.0, 2.0]}).json()
        assert "x0 has 2 entries" in bad_x0["detail"]
        missing = h.get("/v1/jobs/job_doesnotexist")
        assert missing.status_code == 404 and missing.json()["type"] == "urn:zoserve:not-found"
        assert h.get("/v1/jobs", params={"cursor": "!!"}).status_code == 422


def test_auth_and_tenancy(api_url: str) -> None:
    with _http(api_url) as a, _http(api_url, OTHER_KEY) as b:
        assert httpx.get(f"{api_url}/v1/jobs").status_code == 401
        job = a.post("/v1/jobs", json=SPEC).json()
        assert b.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert b.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
        assert b.get(f"/v1/jobs/{job['id']}/events", params={"after": "0"}).status_code == 404
        assert job["id"] not in [j["id"] for j in b.get("/v1/jobs").json()["items"]]


def test_idempotency_key(api_url: str) -> None:
    with _http(api_url) as h:
        first = h.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "abc-1"})
        again = h.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "abc-1"})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
        other = h.post("/v1/jobs", json={**SPEC, "seed": 3}, headers={"Idempotency-Key": "abc-1"})
        assert other.status_code == 422 and "different request body" in other.json()["detail"]
        # the other tenant's identical key is its own
        with _http(api_url, OTHER_KEY) as b:
            assert b.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "abc-1"}).json()["id"] != first.json()["id"]


def test_cancel_running_job_stops_promptly(client: zoserve.Client) -> None:
    job = client.jobs.create({**SPEC, "budget": {"max_steps": 10_000_000}})
    wait_until(lambda: client.jobs.get(job.id).progress.step > 5)
    client.jobs.cancel(job.id)
    events = list(job.stream())
    assert events[-1].type == "error" and events[-1].status.value == "cancelled"
    final = client.jobs.get(job.id)
    assert final.status.value == "cancelled"
    with pytest.raises(zoserve.JobFailed):
        job.wait()


def test_cancel_queued_job_never_starts(client: zoserve.Client, api_url: str) -> None:
    # a client-objective job waits; a queued job behind nothing — cancel both before any worker step
    job = client.jobs.create({**SPEC, "objective": {"kind": "client", "dim": 10}})
    wait_until(lambda: client.jobs.get(job.id).status.value == "waiting")
    client.jobs.cancel(job.id)
    assert client.jobs.get(job.id).status.value == "cancelled"
    with pytest.raises(zoserve.Conflict):
        client.jobs.answer(job.id, "q1", values=[0.0] * 11)


def test_sse_resume_from_last_event_id_loses_and_repeats_nothing(client: zoserve.Client, api_url: str) -> None:
    job = client.jobs.create({**SPEC, "budget": {"max_steps": 120}})
    client.jobs.wait(job.id)
    full = _sse(api_url, job.id)
    cut = len(full) // 2
    resumed = _sse(api_url, job.id, last_id=full[cut - 1][0])
    assert full[:cut] + resumed == full
    assert full[-1][1] == "result" and len({i for i, _ in full}) == len(full)
    page = client.jobs.poll_events(job.id, after=full[cut - 1][0], limit=10_000)
    assert [e.id for e in page.items] == [i for i, _ in resumed] and page.done


def test_list_filters_and_paginates(client: zoserve.Client) -> None:
    ids = [client.jobs.create({**SPEC, "budget": {"max_steps": 5}, "name": f"page-{i}"}).id for i in range(5)]
    for i in ids:
        client.jobs.wait(i)
    seen, cursor = [], None
    while True:
        page = client.jobs.list(status="succeeded", limit=2, cursor=cursor)
        seen += [j.id for j in page.items]
        assert all(j.status.value == "succeeded" for j in page.items)
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert [i for i in seen if i in ids] == ids[::-1]  # newest first, each once
    assert len(seen) == len(set(seen))


def test_pending_queries_and_stale_or_duplicate_answers(client: zoserve.Client) -> None:
    job = client.jobs.create({**SPEC, "objective": {"kind": "client", "dim": 10}, "budget": {"max_steps": 2}})
    q = wait_until(lambda: client.jobs.queries(job.id, "pending"))[0]
    assert q.kind == "values" and len(q.points) == 11  # forward RGE: base point + q=10 directions
    with pytest.raises(zoserve.Unprocessable):
        client.jobs.answer(job.id, q.id, values=[1.0])
    client.jobs.answer(job.id, q.id, values=[float(sum(x * x for x in p)) for p in q.points])
    with pytest.raises(zoserve.Conflict):
        client.jobs.answer(job.id, q.id, values=[0.0] * 11)
    q2 = wait_until(lambda: [p for p in client.jobs.queries(job.id, "pending") if p.id != q.id])[0]
    assert q2.step == 2
    assert [p.id for p in client.jobs.queries(job.id, "answered")] == [q.id]
    with pytest.raises(zoserve.NotFound):
        client.jobs.answer(job.id, "q999", values=[0.0])


def test_health_and_readiness(api_url: str) -> None:
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_url}/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] >= 1
