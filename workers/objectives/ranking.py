"""Ranking oracles: answer "which of these m candidates are best?" (ZO-RankSGD's only feedback).

* ``builtin`` — a simulated oracle ranking by a test function (+ noise, + random flips);
  the true value at the iterate is reported as a monitor, never told to the algorithm.
* ``human`` / ``client`` — the query is published (candidates shuffled for display) and the job
  waits; a person (web form) or a program (``client.jobs.serve``) posts the ranking.

Display ids are shuffled per query from (points, seed), so resolving an answer needs no state:
the same shuffle is recomputed. The pending query also records the mapping.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from workers.algorithms.base import Answer, Query
from workers.algorithms.ranking import rank_by_values

from .base import Evaluation, ObjectiveInvalid, Pending
from .builtin import FUNCTIONS, default_x0, noise_generator

if TYPE_CHECKING:
    from .render import CandidateRenderer

ALPHABET = string.ascii_uppercase


def display_order(points: Tensor, seed: int) -> list[int]:
    """``order[j]`` = index of the point shown at display position j (deterministic shuffle)."""
    gen = noise_generator(points, seed ^ 0x5EED)
    return torch.randperm(points.shape[0], generator=gen).tolist()


def display_id(position: int) -> str:
    """Short labels a person can type: A..Z, then A1..Z1, ..."""
    letter, rnd = ALPHABET[position % 26], position // 26
    return letter if rnd == 0 else f"{letter}{rnd}"


def _k(query: Query) -> int:
    return query.k if query.k is not None else int(query.points.shape[0])


class BuiltinRankingOracle:
    """Ranks candidates by a builtin function; answers at once."""

    def __init__(self, function: str, dim: int, noise: float, flip_prob: float, seed: int, x0: float | None = None):
        self.fn = FUNCTIONS[function]
        self.function, self.dim, self.noise, self.flip_prob, self.seed = function, dim, noise, flip_prob, seed
        self.x0 = x0

    def default_x0(self) -> Tensor:
        return torch.full((self.dim,), float(self.x0), dtype=torch.float64) if self.x0 is not None else default_x0(self.function, self.dim)

    def monitor(self, x: Tensor) -> float:
        return float(self.fn(x.to(torch.float64)))

    async def evaluate(self, query: Query) -> Evaluation:
        values = self.fn(query.points.to(torch.float64))
        gen = noise_generator(query.points, self.seed) if (self.noise or self.flip_prob) else None
        ranking, ties = rank_by_values(values, _k(query), self.noise, self.flip_prob, gen)
        return Evaluation(Answer(ranking=tuple(ranking), ties=tuple(tuple(t) for t in ties)), queries=1,
                          evaluations=int(query.points.shape[0]))

    def resolve(self, query: Query, payload: dict[str, Any]) -> Evaluation:
        raise NotImplementedError("the builtin oracle answers at once")

    async def aclose(self) -> None:
        return None


class ExternalRankingOracle:
    """Publishes candidates (shuffled) and waits for a ranking of display ids, best first."""

    def __init__(self, dim: int, seed: int, render: str | None = None, x0: float | None = None,
                 renderer: CandidateRenderer | None = None):
        self.dim, self.seed, self.render, self.x0, self.renderer = dim, seed, render, x0, renderer

    def default_x0(self) -> Tensor:
        return torch.full((self.dim,), float(self.x0 or 0.0), dtype=torch.float64)

    async def evaluate(self, query: Query) -> Pending:
        order = display_order(query.points, self.seed)
        candidates = [{"id": display_id(j), "point": query.points[i].tolist()} for j, i in enumerate(order)]
        payload = {"candidates": candidates, "k": _k(query), "render": self.render,
                   "mapping": {display_id(j): i for j, i in enumerate(order)}}
        if self.renderer is not None:  # the user's generator draws them now; the runner stores the images
            images = await self.renderer.render(query.points[list(order)])
            payload["media"] = {c["id"]: image for c, image in zip(candidates, images)}
        return Pending(payload)

    def resolve(self, query: Query, payload: dict[str, Any]) -> Evaluation:
        ranking = payload.get("ranking")
        if not ranking:
            raise ObjectiveInvalid("a ranking query was answered without a ranking")
        order = display_order(query.points, self.seed)
        index = {display_id(j): i for j, i in enumerate(order)}
        try:
            picked = tuple(index[c] for c in ranking)
        except KeyError as exc:
            raise ObjectiveInvalid(f"unknown candidate id {exc.args[0]!r}") from None
        k = _k(query)
        if len(picked) < k or len(set(picked)) != len(picked):
            raise ObjectiveInvalid(f"rank at least the best {k} candidates, each once")
        # an (m, k) oracle: rankings longer than k are cut to k, as the builtin oracle answers
        return Evaluation(Answer(ranking=picked[:k]), queries=1, evaluations=int(query.points.shape[0]))

    async def aclose(self) -> None:
        if self.renderer is not None:
            await self.renderer.aclose()
