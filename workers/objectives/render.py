"""The ``endpoint`` renderer of ranking candidates: the user's own image generator draws each point.

For a ranking query shown to people (``render: "endpoint"``), the worker POSTs ``{"point": [...]}``
for every candidate to ``render_url``, concurrently and with the endpoint objectives' SSRF guard,
retries and redirects, and keeps what comes back: a PNG, JPEG or WebP image of at most
:data:`MAX_IMAGE_BYTES`. The runner stores the images with the query; the API serves them as the
candidates' pictures. Anything else fails the job with the reason (a generator that answers text,
or too much, is a configuration error, not a flaky one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from torch import Tensor

from .base import ObjectiveInvalid
from .endpoint import EndpointObjective, gather_in_order

MAX_IMAGE_BYTES = 4 * 2**20
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))
Image = tuple[bytes, str]  # (data, media type)


def image_type(data: bytes) -> str | None:
    """The media type of a PNG, JPEG or WebP image by its signature, else None."""
    for signature, media in _SIGNATURES:
        if data.startswith(signature):
            return media
    return "image/webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


class CandidateRenderer:
    """Draws candidate points through ``url`` (``headers`` as for endpoint objectives)."""

    def __init__(self, url: str, headers: Mapping[str, Any], dim: int, *, allow: Sequence[str] = (),
                 concurrency: int = 4):
        from zoserve.models.endpoint import EndpointObjective as EndpointSpec

        spec = EndpointSpec(kind="endpoint", url=url, headers=dict(headers), dim=dim, output="scalar",
                            concurrency=concurrency)
        self.endpoint = EndpointObjective(spec, allow=allow)

    async def render(self, points: Tensor) -> list[Image]:
        """One image per row of ``points``, in order (the first failure cancels the other requests)."""
        return await gather_in_order(self._one(i, row) for i, row in enumerate(points.tolist()))

    async def _one(self, i: int, point: list[float]) -> Image:
        data = await self.endpoint.post(orjson.dumps({"point": point}))
        if len(data) > MAX_IMAGE_BYTES:
            raise ObjectiveInvalid(f"render {self.endpoint.where} drew candidate {i} in {len(data)} bytes "
                                   f"(at most {MAX_IMAGE_BYTES})")
        media = image_type(data)
        if media is None:
            raise ObjectiveInvalid(f"render {self.endpoint.where} answered candidate {i} with something that is "
                                   f"not a PNG, JPEG or WebP image: {data[:40]!r}")
        return data, media

    async def aclose(self) -> None:
        await self.endpoint.aclose()
