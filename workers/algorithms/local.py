"""Local torch objectives, evaluated batched: one step's n points in ONE vectorised forward.

An ask/tell algorithm hands the objective all perturbed points of a step as an ``(n, d)``
batch (``Query.points``). The builtin test functions already reduce over the last axis; for a
small local ``nn.Module`` this module maps each row to a full parameter set and evaluates all
rows at once with ``torch.func.vmap`` over ``torch.func.functional_call`` — for linear layers
that becomes one batched matmul (brief zo-engine.md §5.5, the "Vectorized" executor of §6).

Memory grows as n·d (the points) plus n copies of the activations; ``chunk_size`` bounds the
second. For d beyond what n copies allow, use the in-place seed trick (``mezo.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

Criterion = Callable[[Tensor, Tensor], Tensor]


class ModuleLoss:
    """f(x) = criterion(model_x(inputs), targets), x the module's parameters as one flat vector.

    Args:
        model: evaluated in its current mode (call ``model.eval()`` for deterministic queries);
            its own parameters are never modified.
        criterion: a loss returning a scalar for one parameter set (e.g. ``F.mse_loss``).
        inputs, targets: the fixed batch (common random numbers for every point of a step).
        chunk_size: rows per vectorised call (``None`` = all rows at once).
    """

    def __init__(self, model: nn.Module, criterion: Criterion, inputs: Tensor, targets: Tensor,
                 chunk_size: int | None = None) -> None:
        self.model, self.criterion = model, criterion
        self.inputs, self.targets, self.chunk_size = inputs, targets, chunk_size
        named = [(n, p) for n, p in model.named_parameters()]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)
        self._batched = vmap(self._loss_of, chunk_size=chunk_size)

    def flat(self) -> Tensor:
        """The module's current parameters as one detached ``(d,)`` vector (a start point x0)."""
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Views of ``x[..., :]`` shaped like each parameter (leading batch dims kept)."""
        lead = x.shape[:-1]
        return {n: v.reshape(*lead, *s) for n, v, s in zip(self.names, torch.split(x, self.sizes, dim=-1), self.shapes)}

    def values(self, points: Tensor) -> Tensor:
        """``(n,)`` losses of the ``(n, d)`` points in one vectorised call (no grad)."""
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (n, {self.dim}), got {tuple(points.shape)}")
        with torch.no_grad():
            return self._batched(self.unflatten(points))

    def values_loop(self, points: Tensor) -> Tensor:
        """The naive reference: one forward per point (what a per-query executor would do)."""
        with torch.no_grad():
            return torch.stack([self._loss_of(self.unflatten(row)) for row in points])

    def _loss_of(self, params: dict[str, Tensor]) -> Tensor:
        return self.criterion(functional_call(self.model, params, (self.inputs,)), self.targets)
