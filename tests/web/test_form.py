"""The ranking form and the dashboard in headless Chromium (Debian's ``chromium`` driven by Playwright).

A person ranks rounds of ``zoserve up --demo``'s sunset job by clicking, by keyboard and by
drag and drop; a rater link opens only its job's form; the form survives the API restarting
mid-round; a double submit counts once. Screenshots go to ``test-output/web-*.png``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import zoserve
from service.embedded import free_port
from service.settings import Settings
from service.web.scene import params
from tests.conftest import API_KEY, OTHER_KEY, OUT
from tests.support.stack import serve_app, wait_until
from zoserve.cli import DEMO_SUNSET

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (pip install playwright)"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def open_page(browser: Any, api_url: str) -> Iterator[Any]:
    """``open_page(key=API_KEY, base=api_url)``: a fresh browser context; fails the test on page errors."""
    contexts, errors = [], []

    def _open(key: str | None = API_KEY, base: str = api_url) -> Any:
        ctx = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(TIMEOUT_MS)
        if key:
            ctx.add_init_script(f"sessionStorage.setItem('zoserve.apiKey', {key!r})")
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        contexts.append(ctx)
        return page

    yield _open
    for ctx in contexts:
        ctx.close()
    assert not errors, errors


def sunset_job(client: zoserve.Client, max_queries: int = 12) -> str:
    return client.jobs.create({**DEMO_SUNSET, "budget": {"max_queries": max_queries}}).id


def pending(client: zoserve.Client, job_id: str, step: int) -> Any:
    """The job's pending ranking query of round ``step`` (waits for the worker to publish it)."""
    return wait_until(lambda: next((q for q in client.jobs.queries(job_id, "pending") if q.step == step), None))


def warmest(query: Any) -> list[str]:
    """The person's taste: warm sky and glow, a big low warm sun, warm sea (scene.py's parameters)."""
    def warmth(c: dict[str, Any]) -> float:
        p = params(c["point"])
        return float(p[0] + p[1] - p[2] + 0.5 * p[3] + p[4] + p[7])

    return [c["id"] for c in sorted(query.candidates, key=warmth, reverse=True)][: query.k]


def key_of(query: Any, cid: str) -> str:
    return str([c["id"] for c in query.candidates].index(cid) + 1)


def wait_images(page: Any) -> None:
    page.wait_for_function("() => { const i = [...document.querySelectorAll('#grid img')];"
                           " return i.length > 0 && i.every((x) => x.complete && x.naturalWidth > 0); }")


def expect_round(page: Any, step: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#round")).to_have_text(f"Round {step}", timeout=TIMEOUT_MS)


def events(api_url: str, job_id: str, key: str = API_KEY) -> list[dict[str, Any]]:
    r = httpx.get(f"{api_url}/v1/jobs/{job_id}/events", params={"after": "0"}, headers={"Authorization": f"Bearer {key}"})
    return list(r.json()["items"])


def test_person_ranks_five_rounds_by_click_keyboard_and_drag(client: zoserve.Client, api_url: str, open_page: Any) -> None:
    from playwright.sync_api import expect

    job_id = sunset_job(client)
    page = open_page()
    page.goto(f"/ui/jobs/{job_id}/rank")
    chosen: list[tuple[str, list[str]]] = []
    for step, how in enumerate(["click", "keys", "drag", "keys", "click"], start=1):
        q = pending(client, job_id, step)
        expect_round(page, step)
        wait_images(page)
        expect(page.locator("#grid .cand")).to_have_count(len(q.candidates))
        want = warmest(q)
        if how == "click":
            wrong = next(c["id"] for c in q.candidates if c["id"] not in want)
            page.click(f"#cand-{wrong}")
            expect(page.locator(f"#cand-{wrong} .rankno")).to_have_text("1")
            page.click("#undo")  # undo before submit
            expect(page.locator(f"#cand-{wrong}")).to_have_attribute("aria-pressed", "false")
            for cid in want:
                page.click(f"#cand-{cid}")
        elif how == "keys":
            page.keyboard.press(key_of(q, next(c["id"] for c in q.candidates if c["id"] not in want)))
            page.keyboard.press("Backspace")
            for cid in want:
                page.keyboard.press(key_of(q, cid))
        else:
            for slot, cid in enumerate(want):
                page.drag_and_drop(f"#cand-{cid}", f"#tray .slot[data-slot='{slot}']")
        for i, cid in enumerate(want):
            expect(page.locator(f"#cand-{cid} .rankno")).to_have_text(str(i + 1))
        expect(page.locator("#grid .cand.picked")).to_have_count(len(want))
        expect(page.locator("#left")).to_have_text(f"{12 - step + 1} queries left")
        if step == 5:
            page.screenshot(path=str(OUT / "web-form.png"), full_page=True)
        if how == "keys":
            page.keyboard.press("Enter")
        else:
            page.click("#submit")
        chosen.append((q.id, want))
    expect_round(page, 6)
    expect(page.locator("#strip li")).to_have_count(5)

    job = wait_until(lambda: (j := client.jobs.get(job_id)).progress.step == 5 and j)
    assert job.status.value == "waiting" and job.progress.queries == 5
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for qid, want in chosen:  # the server recorded exactly what the person chose
        stored = httpx.get(f"{api_url}/v1/jobs/{job_id}/queries/{qid}/answer", headers=auth).json()
        assert stored == {"ranking": want}
    evs = events(api_url, job_id)
    assert [e["step"] for e in evs if e["type"] == "progress"] == [1, 2, 3, 4, 5]
    assert [e["query_id"] for e in evs if e["type"] == "query"] == [qid for qid, _ in chosen] + ["q6"]
    received = [e for e in evs if e["type"] == "status" and e.get("reason") == "answer received"]
    assert len(received) == 5
    strip = page.locator("#strip li img").evaluate_all("(imgs) => imgs.map((i) => i.alt)")
    assert strip == [f"Round {s}: candidate {w[0]}" for s, (_, w) in enumerate(chosen, start=1)]
    page.goto(f"/ui/jobs/{job_id}")  # no values for a human oracle: the plot shows the line-search win-rate
    expect(page.locator("#plot svg path.series-rate")).to_have_count(1)
    expect(page.locator("#rank-link")).to_be_visible()
    page.screenshot(path=str(OUT / "web-job-ranking.png"), full_page=True)


def test_form_shows_the_pictures_the_users_generator_drew(client: zoserve.Client, api_url: str, open_page: Any) -> None:
    """render='endpoint': the form's images are the ones the generator returned (32x32 here, where the
    built-in renderers draw larger), and a person ranks them like any others."""
    from playwright.sync_api import expect

    from tests.support.model_server import serve

    with serve() as server:
        job = client.jobs.create({"algorithm": "zo-ranksgd", "seed": 2, "budget": {"max_queries": 3},
                                  "objective": {"kind": "ranking", "oracle": "human", "dim": 6, "m": 4, "k": 1,
                                                "render": "endpoint", "render_url": server.url + "/draw"}})
        q = pending(client, job.id, 1)
        page = open_page()
        page.goto(f"/ui/jobs/{job.id}/rank")
        expect_round(page, 1)
        wait_images(page)
        sizes = page.locator("#grid img").evaluate_all("(imgs) => imgs.map((i) => [i.naturalWidth, i.naturalHeight])")
        assert sizes == [[32, 32]] * len(q.candidates)
        page.click(f"#cand-{q.candidates[2]['id']}")
        page.click("#submit")
        expect_round(page, 2)
        wait_images(page)
    stored = httpx.get(f"{api_url}/v1/jobs/{job.id}/queries/{q.id}/answer", headers={"Authorization": f"Bearer {API_KEY}"})
    assert stored.json() == {"ranking": [q.candidates[2]["id"]]}


def test_double_submit_counts_once(client: zoserve.Client, api_url: str, open_page: Any) -> None:
    from playwright.sync_api import expect

    job_id = sunset_job(client)
    page = open_page()
    page.goto(f"/ui/jobs/{job_id}/rank")
    q = pending(client, job_id, 1)
    expect_round(page, 1)
    for cid in warmest(q):
        page.click(f"#cand-{cid}")
    page.locator("#submit").dblclick()
    page.keyboard.press("Enter")
    expect_round(page, 2)
    # two identical POSTs racing from the page: one counts, the other is a 409
    q2 = pending(client, job_id, 2)
    statuses = page.evaluate(
        """async ([path, key, body]) => {
             const init = {method: "POST", body, headers: {"Content-Type": "application/json", Authorization: "Bearer " + key}};
             return (await Promise.all([fetch(path, init), fetch(path, init)])).map((r) => r.status).sort();
           }""",
        [f"/v1/jobs/{job_id}/queries/{q2.id}/answer", API_KEY, f'{{"ranking": ["{warmest(q2)[0]}"]}}'])
    assert statuses == [202, 409]
    # the form holds round 3 while it was answered elsewhere (its event stream is cut so it cannot move on)
    page.route("**/events", lambda route: route.abort())
    page.reload()
    q3 = pending(client, job_id, 3)
    expect_round(page, 3)
    for cid in warmest(q3):
        page.click(f"#cand-{cid}")
    client.jobs.answer(job_id, q3.id, ranking=warmest(q3))
    page.click("#submit")
    expect(page.locator("#status")).to_contain_text("already answered")
    expect_round(page, 4)  # found by polling the pending queries
    job = wait_until(lambda: (j := client.jobs.get(job_id)).status.value == "waiting" and j.progress.step == 3 and j)
    assert job.progress.queries == 3
    assert [e["step"] for e in events(api_url, job_id) if e["type"] == "progress"] == [1, 2, 3]


def test_rater_link_opens_only_the_form(client: zoserve.Client, api_url: str, open_page: Any) -> None:
    from playwright.sync_api import expect

    job_id, other = sunset_job(client), sunset_job(client)
    with zoserve.Client(api_url, api_key=OTHER_KEY) as b:
        foreign = b.jobs.create({**DEMO_SUNSET, "budget": {"max_queries": 4}}).id
    owner = open_page()
    owner.goto(f"/ui/jobs/{job_id}")
    owner.click("#make-link")
    expect(owner.locator("#link-url")).to_have_value(re.compile(r"/ui/r/rater_"))
    url = owner.locator("#link-url").input_value()
    token = url.rsplit("/", 1)[1]
    assert url.startswith(f"{api_url}/ui/r/rater_")
    expect(owner.locator("#links li")).to_have_count(1)

    rater = open_page(key=None)
    rater.goto(f"/ui/r/{token}")
    q = pending(client, job_id, 1)
    expect_round(rater, 1)
    wait_images(rater)
    assert rater.locator("a[href^='/ui']").count() == 0 and rater.locator("#login").count() == 0
    rater.screenshot(path=str(OUT / "web-rater.png"))
    for cid in warmest(q):
        rater.click(f"#cand-{cid}")
    rater.keyboard.press("Enter")
    expect_round(rater, 2)
    assert client.jobs.get(job_id).progress.step >= 1

    h = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"})
    q2 = pending(client, job_id, 2)
    allowed = [f"/v1/jobs/{job_id}/queries?status=pending", f"/v1/jobs/{job_id}/queries/{q2.id}/candidates/A.png",
               f"/v1/jobs/{job_id}/queries/{q.id}/answer", f"/v1/jobs/{job_id}/events?after=0"]
    assert [h.get(p).status_code for p in allowed] == [200] * 4
    denied = [h.get("/v1/jobs"), h.get(f"/v1/jobs/{job_id}"), h.get(f"/v1/jobs/{other}"),
              h.get(f"/v1/jobs/{other}/queries"), h.get(f"/v1/jobs/{other}/events?after=0"),
              h.get(f"/v1/jobs/{foreign}/queries"), h.get(f"/v1/jobs/{job_id}/rater-links"),
              h.post(f"/v1/jobs/{job_id}/rater-links"), h.post(f"/v1/jobs/{job_id}/cancel"),
              h.post(f"/v1/jobs/{other}/queries/q1/answer", json={"ranking": ["A", "B"]}), h.get("/v1/datasets")]
    assert [r.status_code for r in denied] == [404] * len(denied)
    assert client.jobs.get(other).progress.step == 0

    owner.click("#links li button")  # revoke
    expect(owner.locator("#links li")).to_have_count(0)
    assert h.get(f"/v1/jobs/{job_id}/queries").status_code == 401
    rater.goto(f"/ui/r/{token}")
    expect(rater.locator("h1")).to_have_text("This rater link is not valid")
    h.close()


def test_dashboard_lists_filters_plots_and_cancels(client: zoserve.Client, api_url: str, open_page: Any) -> None:
    from playwright.sync_api import expect

    done = client.jobs.create({"algorithm": "zo-adam", "name": "sphere d=10 (zo-adam)", "config": {"lr": 0.05},
                               "objective": {"kind": "builtin", "function": "sphere", "dim": 10},
                               "budget": {"max_steps": 150}}).wait()
    human = sunset_job(client)
    pending(client, human, 1)
    page = open_page()
    page.goto("/ui/")
    expect(page.locator(f"tr[data-id='{done.id}'] .badge")).to_have_text("succeeded")
    expect(page.locator(f"tr[data-id='{human}'] .badge")).to_have_text("waiting")
    expect(page.locator(f"tr[data-id='{human}'] td").nth(4)).to_contain_text("0 / 12 queries")
    page.screenshot(path=str(OUT / "web-dashboard.png"))
    page.select_option("#status-filter", "waiting")
    expect(page.locator(f"tr[data-id='{done.id}']")).to_have_count(0)
    statuses = page.locator("#job-rows tr").evaluate_all("(rows) => rows.map((r) => r.dataset.status)")
    assert statuses and set(statuses) == {"waiting"}

    page.goto(f"/ui/jobs/{done.id}")
    plot = page.locator("#plot svg")
    n_progress = sum(e["type"] == "progress" for e in events(api_url, done.id))
    expect(plot).to_have_attribute("data-points", str(2 * n_progress))  # value and best, one per event
    expect(page.locator("#plot path.series-best")).to_have_count(1)
    expect(page.locator("#result")).to_contain_text("max_steps (150) reached")
    expect(page.locator("#cancel")).to_be_hidden()
    page.screenshot(path=str(OUT / "web-job.png"), full_page=True)

    page.goto(f"/ui/jobs/{human}")
    expect(page.locator("#rank-link")).to_be_visible()
    expect(page.locator("#raters-card")).to_be_visible()
    page.click("#cancel")
    page.click("#cancel")  # the second click confirms
    expect(page.locator("#job-status")).to_have_text("cancelled")
    assert client.jobs.get(human).status.value == "cancelled"


def test_form_survives_the_api_restarting_mid_round(settings: Settings, client: zoserve.Client, api_url: str,
                                                   open_page: Any) -> None:
    from playwright.sync_api import expect

    from service.app import create_app

    job_id = sunset_job(client)
    q = pending(client, job_id, 1)
    want = warmest(q)
    port = free_port()
    with serve_app(create_app(settings), port) as url:
        page = open_page(base=url)
        page.goto(f"/ui/jobs/{job_id}/rank")
        expect_round(page, 1)
        wait_images(page)
        expect(page.locator("#conn")).to_have_text("live")
        page.click(f"#cand-{want[0]}")
    expect(page.locator("#conn")).to_have_text("reconnecting…")  # the API is down mid-round
    page.click(f"#cand-{want[1]}")
    page.click("#submit")
    expect(page.locator("#status")).to_contain_text("Cannot reach the server")
    assert client.jobs.get(job_id).progress.step == 0
    with serve_app(create_app(settings), port):  # back on the same port: the kept ranking goes through
        expect_round(page, 2)
        expect(page.locator("#conn")).to_have_text("live")
        stored = client.jobs.get(job_id)
        assert stored.progress.step == 1
        page.reload()  # a reload resumes on the same pending query
        expect_round(page, 2)
        assert page.locator("#grid .cand").count() == len(pending(client, job_id, 2).candidates)
        expect(page.locator("#strip li")).to_have_count(1)
    stored_answer = httpx.get(f"{api_url}/v1/jobs/{job_id}/queries/{q.id}/answer", headers={"Authorization": f"Bearer {API_KEY}"})
    assert stored_answer.json() == {"ranking": want}  # picked before and after the restart, sent once
