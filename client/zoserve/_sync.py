"""The synchronous client (twin of ``_async``; both generated from one template)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import httpx
from pydantic import PrivateAttr

from ._base import (TERMINAL, WAIT_TYPES, answer_for, budget_total, check, client_kwargs, event_params,
                    idempotency_headers, spec_body)
from ._errors import Conflict, JobFailed, ServerError, TransportError
from ._progress import ProgressBar
from ._sse import SSEDecoder
from .models.events import EventPage, ProgressEvent, QueryEvent
from .models.jobs import Job as JobRecord
from .models.jobs import JobPage
from .models.queries import PendingQuery, QueryPage

RECONNECT_LIMIT = 20


class Job(JobRecord):
    """A job bound to the client that fetched it: ``refresh``, ``stream``, ``wait``, ``cancel``."""

    _client: "Client" = PrivateAttr()

    def refresh(self) -> "Job":
        return self._client.jobs.get(self.id)

    def stream(self, last_event_id: str | None = None, types: Iterable[str] | None = None) -> Iterator[Any]:
        return self._client.jobs.events(self.id, last_event_id=last_event_id, types=types)

    def wait(self, progress: bool = False) -> "Job":
        return self._client.jobs.wait(self.id, progress=progress)

    def cancel(self) -> "Job":
        return self._client.jobs.cancel(self.id)


class Jobs:
    """``client.jobs``: create, get, list, cancel, events, wait, queries, answer, serve."""

    def __init__(self, client: "Client"):
        self._c = client

    def _bind(self, body: dict[str, Any]) -> Job:
        job = Job.model_validate(body)
        job._client = self._c
        return job

    def create(self, spec: Any, *, idempotency_key: str | None = None) -> Job:
        """Submit a job (dict or model), validated locally first. Safe to retry: an Idempotency-Key is always sent."""
        body, headers = spec_body(spec), idempotency_headers(idempotency_key)
        for attempt in range(3):
            try:
                return self._bind(check(self._c._http.post("/v1/jobs", json=body, headers=headers)))
            except httpx.TransportError as exc:
                if attempt == 2:
                    raise TransportError(str(exc)) from exc
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> Job:
        return self._bind(check(self._c._http.get(f"/v1/jobs/{job_id}")))

    def list(self, status: str | list[str] | None = None, limit: int = 50, cursor: str | None = None) -> JobPage:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else status
        if cursor:
            params["cursor"] = cursor
        page = JobPage.model_validate(check(self._c._http.get("/v1/jobs", params=params)))
        page.items = [self._bind(j.model_dump(mode="json")) for j in page.items]
        return page

    def cancel(self, job_id: str) -> Job:
        return self._bind(check(self._c._http.post(f"/v1/jobs/{job_id}/cancel")))

    def poll_events(self, job_id: str, after: str = "0", limit: int = 1000,
                    types: Iterable[str] | None = None) -> EventPage:
        """Events after ``after`` as JSON (for clients that cannot hold a stream); ``types`` as in :meth:`events`."""
        r = self._c._http.get(f"/v1/jobs/{job_id}/events", params=event_params(types, after=after, limit=limit))
        return EventPage.model_validate(check(r))

    def events(self, job_id: str, last_event_id: str | None = None,
               types: Iterable[str] | None = None) -> Iterator[Any]:
        """Typed events from SSE until the terminal one; reconnects with Last-Event-ID on its own.

        ``types`` keeps only those event types (the terminal ``result``/``error`` always comes).
        """
        decoder = SSEDecoder(last_id=last_event_id)
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if decoder.last_id:
                headers["Last-Event-ID"] = decoder.last_id
            try:
                with self._c._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, params=event_params(types),
                                             timeout=httpx.Timeout(30.0, read=None)) as r:
                    if not r.is_success:
                        r.read()
                        check(r)  # a 502/503/504 (API restarting, Redis away) is retried below
                    for line in r.iter_lines():
                        for event in decoder.feed(line):
                            failures = 0
                            yield event
                            if event.type in ("result", "error"):
                                return
                # closed without a terminal event: catch up as JSON, then reconnect if still running
                page = self.poll_events(job_id, after=decoder.last_id or "0", limit=10_000, types=types)
                for event in page.items:
                    decoder.last_id = event.id
                    yield event
                if page.done:
                    return
            except (httpx.TransportError, httpx.RemoteProtocolError, ServerError) as exc:
                if isinstance(exc, ServerError) and exc.problem.status not in (502, 503, 504):
                    raise
                failures += 1
                if failures > RECONNECT_LIMIT:
                    raise TransportError(str(exc)) from exc
                time.sleep(min(2.0, 0.1 * failures))

    def wait(self, job_id: str, progress: bool = False) -> Job:
        """Block until the job ends; returns it, or raises :class:`JobFailed`. ``progress`` draws a bar."""
        bar, last = None, None
        if progress:
            job = self.get(job_id)
            total, unit = budget_total(job)
            bar = ProgressBar(total, unit)
        try:
            for ev in self.events(job_id, types=None if progress else WAIT_TYPES):
                if bar is not None and isinstance(ev, ProgressEvent):
                    last = ev
                    bar.update(ev.step if bar.unit == "steps" else ev.queries, ev.best_value)
                elif bar is not None and last is not None and ev.type in ("result", "error"):
                    bar.update(last.step if bar.unit == "steps" else last.queries, last.best_value,
                               ev.status.value, force=True)
        finally:
            if bar is not None:
                bar.close()
        job = self.get(job_id)
        if job.status.value != "succeeded":
            raise JobFailed(job, job.error)
        return job

    def queries(self, job_id: str, status: str | None = "pending") -> list[PendingQuery]:
        params = {"status": status} if status else {}
        return QueryPage.model_validate(check(self._c._http.get(f"/v1/jobs/{job_id}/queries", params=params))).items

    def answer(self, job_id: str, query_id: str, *, values: list[float] | None = None,
               ranking: list[str] | None = None) -> Job:
        body = {"values": values} if values is not None else {"ranking": ranking}
        return self._bind(check(self._c._http.post(f"/v1/jobs/{job_id}/queries/{query_id}/answer", json=body)))

    def serve(self, job_id: str, fn: Callable[[Any], Any]) -> Job:
        """Answer a job's queries with ``fn`` until it ends.

        ``fn(points) -> values`` (one float per point, minimisation) for value queries;
        ``fn(candidates) -> ranking`` (candidate ids, best first) for ranking queries.
        """
        after = "0"
        while True:  # catch up without replaying old queries
            page = self.poll_events(job_id, after=after, limit=10_000)
            after = page.last_id or after
            if page.done:
                return self.get(job_id)
            if len(page.items) < 10_000:
                break
        for q in self.queries(job_id, "pending"):
            self._answer_quietly(job_id, q, fn)
        for ev in self.events(job_id, last_event_id=after):
            if isinstance(ev, QueryEvent):
                q = PendingQuery.model_validate({"id": ev.query_id, "job_id": job_id, "kind": ev.kind, "step": 0,
                                                 "created_at": ev.time, **ev.payload})
                self._answer_quietly(job_id, q, fn)
        return self.get(job_id)

    def _answer_quietly(self, job_id: str, q: PendingQuery, fn: Callable[[Any], Any]) -> None:
        body = answer_for(q, fn)
        try:
            self.answer(job_id, q.id, **body)
        except Conflict:
            pass  # answered already (replayed event or a second server)


class Client:
    """The zoserve synchronous client. ``base_url`` defaults to ZOSERVE_URL or http://127.0.0.1:8000."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None, timeout: float = 30.0,
                 transport: Any = None):
        self._http = httpx.Client(**client_kwargs(base_url, api_key, timeout), transport=transport)
        self.jobs = Jobs(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
