"""RFC 9457 problem details: the error tree and the handlers that render it.

Exception tree::

    ProblemError            renders as application/problem+json with its status
    ├── NotFound            404 (also for other tenants' resources)
    ├── Conflict            409 (stale or duplicate answers, terminal jobs)
    ├── Unprocessable       422 (semantic errors beyond schema validation)
    ├── Unauthorized        401
    ├── Forbidden           403 (admin operations without the admin key)
    ├── TooLarge            413 (request body over max_body_bytes)
    ├── TooManyRequests     429 (rate limit, quota) with Retry-After
    ├── BadGateway          502 (a worker-side call behind the request failed)
    ├── Unavailable         503 (not ready)
    └── GatewayTimeout      504 (a worker-side call behind the request timed out)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from zoserve.models.problems import Problem

MEDIA_TYPE = "application/problem+json"


class ProblemError(Exception):
    """Base of the tree; a subclass states its problem as class keywords ``status``, ``title``, ``urn``."""

    status = 500
    title = "Internal Server Error"
    type = "about:blank"

    def __init_subclass__(cls, *, status: int | None = None, title: str = "", urn: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if status is not None:  # else inherited (a refinement of a concrete problem)
            cls.status, cls.title, cls.type = status, title, f"urn:zoserve:{urn}"

    def __init__(self, detail: str | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] | None = None


class NotFound(ProblemError, status=404, title="Not Found", urn="not-found"): ...
class Conflict(ProblemError, status=409, title="Conflict", urn="conflict"): ...
class Unprocessable(ProblemError, status=422, title="Unprocessable Content", urn="unprocessable"): ...
class Unauthorized(ProblemError, status=401, title="Unauthorized", urn="unauthorized"): ...
class Forbidden(ProblemError, status=403, title="Forbidden", urn="forbidden"): ...
class TooLarge(ProblemError, status=413, title="Content Too Large", urn="too-large"): ...
class Unavailable(ProblemError, status=503, title="Service Unavailable", urn="unavailable"): ...
class BadGateway(ProblemError, status=502, title="Bad Gateway", urn="bad-gateway"): ...
class GatewayTimeout(ProblemError, status=504, title="Gateway Timeout", urn="gateway-timeout"): ...


class TooManyRequests(ProblemError, status=429, title="Too Many Requests", urn="too-many-requests"):
    """429; ``retry_after`` (seconds) goes into the ``Retry-After`` header and the body."""

    def __init__(self, detail: str | None = None, *, retry_after: int, **extra: Any):
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers = {"Retry-After": str(max(1, retry_after))}


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem.model_dump(exclude_none=True), status_code=problem.status, media_type=MEDIA_TYPE, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Make every error an RFC 9457 problem."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(Problem(type=exc.type, title=exc.title, status=exc.status, detail=exc.detail,
                                        instance=request.url.path, **exc.extra), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem_response(Problem(type="urn:zoserve:validation", title="Request validation failed", status=422,
                                        detail=f"{where}: {first['msg']}", instance=request.url.path, errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(Problem(title=str(exc.detail) if exc.status_code != 404 else "Not Found", status=exc.status_code,
                                        detail=str(exc.detail), instance=request.url.path), headers=getattr(exc, "headers", None))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        # Redis restarting or unreachable past redis-py's retries: a transient 503 the SDK retries, not a 500
        return problem_response(Problem(type=Unavailable.type, title=Unavailable.title, status=503, instance=request.url.path,
                                        detail="the job store (Redis) is unreachable; retry shortly"),
                                headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(Problem(title="Internal Server Error", status=500,
                                        detail=f"unexpected {type(exc).__name__}", instance=request.url.path))
