"""The ``endpoint`` ranking oracle: candidates go to a scoring service the user runs (a reward
model, a CLIP scorer) and come back as scores; higher scores rank first.

Same batching, retries, SSRF guard and secret handling as model endpoints: it *is* an endpoint
objective (``output: scalar``, ``negate``), asked a ranking query, charged one oracle query.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from workers.algorithms.base import Query

from .base import Evaluation
from .endpoint import EndpointObjective


class EndpointRankingOracle:
    """Scores all m candidates in batched requests and ranks them (ties when scores are equal)."""

    def __init__(self, spec: Any, seed: int, settings: Any):
        from zoserve.models.endpoint import EndpointObjective as EndpointSpec

        endpoint = EndpointSpec(kind="endpoint", url=spec.url, headers=spec.headers, dim=spec.dim, output="scalar",
                                negate=True)
        self.inner = EndpointObjective(endpoint, allow=settings.ssrf_allow)
        self.dim, self.x0 = spec.dim, spec.x0

    def default_x0(self) -> Tensor:
        import torch

        return torch.full((self.dim,), float(self.x0 or 0.0), dtype=torch.float64)

    async def evaluate(self, query: Query) -> Evaluation:
        ev = await self.inner.evaluate(query)
        m = int(query.points.shape[0])
        return Evaluation(ev.answer, queries=1, failed=1 if ev.failed else 0, evaluations=m)

    def resolve(self, query: Query, payload: dict[str, Any]) -> Evaluation:
        raise NotImplementedError("the endpoint oracle answers at once")

    async def aclose(self) -> None:
        await self.inner.aclose()
