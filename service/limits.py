"""Request body size limit (``max_body_bytes``) as pure ASGI middleware → 413 problem.

A declared ``Content-Length`` over the limit is refused before the app runs; a body without one
(chunked) is counted as it is read and refused the moment it passes the limit, so neither kind
is ever buffered whole. (FastAPI's own ``max_body_size`` answers in plain text, not RFC 9457.)
"""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zoserve.models.problems import Problem

from .problems import TooLarge, problem_response


class BodyTooLarge(TooLarge, StarletteHTTPException):  # type: ignore[misc]
    """Raised from ``receive``; an HTTPException too, so FastAPI's body reader re-raises it as is
    (instead of a 400), and a ProblemError first in the MRO, so it renders as our 413 problem."""

    def __init__(self, limit: int):
        TooLarge.__init__(self, f"request body exceeds this server's limit of {limit} bytes")
        self.status_code = 413


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False  # the server rejects a malformed Content-Length itself
            if too_big:
                problem = Problem(type=TooLarge.type, title=TooLarge.title, status=413, instance=scope.get("path"),
                                  detail=f"request body exceeds this server's limit of {self.max_bytes} bytes")
                await problem_response(problem, headers={"Connection": "close"})(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)
