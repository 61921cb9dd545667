"""SDK exceptions. Problems (RFC 9457) from the API become status-specific exceptions::

    ZoserveError
    ├── APIError                 the API answered with a problem; ``.problem`` holds it
    │   ├── BadRequest (400)     ├── Unauthorized (401)    ├── NotFound (404)
    │   ├── Conflict (409)       ├── Unprocessable (422)   ├── RateLimited (429)
    │   └── ServerError (5xx)
    ├── TransportError           the API could not be reached
    └── JobFailed                ``wait()`` saw the job fail or be cancelled; ``.job`` and ``.problem``
"""

from __future__ import annotations

from typing import Any

from .models.problems import Problem


class ZoserveError(Exception):
    """Base of every SDK error."""


class APIError(ZoserveError):
    status: int = 0

    def __init__(self, problem: Problem):
        super().__init__(f"{problem.status} {problem.title}: {problem.detail or ''}".strip())
        self.problem = problem


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class Unprocessable(APIError):
    status = 422


class RateLimited(APIError):
    status = 429


class ServerError(APIError):
    status = 500


class TransportError(ZoserveError):
    """Network failure talking to the API."""


class JobFailed(ZoserveError):
    def __init__(self, job: Any, problem: Problem | None):
        super().__init__(f"job {job.id} {job.status.value}: {problem.detail if problem else ''}")
        self.job, self.problem = job, problem


_BY_STATUS: dict[int, type[APIError]] = {400: BadRequest, 401: Unauthorized, 404: NotFound, 409: Conflict,
                                         422: Unprocessable, 429: RateLimited}


def error_for(status: int, body: Any) -> APIError:
    """The exception for an error response."""
    try:
        problem = Problem.model_validate(body)
    except Exception:  # noqa: BLE001 - not a problem document
        problem = Problem(title="HTTP error", status=status, detail=str(body)[:500])
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    return cls(problem)
