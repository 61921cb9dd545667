"""Values supplied by the caller: each query is published and the job waits for the answer."""

from __future__ import annotations

from typing import Any

import torch

from workers.algorithms.base import Answer, Query

from .base import Evaluation, ObjectiveInvalid, Pending, check_values


class ClientObjective:
    """Publishes the points of each step; ``client.jobs.serve`` (or any HTTP client) answers."""

    def __init__(self, dim: int):
        self.dim = dim

    def default_x0(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=torch.float64)

    async def evaluate(self, query: Query) -> Pending:
        return Pending({"points": query.points.tolist()})

    def resolve(self, query: Query, payload: dict[str, Any]) -> Evaluation:
        if "values" not in payload:
            raise ObjectiveInvalid("a value query was answered without values")
        n = query.points.shape[0]
        values = check_values(torch.tensor(payload["values"], dtype=torch.float64), n)
        return Evaluation(Answer(values=values), queries=n)

    async def aclose(self) -> None:
        return None
