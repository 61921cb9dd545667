"""The ask/tell contract every algorithm implements.

Algorithms are PURE: they import torch and the standard library only (no celery, redis,
httpx or pydantic), take plain hyperparameters, and keep all their state in an explicit
``State`` mapping so that a job can checkpoint after any step and resume on another worker.

Contract (checked by ``tests/unit/test_algorithm_battery.py`` for every registry entry):

* ``init(x0, seed)`` returns the initial state. It is deterministic.
* ``ask(state)`` returns the next :class:`Query`. It is deterministic in ``state`` (random
  directions come from a generator seeded by ``(seed, step)``), so asking twice, or asking
  again after a checkpoint round trip, gives the same query.
* ``tell(state, query, answer)`` returns ``(new_state, StepInfo)``. It never mutates its
  inputs. One ``tell`` is one algorithm *step*.
* ``State`` values are tensors, ints, floats, bools or strings (see ``checkpoint.py``).
* ``x_of(state)`` is the current iterate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Protocol

import torch
from torch import Tensor

StateValue = Tensor | int | float | bool | str
State = Mapping[str, StateValue]

QueryKind = Literal["values", "ranking"]


@dataclass(frozen=True)
class Query:
    """Points the algorithm wants answered in one step.

    Attributes:
        points: ``(n, d)`` candidate points.
        kind: ``"values"`` wants one objective value per point; ``"ranking"`` wants the
            points ordered best-first.
        k: for rankings, how many best points are needed (``None`` = all ``n``).
    """

    points: Tensor
    kind: QueryKind = "values"
    k: int | None = None


@dataclass(frozen=True)
class Answer:
    """The objective's reply to a :class:`Query`.

    Attributes:
        values: ``(n,)`` objective values (minimisation), for ``"values"`` queries.
        ranking: indices into ``query.points``, best first, for ``"ranking"`` queries. May
            be partial (top-k). ``ties`` groups indices the oracle could not separate.
    """

    values: Tensor | None = None
    ranking: tuple[int, ...] | None = None
    ties: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class StepInfo:
    """What one step learned.

    Attributes:
        value: an estimate of f at the iterate *before* the update (e.g. the base point of
            a forward difference), or ``None`` when the algorithm cannot know it (rankings).
        x: the iterate that ``value`` belongs to.
        extra: small scalar diagnostics for the progress event (e.g. ``grad_norm``).
    """

    value: float | None
    x: Tensor
    extra: dict[str, float] = field(default_factory=dict)


class Algorithm(Protocol):
    """An ask/tell optimiser over tensors (minimisation)."""

    name: str

    def init(self, x0: Tensor, seed: int) -> State: ...

    def ask(self, state: State) -> Query: ...

    def tell(self, state: State, query: Query, answer: Answer) -> tuple[State, StepInfo]: ...

    def x_of(self, state: State) -> Tensor: ...


def step_generator(seed: int, step: int, stream: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator for one (seed, step, stream) triple: counter-based, so any step's random
    directions can be regenerated independently (no global RNG, safe in threaded workers)."""
    mixed = (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)
