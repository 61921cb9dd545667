"""Tenant B cannot read, cancel, answer, stream or list tenant A's things, through every route.

The routes come from the app itself, so a new route is covered by default: a tenant route whose
path names a parameter this test cannot fill with one of A's ids fails the test until it can.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.routing import iter_route_contexts

from service import keys

from service.api.deps import get_tenant, require_admin
from service.embedded import EmbeddedRedis
from service.settings import Settings
from tests.conftest import API_KEY, OTHER_KEY
from tests.support.stack import wait_until

SECRET = "SECRET-A"  # in the names of A's things: no response to B may contain it


def _calls(dependant: Any) -> Iterator[Any]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


def routes(settings: Settings) -> list[tuple[str, str, str]]:
    """(kind, method, path) of every route; kind is tenant, admin or public."""
    from service.app import create_app

    out = []
    for route in iter_route_contexts(create_app(settings).routes):
        dependant = getattr(route, "dependant", None)
        calls = set(_calls(dependant)) if dependant is not None else set()
        kind = "admin" if require_admin in calls else "tenant" if get_tenant in calls else "public"
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((kind, method, route.path))
    return out


@pytest.fixture(scope="module")
def a_things(api_url: str, redis_server: EmbeddedRedis) -> dict[str, str]:
    """A's job (ranking, one query answered), its query and candidate, an artifact, a dataset and a rater link."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as a:
        job = a.post("/v1/jobs", json={"algorithm": "zo-ranksgd", "name": f"{SECRET}-rank",
                                       "objective": {"kind": "ranking", "oracle": "human", "dim": 4, "m": 4, "k": 2},
                                       "budget": {"max_steps": 3}}).json()
        q = wait_until(lambda: a.get(f"/v1/jobs/{job['id']}/queries", params={"status": "pending"}).json()["items"],
                       timeout=30)[0]
        ranking = [c["id"] for c in q["candidates"]]
        assert a.post(f"/v1/jobs/{job['id']}/queries/{q['id']}/answer", json={"ranking": ranking}).status_code == 202
        buf = io.BytesIO()
        np.savez(buf, X=np.random.default_rng(0).normal(size=(20, 3)), y=np.arange(20) % 2)
        ds = a.post("/v1/datasets", params={"name": f"{SECRET}-data"}, content=buf.getvalue(),
                    headers={"Content-Type": "application/octet-stream"}).json()
        link = a.post(f"/v1/jobs/{job['id']}/rater-links", json={}).json()
        artifact = "tenancy-probe.json"  # stored the way workers store artifacts (this job makes none)
        redis.Redis.from_url(redis_server.url).hset(keys.artifact(job["id"], artifact),
                                                    mapping={"data": b'{"secret": "' + SECRET.encode() + b'"}',
                                                             "media_type": "application/json"})
        return {"job_id": job["id"], "query_id": q["id"], "candidate_id": ranking[0], "dataset_id": ds["id"],
                "link_id": link["id"], "name": artifact, "_ranking": ranking}  # type: ignore[dict-item]


def _request(api_url: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, str]:
    """Status and (start of the) body; streams are read only briefly, so an SSE 200 cannot hang the test."""
    headers = {"Authorization": f"Bearer {key}", "Last-Event-ID": "0-0"}
    with httpx.stream(method, api_url + path, headers=headers, json=body, timeout=10) as r:
        text = ""
        for chunk in r.iter_text():
            text += chunk
            if len(text) > 20_000 or r.headers.get("content-type", "").startswith("text/event-stream"):
                break
        return r.status_code, text


def test_tenant_b_reaches_nothing_of_tenant_a(api_url: str, settings: Settings, a_things: dict[str, Any]) -> None:
    ids = {k: v for k, v in a_things.items() if not k.startswith("_")}
    bodies = {"/answer": {"ranking": a_things["_ranking"]}, "/rater-links": {}}
    unknown, leaks, checked = [], [], []
    for kind, method, path in routes(settings):
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        params = [p.removesuffix("}.png") for p in params]
        if kind == "tenant" and not params:
            if method == "GET":  # lists: B sees only its own
                status, text = _request(api_url, OTHER_KEY, method, path)
                if status // 100 != 2 or SECRET in text or any(v in text for v in ids.values()):
                    leaks.append((method, path, status))
                checked.append((method, path))
            continue  # creating: B makes its own things
        missing = [p for p in params if p not in ids and kind == "tenant"]
        if missing:
            unknown.append((method, path, missing))
            continue
        filled = path
        for p in params:
            filled = filled.replace("{" + p + "}", ids.get(p, "not-an-id"))
        body = next((b for suffix, b in bodies.items() if path.endswith(suffix)), None) if method == "POST" else None
        status, text = _request(api_url, OTHER_KEY, method, filled, body)
        expected = {"tenant": {404}, "admin": {401, 403}}.get(kind)
        if (expected and status not in expected) or (status // 100 == 2 and kind != "public") or SECRET in text:
            leaks.append((method, filled, status, text[:120]))
        if kind == "tenant" and method == "GET":  # the ids are real: A itself gets them
            a_status, _ = _request(api_url, API_KEY, method, filled)
            if a_status // 100 != 2:
                leaks.append(("A cannot", method, filled, a_status))
        checked.append((method, path))
    print(f"\ntenancy: checked {len(checked)} routes as tenant B")
    assert not unknown, f"teach this test an id of A's for these path parameters: {unknown}"
    assert not leaks, leaks
    assert any("/events" in p for _, p in checked) and any("/answer" in p for _, p in checked)
    # and A's job still stands, untouched by B's attempts (cancel, answer, revoke)
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as a:
        job = a.get(f"/v1/jobs/{ids['job_id']}").json()
        assert job["status"] in ("queued", "running", "waiting") and not job.get("error")
        assert [link["id"] for link in a.get(f"/v1/jobs/{ids['job_id']}/rater-links").json()["items"]] == [ids["link_id"]]
        assert a.get(f"/v1/datasets/{ids['dataset_id']}").status_code == 200
