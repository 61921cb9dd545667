"""Classic test functions, evaluated batched on ``(n, d)`` in float64, with optional noise."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable

import torch
from torch import Tensor

from workers.algorithms.base import Answer, Query

from .base import Evaluation, check_finite

Fn = Callable[[Tensor], Tensor]


def sphere(x: Tensor) -> Tensor:
    return (x * x).sum(-1)


def quadratic(x: Tensor) -> Tensor:
    """½ Σ cᵢ xᵢ² with cᵢ spread log-uniformly over [1, 10] (condition number 10)."""
    d = x.shape[-1]
    c = torch.logspace(0, 1, d, dtype=x.dtype, device=x.device) if d > 1 else torch.ones(1, dtype=x.dtype, device=x.device)
    return 0.5 * (c * x * x).sum(-1)


def rosenbrock(x: Tensor) -> Tensor:
    return (100.0 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1.0 - x[..., :-1]) ** 2).sum(-1)


def ackley(x: Tensor) -> Tensor:
    d = x.shape[-1]
    a = -20.0 * torch.exp(-0.2 * torch.sqrt((x * x).sum(-1) / d))
    return a - torch.exp(torch.cos(2 * math.pi * x).sum(-1) / d) + 20.0 + math.e


def rastrigin(x: Tensor) -> Tensor:
    return 10.0 * x.shape[-1] + (x * x - 10.0 * torch.cos(2 * math.pi * x)).sum(-1)


def levy(x: Tensor) -> Tensor:
    w = 1.0 + (x - 1.0) / 4.0
    head = torch.sin(math.pi * w[..., 0]) ** 2
    mid = ((w[..., :-1] - 1) ** 2 * (1 + 10 * torch.sin(math.pi * w[..., :-1] + 1) ** 2)).sum(-1)
    tail = (w[..., -1] - 1) ** 2 * (1 + torch.sin(2 * math.pi * w[..., -1]) ** 2)
    return head + mid + tail


FUNCTIONS: dict[str, Fn] = {
    "sphere": sphere, "quadratic": quadratic, "rosenbrock": rosenbrock,
    "ackley": ackley, "rastrigin": rastrigin, "levy": levy,
}


def default_x0(function: str, dim: int) -> Tensor:
    """The documented start point of each function (far from its minimum)."""
    if function == "rosenbrock":  # the classic (-1.2, 1, -1.2, 1, ...)
        return torch.tensor([-1.2 if i % 2 == 0 else 1.0 for i in range(dim)], dtype=torch.float64)
    if function == "levy":
        return torch.full((dim,), -3.0, dtype=torch.float64)
    if function in ("ackley", "rastrigin"):
        return torch.full((dim,), 2.5, dtype=torch.float64)
    return torch.ones(dim, dtype=torch.float64)


def noise_generator(points: Tensor, seed: int) -> torch.Generator:
    """Noise depends only on (points, seed), so a replayed step sees the same noise."""
    digest = hashlib.blake2b(points.detach().cpu().numpy().tobytes(), digest_size=8).digest()
    return torch.Generator().manual_seed((int.from_bytes(digest, "little") ^ seed) % (2**63 - 1))


class BuiltinObjective:
    """Evaluates a builtin function on every point of a query in one batched call."""

    on_device = True  # evaluates where the points are (cuda on a GPU worker): no copies, no sync but the check

    def __init__(self, function: str, dim: int, noise: float = 0.0, seed: int = 0, latency_ms: float = 0.0):
        self.fn = FUNCTIONS[function]
        self.function, self.dim, self.noise, self.seed = function, dim, noise, seed
        self.latency_s = latency_ms / 1000.0  # simulated I/O wait (scale-out tests); 0 = none
        # the runner's path without the event loop or an Evaluation per step; a simulated wait needs both
        self.values_now: Fn | None = self.checked_values if self.latency_s == 0 else None

    def default_x0(self) -> Tensor:
        return default_x0(self.function, self.dim)

    def values(self, points: Tensor) -> Tensor:
        out = self.fn(points.to(torch.float64))
        if self.noise > 0:
            noise = torch.randn(out.shape, generator=noise_generator(points, self.seed), dtype=out.dtype)
            out = out + self.noise * noise.to(out.device)
        return out

    def checked_values(self, points: Tensor) -> Tensor:
        """Every point's value, checked (float64, one per point by construction: finiteness is what can fail)."""
        return check_finite(self.values(points), points.shape[0])

    def answer(self, query: Query) -> Evaluation:
        return Evaluation(Answer(values=self.checked_values(query.points)), query.points.shape[0])

    async def evaluate(self, query: Query) -> Evaluation:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        return self.answer(query)

    def resolve(self, query: Query, payload: dict[str, object]) -> Evaluation:
        raise NotImplementedError("builtin objectives answer at once")

    async def aclose(self) -> None:
        return None
