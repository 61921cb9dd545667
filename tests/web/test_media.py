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


def _drawn_job(client: zoserve.Client, url: str, **budget: int) -> zoserve.Job:
    return client.jobs.create({"algorithm": "zo-ranksgd", "seed": 5, "budget": budget or {"max_queries": 2},
                               "objective": {"kind": "ranking", "oracle": "human", "dim": 6, "m": 4, "k": 2,
                                             "render": "endpoint", "render_url": url,
                                             "render_headers": {"X-Api-Key": "draw-secret"}}})


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_endpoint_renderer_shows_what_the_users_generator_drew(client: zoserve.Client, api_url: str, fmt: str) -> None:
    """The worker POSTs each candidate to the user's generator when it asks the query; the API serves
    those very bytes (cached, tenant-checked), and the generator's secret header is never echoed."""
    from tests.support.model_server import draw, serve

    with serve() as server:
        job = _drawn_job(client, f"{server.url}/draw?format={fmt}")
        assert job.spec["objective"]["render_headers"] == {"X-Api-Key": "**********"}
        q = wait_until(lambda: client.jobs.queries(job.id, "pending"))[0]
        assert server.app.state.calls["draw"] == 4  # drawn once, when asked; the API never calls it
        for c in q.candidates:
            url = f"{api_url}/v1/jobs/{job.id}/queries/{q.id}/candidates/{c['id']}.png"
            r = httpx.get(url, headers=AUTH)
            assert r.status_code == 200 and r.headers["content-type"] == f"image/{fmt}"
            assert r.content == draw(c["point"], fmt) and Image.open(io.BytesIO(r.content)).size == (32, 32)
            assert httpx.get(url, headers={**AUTH, "If-None-Match": r.headers["etag"]}).status_code == 304
            assert httpx.get(url, headers={"Authorization": f"Bearer {OTHER_KEY}"}).status_code == 404
        client.jobs.answer(job.id, q.id, ranking=[c["id"] for c in q.candidates[:2]])
        nxt = wait_until(lambda: [p for p in client.jobs.queries(job.id, "pending") if p.id != q.id])[0]
        assert server.app.state.calls["draw"] == 4 + len(nxt.candidates)  # each query drawn once, whatever its size


@pytest.mark.parametrize(("route", "reason"), [("/draw?format=text", "not a PNG, JPEG or WebP image"),
                                               ("/draw?format=huge", "(at most 4194304)")])
def test_a_generator_that_draws_no_image_fails_the_job_with_the_reason(
        client: zoserve.Client, route: str, reason: str) -> None:
    from tests.support.model_server import serve

    with serve() as server:
        job = _drawn_job(client, server.url + route)
        with pytest.raises(zoserve.JobFailed) as failed:
            job.wait()
    assert reason in failed.value.problem.detail and "render endpoint http://127.0.0.1" in failed.value.problem.detail


def test_a_generator_on_a_metadata_address_is_refused(client: zoserve.Client) -> None:
    with pytest.raises(zoserve.JobFailed) as failed:
        _drawn_job(client, "http://169.254.169.254/latest/draw").wait()
    assert "169.254.169.254" in failed.value.problem.detail


def test_endpoint_render_needs_its_url_and_a_person_to_look(api_url: str) -> None:
    base = {"kind": "ranking", "oracle": "human", "dim": 3}
    for objective in ({**base, "render": "endpoint"}, {**base, "render_url": "http://127.0.0.1:9/draw"},
                      {**base, "oracle": "builtin", "function": "sphere", "render": "endpoint",
                       "render_url": "http://127.0.0.1:9/draw"},
                      {**base, "render": "endpoint", "render_url": "http://127.0.0.1:9/draw", "render_headers": {"Host": "x"}}):
        r = httpx.post(f"{api_url}/v1/jobs", headers=AUTH,
                       json={"algorithm": "zo-ranksgd", "objective": objective, "budget": {"max_queries": 2}})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", objective
