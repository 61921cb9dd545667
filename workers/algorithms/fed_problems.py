"""Heterogeneous synthetic federated problems (brief fzoos.md §4.2, §6.1 b); pure torch functions.

Inputs live in [0, 1]^d (the optimiser is unconstrained; like the official code every function
clips x to the box and maps it onto the real domain, P(x) = 20·clip(x, 0, 1) − 10). Client
heterogeneity is drawn per coordinate from a Dirichlet over clients with α = (1/N, ..., 1/N).

* ``quadratic`` (the official code's Quadratic): f_i = (0.1/d)[Σ_j c1_ij P_j² + c2_ij P_j + 1],
  c1, c2 = 1 + div·(Dir − 1/N). Client optima are close; the clients differ in curvature.
* ``shifted_quadratic`` (brief §6.1 b, where client drift dominates):
  f_i = (0.1/d) Σ_j c1_ij (P_j − s_ij)², c1 = 1 + div·(Dir − 1/N), s_ij = 1.5·div·N·(Dir'_ij − 1/N)
  (= the brief's 3N(Dir − 1/N) at its div = 2; deviation: the shift scales with div).

Both are separable, so the global optimum of F = Σ p_i f_i is exact per coordinate (clipped to
the box), which gives the gap F(x) − F* the benchmarks report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["Family", "FedProblem", "make_problem", "quadratic_values", "shifted_quadratic_values"]

Family = Literal["quadratic", "shifted_quadratic"]
_F64 = torch.float64


def _P(X: Tensor) -> Tensor:
    return 20.0 * X.clamp(0.0, 1.0) - 10.0


def quadratic_values(X: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """(0.1/d)[Σ c1 P² + Σ c2 P + 1] for ``(n, d)`` points: ``(n,)``."""
    P = _P(X.to(_F64))
    return (0.1 / X.shape[-1]) * ((c1 * P * P).sum(-1) + (c2 * P).sum(-1) + 1.0)


def shifted_quadratic_values(X: Tensor, c1: Tensor, s: Tensor) -> Tensor:
    """(0.1/d) Σ c1 (P − s)² for ``(n, d)`` points: ``(n,)``."""
    return (0.1 / X.shape[-1]) * (c1 * (_P(X.to(_F64)) - s).square()).sum(-1)


@dataclass(frozen=True)
class FedProblem:
    """A federated problem: per-client batched objectives plus the exact global optimum.

    Attributes:
        clients: f_i mapping ``(n, d)`` to ``(n,)`` (float64).
        weights: p_i (sum to 1).
        x0: the start point, U(0, 1)^d as in the code.
        x_star, f_star: the global minimiser and F(x*).
    """

    name: str
    clients: tuple[Callable[[Tensor], Tensor], ...]
    weights: tuple[float, ...]
    x0: Tensor
    x_star: Tensor
    f_star: float

    def F(self, X: Tensor) -> Tensor:
        """F = Σ p_i f_i at ``(n, d)`` points."""
        return sum(p * f(X) for p, f in zip(self.weights, self.clients))  # type: ignore[return-value]

    def gap(self, x: Tensor) -> float:
        """F(x) − F* (an exact measurement for reporting; not an algorithm query)."""
        return float(self.F(x.reshape(1, -1))[0]) - self.f_star


def make_problem(
    family: Family, n_clients: int = 5, dim: int = 50, heterogeneity: float | None = None, seed: int = 0
) -> FedProblem:
    """Build a problem; ``heterogeneity`` is div (defaults: 0.5 quadratic, 2.0 shifted)."""
    if n_clients < 1 or dim < 1:
        raise ValueError("n_clients and dim must be >= 1")
    div = heterogeneity if heterogeneity is not None else (0.5 if family == "quadratic" else 2.0)
    rng = np.random.default_rng(seed)  # Dirichlet draws only (torch has no seeded Dirichlet)
    n = n_clients

    def coef() -> Tensor:  # (N, d): Dir over clients, drawn independently per coordinate
        return torch.as_tensor(rng.dirichlet(np.full(n, 1.0 / n), size=dim).T.copy(), dtype=_F64) - 1.0 / n

    p = torch.full((n, 1), 1.0 / n, dtype=_F64)
    c1 = 1.0 + div * coef()
    if family == "quadratic":
        c2 = 1.0 + div * coef()
        clients = tuple(_bind(quadratic_values, c1[i], c2[i]) for i in range(n))
        a, lin = (p * c1).sum(0), (p * c2).sum(0)
        p_star = (-lin / (2 * a)).clamp(-10.0, 10.0)
    elif family == "shifted_quadratic":
        s = 1.5 * div * n * coef()
        clients = tuple(_bind(shifted_quadratic_values, c1[i], s[i]) for i in range(n))
        a = (p * c1).sum(0)
        p_star = ((p * c1 * s).sum(0) / a).clamp(-10.0, 10.0)
    else:
        raise ValueError(f"unknown family {family!r}")
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(dim, generator=gen, dtype=_F64)
    x_star = (p_star + 10.0) / 20.0
    problem = FedProblem(family, clients, tuple([1.0 / n] * n), x0, x_star, 0.0)
    return FedProblem(family, clients, problem.weights, x0, x_star, float(problem.F(x_star[None])[0]))


def _bind(fn: Callable[[Tensor, Tensor, Tensor], Tensor], a: Tensor, b: Tensor) -> Callable[[Tensor], Tensor]:
    def f(X: Tensor) -> Tensor:
        return fn(X.reshape(-1, a.numel()), a, b)

    return f
