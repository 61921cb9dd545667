"""Candidate PNGs and rater links over plain HTTP (no browser needed)."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

import zoserve
from service.web.render import HEIGHT, RENDERERS, WIDTH, etag, render_png
from tests.conftest import API_KEY, OTHER_KEY
from tests.support.stack import wait_until
from zoserve.cli import DEMO_SUNSET

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("render", RENDERERS)
def test_renderers_draw_distinct_deterministic_pngs(render: str) -> None:
    a, b = [0.0] * 8, [1.5, -1.0, 0.5, 2.0, -2.0, 1.0, 0.0, -0.5]
    png = render_png(render, a)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (WIDTH, HEIGHT)
    assert png == render_png(render, a) and png != render_png(render, b)
    assert len(set(img.convert("RGB").getdata())) > 3  # not a blank canvas
    assert etag(render, a) == etag(render, list(a)) != etag(render, b)


def test_long_vectors_are_binned() -> None:
    png = render_png("vector", [float(i % 7) for i in range(100_000)])
    assert Image.open(io.BytesIO(png)).size == (WIDTH, HEIGHT)


def _human_job(client: zoserve.Client) -> tuple[str, dict]:
    job = client.jobs.create({**DEMO_SUNSET, "budget": {"max_queries": 4}})
    q = wait_until(lambda: client.jobs.queries(job.id, "pending"))[0]
    return job.id, q.model_dump()


def test_candidate_png_is_cached_and_tenant_checked(client: zoserve.Client, api_url: str) -> None:
    job_id, q = _human_job(client)
    url = f"{api_url}/v1/jobs/{job_id}/queries/{q['id']}/candidates/{q['candidates'][0]['id']}.png"
    r = httpx.get(url, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "immutable" in r.headers["cache-control"] and r.headers["etag"] == etag("image", q["candidates"][0]["point"])
    assert Image.open(io.BytesIO(r.content)).size == (WIDTH, HEIGHT)
    again = httpx.get(url, headers={**AUTH, "If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert httpx.get(url, headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 404
    assert httpx.get(url.rsplit("/", 1)[0] + "/Z9.png", headers=AUTH).status_code == 404
    answer = f"{api_url}/v1/jobs/{job_id}/queries/{q['id']}/answer"
    assert httpx.get(answer, headers=AUTH).status_code == 404  # not answered yet
    client.jobs.answer(job_id, q["id"], ranking=[c["id"] for c in q["candidates"][:2]])
    assert httpx.get(answer, headers=AUTH).json() == {"ranking": [c["id"] for c in q["candidates"][:2]]}


def test_rater_links_expire_are_owner_only_and_for_human_rankings(client: zoserve.Client, api_url: str) -> None:
    job_id, q = _human_job(client)
    links = f"{api_url}/v1/jobs/{job_id}/rater-links"
    assert httpx.post(links, headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 404
    short = httpx.post(links, headers=AUTH, json={"expires_in_days": 1e-5})  # ~1 s
    assert short.status_code == 201
    link = short.json()
    assert link["token"].startswith("rater_") and link["url"].endswith(f"/ui/r/{link['token']}")
    rater = {"Authorization": f"Bearer {link['token']}"}
    assert httpx.get(f"{api_url}/v1/jobs/{job_id}/queries", headers=rater).status_code == 200
    assert [x["id"] for x in httpx.get(links, headers=AUTH).json()["items"]] == [link["id"]]
    assert "token" not in httpx.get(links, headers=AUTH).json()["items"][0]
    time.sleep(1.3)
    assert httpx.get(f"{api_url}/v1/jobs/{job_id}/queries", headers=rater).status_code == 401
    assert httpx.get(links, headers=AUTH).json()["items"] == []
    assert httpx.get(f"{api_url}/ui/r/{link['token']}").status_code == 404
    assert httpx.delete(f"{links}/rl_nope", headers=AUTH).status_code == 404
    builtin = client.jobs.create({"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 3},
                                  "budget": {"max_steps": 5}})
    refused = httpx.post(f"{api_url}/v1/jobs/{builtin.id}/rater-links", headers=AUTH)
    assert refused.status_code == 422 and "ranking jobs" in refused.json()["detail"]


def test_pages_are_served_with_a_strict_policy(api_url: str) -> None:
    for path in ("/ui/", "/ui/jobs/job_x", "/ui/jobs/job_x/rank"):
        r = httpx.get(api_url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"] and r.headers["referrer-policy"] == "no-referrer"
        assert "http://" not in r.text and "https://" not in r.text  # nothing from a CDN
    assert httpx.get(f"{api_url}/ui/r/rater_unknown").status_code == 404
    js = httpx.get(f"{api_url}/ui/static/rank.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{api_url}/ui/static/rank.js", headers={"If-None-Match": js.headers["etag"]}).status_code == 304
    assert httpx.get(f"{api_url}/ui/static/..%2Fpages.py").status_code == 404
