"""A ZO job end to end: SDK → REST → Redis → Celery worker → objective → events → SDK."""

from __future__ import annotations

import math
import threading

import httpx
import pytest

import zoserve
from workers.objectives.builtin import default_x0, rosenbrock
from zoserve import ProgressEvent, ResultEvent, StatusEvent

ROSEN = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "rosenbrock", "dim": 20},
         "budget": {"max_steps": 400}, "seed": 7, "name": "rosen-20"}


def test_rosenbrock_via_sdk_streams_every_step_and_succeeds(client: zoserve.Client) -> None:
    job = client.jobs.create(ROSEN)
    assert job.status.value == "queued" and job.events_url.endswith(f"/v1/jobs/{job.id}/events")
    events = list(job.stream())
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    statuses = [e.status.value for e in events if isinstance(e, StatusEvent)]
    assert [p.step for p in progress] == list(range(1, 401))  # one event per step, in order, none repeated
    assert all(p.queries > 0 and p.value is not None and p.best_value is not None for p in progress)
    assert statuses[:2] == ["queued", "running"]
    assert isinstance(events[-1], ResultEvent)
    done = client.jobs.get(job.id)
    assert done.status.value == "succeeded"
    start = float(rosenbrock(default_x0("rosenbrock", 20)))
    assert done.result is not None and done.result.value_best is not None
    assert done.result.value_best < 0.1 * start, (done.result.value_best, start)
    assert done.progress.step == 400 and done.result.queries == done.progress.queries
    ids = [e.id for e in events]
    assert ids == sorted(ids, key=lambda s: tuple(int(p) for p in s.split("-")))


def test_client_objective_served_matches_builtin(client: zoserve.Client) -> None:
    spec = {**ROSEN, "budget": {"max_steps": 60}}
    builtin = client.jobs.create(spec).wait()
    served = client.jobs.create({**spec, "objective": {"kind": "client", "dim": 20},
                                 "x0": default_x0("rosenbrock", 20).tolist()})

    def f(points: list[list[float]]) -> list[float]:
        import torch

        return rosenbrock(torch.tensor(points, dtype=torch.float64)).tolist()

    out = client.jobs.serve(served.id, f)
    assert out.status.value == "succeeded"
    assert out.result is not None and builtin.result is not None
    assert out.result.x_best == builtin.result.x_best
    assert out.result.value_best == builtin.result.value_best


def test_wait_with_progress_bar(client: zoserve.Client, capsys: pytest.CaptureFixture[str]) -> None:
    job = client.jobs.create({**ROSEN, "budget": {"max_steps": 50}})
    done = job.wait(progress=True)
    assert done.status.value == "succeeded"
    assert "50/50 steps" in capsys.readouterr().err


@pytest.mark.anyio
async def test_async_client_twin(api_url: str) -> None:
    from tests.conftest import API_KEY

    async with zoserve.AsyncClient(api_url, api_key=API_KEY) as c:
        job = await c.jobs.create({**ROSEN, "budget": {"max_steps": 30}})
        seen = [e async for e in job.stream()]
        assert isinstance(seen[-1], ResultEvent)
        assert (await job.refresh()).status.value == "succeeded"


def test_event_types_filter_sse_json_and_resume(client: zoserve.Client, api_url: str) -> None:
    job = client.jobs.create({**ROSEN, "budget": {"max_steps": 120}})
    live = list(job.stream(types=["status"]))  # joined while it runs: catch-up, then the hub
    assert {e.type for e in live} == {"status", "result"} and isinstance(live[-1], ResultEvent)
    everything = list(job.stream())
    assert [e.id for e in live] == [e.id for e in everything if e.type in ("status", "result")]
    # resume after the first status event: the rest of the filtered stream, nothing twice
    assert [e.id for e in job.stream(last_event_id=live[0].id, types=["status"])] == [e.id for e in live[1:]]
    page = client.jobs.poll_events(job.id, limit=50, types=["progress"])  # a page of 50 rows, 2 of them status
    assert [e.type for e in page.items] == ["progress"] * 48 and page.last_id == everything[49].id
    ends = client.jobs.poll_events(job.id, limit=10_000, types=["query"])
    assert [e.type for e in ends.items] == ["result"] and ends.done  # the end always comes
    from tests.conftest import API_KEY

    bad = httpx.get(f"{api_url}/v1/jobs/{job.id}/events", params={"types": "progress,steps"},
                    headers={"Authorization": f"Bearer {API_KEY}"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")


def test_wait_does_not_stream_progress(client: zoserve.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    events = client.jobs.events

    def spy(job_id: str, last_event_id: str | None = None, types: object = None):  # type: ignore[no-untyped-def]
        for ev in events(job_id, last_event_id, types):  # type: ignore[arg-type]
            seen.append(ev.type)
            yield ev

    monkeypatch.setattr(client.jobs, "events", spy)
    done = client.jobs.create({**ROSEN, "budget": {"max_steps": 80}}).wait()
    assert done.status.value == "succeeded" and done.progress.step == 80
    assert "progress" not in seen and seen[-1] == "result"


@pytest.mark.anyio
async def test_async_event_types_filter(api_url: str) -> None:
    from tests.conftest import API_KEY

    async with zoserve.AsyncClient(api_url, api_key=API_KEY) as c:
        job = await c.jobs.create({**ROSEN, "budget": {"max_steps": 40}})
        seen = [e.type async for e in job.stream(types=["status"])]
        assert set(seen) == {"status", "result"} and seen[-1] == "result"
        assert (await job.wait()).status.value == "succeeded"


def test_a_long_result_reads_back_bit_for_bit_through_get_the_event_page_and_sse(client: zoserve.Client) -> None:
    """x_best of 50 000 floats: the API parses stored JSON with orjson and writes pages with pydantic, the SDK
    parses with pydantic-core (not the stdlib's ``json``, ~7× slower on long float arrays); none may round."""
    from tests.support.chaos import reference_run

    x0 = [((i * 7919) % 10007) / 10007 * math.pi for i in range(50_000)]  # many distinct, non-round floats
    spec = {"algorithm": "zo-sgd", "config": {"q": 2, "lr": 1e-3}, "budget": {"max_steps": 3}, "seed": 3, "x0": x0,
            "objective": {"kind": "builtin", "function": "sphere", "dim": 50_000}}
    want = reference_run(spec)[0]["x_best"]
    job = client.jobs.create(spec)
    streamed = [e for e in job.stream() if isinstance(e, ResultEvent)]
    page = client.jobs.poll_events(job.id, after="0", limit=100)
    paged = [e for e in page.items if isinstance(e, ResultEvent)]
    got = client.jobs.get(job.id).result
    assert got is not None and len(streamed) == len(paged) == 1
    assert got.x_best == streamed[0].result.x_best == paged[0].result.x_best == want
    assert len(set(want)) > 1000
