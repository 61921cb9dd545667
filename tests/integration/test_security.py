"""Runtime API keys, rate limits, quotas, caps and body limits, against a real API on its own Redis.

No worker consumes this Redis, so every job stays ``queued`` (in flight) until cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from service.embedded import EmbeddedRedis
from service.settings import Settings
from tests.support.stack import serve_app

ADMIN, STATIC = "admin-secret-key", "static-key-a"
SPEC = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 4},
        "budget": {"max_steps": 5}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, redis.Redis]]:
    from service.app import create_app

    with EmbeddedRedis(tmp_path_factory.mktemp("sec-redis")) as server:
        settings = Settings(redis_url=server.url, data_dir=tmp_path_factory.mktemp("sec-data"),
                            api_keys={STATIC: "tenant-a"}, admin_key=ADMIN, rate_limit_per_second=5,
                            rate_limit_burst=5, max_jobs_in_flight=2, max_queries_per_job=1000, max_body_bytes=4096,
                            max_dim=100)
        with serve_app(create_app(settings)) as url:
            yield url, redis.Redis.from_url(server.url)


def _h(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _call(url: str, method: str, path: str, key: str | None, **kw: object) -> httpx.Response:
    """One request; waits out a 429 from this module's tight rate limit (except where a test wants it)."""
    for _ in range(20):
        r = httpx.request(method, url + path, headers=_h(key), timeout=10, **kw)  # type: ignore[arg-type]
        if r.status_code != 429 or "rate limit" not in r.text:
            return r
        time.sleep(int(r.headers["retry-after"]))
    raise AssertionError("still rate limited")


def test_admin_creates_lists_and_revokes_keys(stack: tuple[str, redis.Redis]) -> None:
    url, r = stack
    assert _call(url, "POST", "/v1/keys", None, json={"tenant": "t-new"}).status_code == 401
    denied = _call(url, "POST", "/v1/keys", STATIC, json={"tenant": "t-new"})
    assert denied.status_code == 403 and denied.headers["content-type"] == "application/problem+json"
    made = _call(url, "POST", "/v1/keys", ADMIN, json={"tenant": "t-new", "name": "ci bot"})
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    assert made.headers["location"] == f"/v1/keys/{key_id}"
    assert _call(url, "GET", "/v1/jobs", key).status_code == 200
    job = _call(url, "POST", "/v1/jobs", key, json=SPEC).json()
    assert _call(url, "GET", f"/v1/jobs/{job['id']}", STATIC).status_code == 404  # tenant-a cannot see t-new's job
    listed = _call(url, "GET", "/v1/keys", ADMIN)
    assert listed.status_code == 200 and key not in listed.text
    mine = [k for k in listed.json()["items"] if k["id"] == key_id]
    assert mine and mine[0]["tenant"] == "t-new" and mine[0]["revoked_at"] is None and "key" not in mine[0]
    for k in r.scan_iter(count=1000):  # the clear key is nowhere in Redis
        kind = r.type(k).decode()
        values = ([r.get(k)] if kind == "string" else list(r.hgetall(k).values()) if kind == "hash" else [])
        assert all(key.encode() not in (v or b"") for v in values), k
    revoked = _call(url, "DELETE", f"/v1/keys/{key_id}", ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert _call(url, "GET", "/v1/jobs", key).status_code == 401  # at once
    assert _call(url, "DELETE", "/v1/keys/key_nope", ADMIN).status_code == 404
    assert _call(url, "POST", f"/v1/jobs/{job['id']}/cancel", STATIC).status_code == 404


def test_rate_limit_is_per_key_with_retry_after(stack: tuple[str, redis.Redis]) -> None:
    url, _ = stack
    other = _call(url, "POST", "/v1/keys", ADMIN, json={"tenant": "t-rate"}).json()["key"]
    time.sleep(1.2)  # a full bucket (5 tokens) for STATIC
    codes = [httpx.get(f"{url}/v1/jobs", headers=_h(STATIC), timeout=10) for _ in range(8)]
    limited = [c for c in codes if c.status_code == 429]
    assert [c.status_code for c in codes[:5]] == [200] * 5 and limited, [c.status_code for c in codes]
    problem = limited[0]
    assert problem.headers["content-type"] == "application/problem+json"
    assert int(problem.headers["retry-after"]) >= 1 and problem.json()["retry_after"] >= 1
    assert httpx.get(f"{url}/v1/jobs", headers=_h(other), timeout=10).status_code == 200  # another key's bucket
    time.sleep(int(problem.headers["retry-after"]))
    assert httpx.get(f"{url}/v1/jobs", headers=_h(STATIC), timeout=10).status_code == 200


def test_jobs_in_flight_quota_and_query_cap(stack: tuple[str, redis.Redis]) -> None:
    url, _ = stack
    key = _call(url, "POST", "/v1/keys", ADMIN, json={"tenant": "t-quota"}).json()["key"]
    first = _call(url, "POST", "/v1/jobs", key, json=SPEC)
    assert first.status_code == 201
    assert first.json()["spec"]["budget"]["max_queries"] == 1000  # the server's cap, recorded in the spec
    second = httpx.post(f"{url}/v1/jobs", json=SPEC, headers={**_h(key), "Idempotency-Key": "q-2"}, timeout=10)
    assert second.status_code == 201
    third = httpx.post(f"{url}/v1/jobs", json=SPEC, headers=_h(key), timeout=10)
    assert third.status_code == 429 and "2 jobs in flight" in third.json()["detail"]
    assert int(third.headers["retry-after"]) >= 1
    replay = httpx.post(f"{url}/v1/jobs", json=SPEC, headers={**_h(key), "Idempotency-Key": "q-2"}, timeout=10)
    assert replay.status_code == 201 and replay.json()["id"] == second.json()["id"]  # a replay is not a new job
    assert _call(url, "POST", f"/v1/jobs/{first.json()['id']}/cancel", key).json()["status"] == "cancelled"
    assert _call(url, "POST", "/v1/jobs", key, json=SPEC).status_code == 201  # room again
    too_many = _call(url, "POST", "/v1/jobs", key, json={**SPEC, "budget": {"max_queries": 5000}})
    assert too_many.status_code == 422 and "limit of 1000" in too_many.json()["detail"]
    too_big = _call(url, "POST", "/v1/jobs", key, json={**SPEC, "objective": {**SPEC["objective"], "dim": 101}})
    assert too_big.status_code == 422 and "limit of 100" in too_big.json()["detail"]


def test_body_limit_declared_and_chunked(stack: tuple[str, redis.Redis]) -> None:
    url, _ = stack
    big = {**SPEC, "name": "x" * 100, "x0": [0.5] * 1000}
    r = _call(url, "POST", "/v1/jobs", STATIC, json=big)
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert "4096 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    chunked = _call(url, "POST", "/v1/jobs", STATIC, content=chunks())
    assert chunked.status_code == 413 and chunked.json()["type"] == "urn:zoserve:too-large"


def test_every_request_string_is_bounded() -> None:
    """Every string a client can send in a body or query (openapi.yaml) has a maxLength, an enum or a const."""
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "openapi.yaml").read_text())
    comps = spec["components"]["schemas"]
    unbounded: set[str] = set()

    def walk(node: object, where: str, seen: frozenset[str]) -> None:
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(comps[name], name, seen | {name})
            return
        if node.get("type") == "string" and node.get("format") != "binary" and not {"maxLength", "enum", "const"} & node.keys():
            unbounded.add(where)
        for k in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(k, []):
                walk(sub, where, seen)
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{where}.{name}", seen)
        for k, suffix in (("items", "[]"), ("additionalProperties", "{}"), ("propertyNames", "<key>")):
            walk(node.get(k), where + suffix, seen)

    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                if p["in"] != "path":  # path segments are bounded by the server's request-line limit
                    walk(p["schema"], f"{method} {path} ?{p['name']}", frozenset())
            for c in op.get("requestBody", {}).get("content", {}).values():
                walk(c["schema"], f"{method} {path} body", frozenset())
    assert not unbounded, sorted(unbounded)
