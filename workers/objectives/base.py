"""Objective adapters: turn an algorithm's :class:`Query` into an :class:`Answer`.

All objective I/O lives in this package; the algorithm cannot tell a builtin function from
an HTTP endpoint or a human. An adapter is built from the job's validated objective spec
(``zoserve.models.objectives``) by ``registry.build_objective``.

Contract (run against every adapter by ``tests/contract/test_objectives.py``):

* ``evaluate(query)`` returns an :class:`Evaluation` (answer now) or :class:`Pending` (the
  answer comes later from outside: a client program or a person). It never returns NaN or
  inf values: it raises :class:`ObjectiveInvalid` instead, or substitutes the configured
  penalty and counts the point as failed.
* ``values_now(points)`` (optional, sync): the checked values (one float64 per point) for adapters of
  value queries that never wait nor fail a point (builtin functions). The runner then builds neither a
  coroutine nor an :class:`Evaluation` per step and charges one query per point. ``None`` or absent:
  ``evaluate`` is used.
* ``resolve(query, payload)`` turns an answer posted through the API into an
  :class:`Evaluation`; only adapters that return :class:`Pending` implement it.
* ``Evaluation.queries`` is what the step costs against ``budget.max_queries``.
* Points arrive on the CPU unless the adapter sets ``on_device = True`` (it computes with torch
  on whatever device the algorithm runs on: a GPU worker's ``cuda``).

Exception tree::

    ObjectiveError            base; fails the job with ``str(exc)`` as the reason
    ├── ObjectiveTransient    retry the segment later (endpoint down, 429, 5xx past retries)
    ├── ObjectiveInvalid      bad answer: wrong shape, NaN/inf (fail, or penalise if configured)
    └── ObjectiveRefused      never try again (SSRF guard, bad configuration)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from workers.algorithms.base import Answer, Query


class ObjectiveError(Exception):
    """Base of objective failures. ``status``/``body`` describe a remote failure if any."""

    def __init__(self, message: str, *, status: int | None = None, body: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = body


class ObjectiveTransient(ObjectiveError):
    """Temporary failure: the segment is retried with backoff."""


class ObjectiveInvalid(ObjectiveError):
    """The objective answered, but the answer is unusable."""


class ObjectiveRefused(ObjectiveError):
    """The objective must not be called (refused address, bad configuration)."""


class Evaluation(NamedTuple):
    """An answer plus its cost (a named tuple: one is built per step, at a third of a frozen dataclass's cost).

    Attributes:
        answer: what the algorithm is told.
        queries: charged against ``budget.max_queries``.
        failed: how many of those failed (retried, penalised).
        evaluations: candidate evaluations behind the answer (rankings: m per oracle call).
        monitor: true objective value at the current iterate when the adapter can know it
            without telling the algorithm (simulated oracles); shown in progress events only.
    """

    answer: Answer
    queries: int
    failed: int = 0
    evaluations: int = 0
    monitor: float | None = None


@dataclass(frozen=True)
class Pending:
    """The answer must come from outside; ``payload`` is published as the pending query."""

    payload: dict[str, Any] = field(default_factory=dict)


class Objective(Protocol):
    """Adapter from queries to answers."""

    async def evaluate(self, query: Query) -> Evaluation | Pending: ...

    def resolve(self, query: Query, payload: dict[str, Any]) -> Evaluation: ...

    async def aclose(self) -> None: ...


_SHORT = 256  # up to here, ``tolist`` + ``sum`` beats a torch reduction


def check_values(values: Tensor, n: int) -> Tensor:
    """Validate a ``(n,)`` value vector; raise :class:`ObjectiveInvalid` with a clear reason.

    It runs once per step, so the common case costs one reduction: a Python sum over a short CPU
    vector (a torch op costs several µs more per step with the caches cold), a torch sum otherwise.
    """
    if not isinstance(values, Tensor) or values.dtype is not torch.float64:
        values = torch.as_tensor(values, dtype=torch.float64)
    if values.shape != (n,):
        values = values.reshape(-1)
        if values.numel() != n:
            raise ObjectiveInvalid(f"expected {n} values, got {values.numel()}")
    total = sum(values.tolist()) if n <= _SHORT and values.is_cpu else float(values.sum())
    if not math.isfinite(total):  # a non-finite value, or finite ones whose sum overflowed: look closer
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            idx = int(bad[0])
            raise ObjectiveInvalid(f"objective returned a non-finite value ({float(values[idx])}) at point {idx}")
    return values


def check_finite(values: Tensor, n: int) -> Tensor:
    """:func:`check_values` for a ``(n,)`` float64 vector the adapter computed itself, so only finiteness can be
    wrong: the common case is one Python sum and no tensor attribute reads (the step loop's hot path)."""
    if n <= _SHORT and math.isfinite(sum(values.tolist())):
        return values
    return check_values(values, n)
