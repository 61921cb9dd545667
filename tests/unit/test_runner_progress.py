"""The step loop's progress rows: handed to the sink at each flush and however a segment ends."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest
import torch

from workers.algorithms.base import Query
from workers.algorithms.registry import build_algorithm
from workers.objectives.base import Evaluation, ObjectiveInvalid
from workers.objectives.builtin import BuiltinObjective
from workers.runner import Limits, MemorySink, Outcome, ProgressRow, Signal, initial_state, run_segment
from zoserve.models.algorithms import ZOSGDConfig


class RecordingSink(MemorySink):
    """Remembers each hand-over (its steps) and the number of events present at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.handovers: list[list[int]] = []
        self.at_flush: list[int] = []

    def progress(self, rows: list[ProgressRow]) -> None:
        self.handovers.append([row[1] for row in rows])
        super().progress(rows)

    def flush(self) -> Signal:
        self.at_flush.append(len(self.events))
        return Signal.OK


class BreaksAt:
    """A builtin sphere whose ``k``-th evaluation answers NaN (through the async path)."""

    def __init__(self, k: int):
        self.inner, self.k, self.calls = BuiltinObjective("sphere", 4), k, 0

    async def evaluate(self, query: Query) -> Evaluation:
        self.calls += 1
        if self.calls == self.k:
            raise ObjectiveInvalid("objective returned a non-finite value (nan) at point 0")
        return self.inner.answer(query)


def run(objective: Any, sink: MemorySink, **limits: Any) -> Any:
    algo = build_algorithm("zo-sgd", ZOSGDConfig(q=3, lr=1e-2).hparams())
    state = initial_state(algo, torch.ones(4, dtype=torch.float64), 0)
    return asyncio.run(run_segment(algo, state, objective, sink, Limits(**limits)))


def test_every_flush_sees_the_steps_before_it_and_the_end_delivers_the_rest() -> None:
    sink = RecordingSink()
    res = run(BuiltinObjective("sphere", 4), sink, max_steps=7, flush_seconds=0.0)
    assert res.outcome is Outcome.DONE and res.tally.step == 7
    assert [ev["step"] for ev in sink.events] == list(range(1, 8))
    assert sink.at_flush == list(range(1, 8))  # flushing each step: each flush follows its step's event
    assert all(len(h) == 1 for h in sink.handovers)
    last = sink.events[-1]
    assert last["type"] == "progress" and last["queries"] == res.tally.queries and last["best_value"] == res.tally.best_value
    assert isinstance(last["time"], datetime) and last["time"].tzinfo is timezone.utc and set(last["extra"]) == {"grad_norm", "lr"}


def test_steps_between_flushes_arrive_as_one_run() -> None:
    sink = RecordingSink()
    run(BuiltinObjective("sphere", 4), sink, max_steps=50, flush_seconds=3600.0)
    assert sink.handovers == [list(range(1, 51))] and sink.at_flush == []


def test_a_failing_objective_still_delivers_the_steps_before_it() -> None:
    sink = RecordingSink()
    with pytest.raises(ObjectiveInvalid):
        run(BreaksAt(5), sink, max_steps=50, flush_seconds=3600.0)
    assert [ev["step"] for ev in sink.events] == [1, 2, 3, 4]  # the task commits them with the error


def test_builtin_objectives_answer_without_the_event_loop_unless_they_simulate_latency() -> None:
    fast, slow = BuiltinObjective("sphere", 4), BuiltinObjective("sphere", 4, latency_ms=1.0)
    assert fast.values_now is not None and slow.values_now is None
    q = Query(points=torch.zeros(2, 4, dtype=torch.float64))
    assert fast.values_now(q.points).tolist() == asyncio.run(slow.evaluate(q)).answer.values.tolist() == [0.0, 0.0]
    res = run(slow, MemorySink(), max_steps=3)
    assert res.tally.step == 3  # the async path still runs the loop


class ObservingSink(MemorySink):
    """A sink that takes the objective-latency samples the runner offers (as RedisSink does for /metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, int]] = []

        self.counted: list[int] = []

    def observe(self, seconds: float, queries: int) -> None:
        self.samples.append((seconds, queries))

    def count_queries(self, queries: int) -> None:
        self.counted.append(queries)


def test_objective_latency_is_sampled_for_awaited_evaluations_and_every_query_is_counted() -> None:
    fast, slow = ObservingSink(), ObservingSink()
    res = run(BuiltinObjective("sphere", 4), fast, max_steps=5, flush_seconds=0.0)  # computed in the step
    run(BuiltinObjective("sphere", 4, latency_ms=2.0), slow, max_steps=5)
    assert fast.samples == [] and fast.counted == [4] * 5 and sum(fast.counted) == res.tally.queries
    assert [q for _, q in slow.samples] == [4] * 5 and all(s >= 0.002 for s, _ in slow.samples)
    assert slow.counted == []  # its queries came with the latency samples
    once = ObservingSink()
    run(BuiltinObjective("sphere", 4), once, max_steps=5, flush_seconds=3600.0)
    assert once.counted == [20]  # one count when the segment ends
