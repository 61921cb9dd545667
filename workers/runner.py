"""The runner: the only optimisation loop. ask → evaluate → tell → publish → check → repeat.

No celery or redis here: a :class:`Sink` receives progress and answers "keep going?", so the
same loop runs inside a Celery segment and in-process (``bench/``, tests).
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

import orjson
import torch
from torch import Tensor

from workers.algorithms.base import Algorithm, Answer, Query
from workers.objectives.base import Objective, Pending


class Outcome(str, enum.Enum):
    CONTINUE = "continue"  # time slice used up: checkpoint and requeue
    WAITING = "waiting"  # needs an outside answer
    DONE = "done"  # budget reached
    CANCELLED = "cancelled"
    FENCED = "fenced"  # a newer segment owns the job: stop writing


class Signal(str, enum.Enum):
    OK = "ok"
    CANCEL = "cancel"
    FENCED = "fenced"


ProgressRow = tuple[float, int, int, int, int, "float | None", "float | None", dict[str, Any]]
"""One step's progress as the step loop records it: (unix time, step, queries, failed_queries, evaluations,
value, best_value, extra). A tuple append is all a step pays; events are built from rows in bulk."""


def progress_event(row: ProgressRow) -> dict[str, Any]:
    """The ``progress`` event of a row (its time as an aware datetime)."""
    t, step, queries, failed, evaluations, value, best, extra = row
    return {"type": "progress", "time": datetime.fromtimestamp(t, timezone.utc), "step": step, "queries": queries,
            "failed_queries": failed, "evaluations": evaluations, "value": value, "best_value": best, "extra": extra}


class Sink(Protocol):
    """Where progress goes. ``flush`` persists buffered events and reports cancel/fencing."""

    def progress(self, rows: list[ProgressRow]) -> None:
        """Progress of consecutive steps, in order (handed over at each flush and at the segment's end)."""
        ...

    def flush(self) -> Signal: ...

    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class Limits:
    max_steps: int | None = None
    max_queries: int | None = None
    max_seconds: float | None = None
    segment_seconds: float = float("inf")
    flush_seconds: float = 0.25  # as Settings.flush_seconds; fewer writes, fewer wake-ups (bench/RESULTS.md, flush interval)


@dataclass
class Tally:
    """The runner's bookkeeping, checkpointed with the algorithm state under ``run.*`` keys."""

    step: int = 0
    queries: int = 0
    failed: int = 0
    evaluations: int = 0
    elapsed: float = 0.0
    value: float | None = None
    best_value: float | None = None
    x_best: Tensor | None = field(default=None, repr=False)
    published_step: int = 0  # highest step already in the event stream (replays stay silent)
    pending: str = ""  # id of the query the job waits on

    def to_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"run.{k}": v for k, v in self.__dict__.items() if v is not None and k != "x_best"}
        if self.x_best is not None:
            out["run.x_best"] = self.x_best
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Tally":
        kw = {k[4:]: v for k, v in state.items() if k.startswith("run.")}
        return cls(**kw)

    def record(self, queries: int, failed: int, evaluations: int, value: float | None, shown: float | None,
               x: Tensor, extra: dict[str, Any]) -> ProgressRow:
        """Count one told step and return its progress row, timed now. ``value`` is the algorithm's f(x) at
        ``x``; without one (rankings: the algorithm cannot know values) its iterate ``x`` is its answer and
        ``shown`` (the adapter's monitor) is what progress shows."""
        self.step += 1
        self.queries += queries
        self.failed += failed
        self.evaluations += evaluations
        if value is None:
            self.x_best = x
            self.value = value = shown
            if value is not None and (self.best_value is None or value < self.best_value):
                self.best_value = value
        else:
            self.value = value
            if self.best_value is None or value < self.best_value:
                self.best_value, self.x_best = value, x
        return self.row(extra)

    def row(self, extra: dict[str, Any]) -> "ProgressRow":
        """This step's progress row, timed now."""
        return (time.time(), self.step, self.queries, self.failed, self.evaluations, self.value, self.best_value, extra)

    def progress(self) -> dict[str, Any]:
        """The fields of a progress event (``PROGRESS_KEYS``), also the job's ``progress`` field."""
        return {"step": self.step, "queries": self.queries, "failed_queries": self.failed,
                "evaluations": self.evaluations, "value": self.value, "best_value": self.best_value}


PROGRESS_KEYS = tuple(Tally().progress())


@dataclass
class SegmentResult:
    """How a segment ended. Tensors stay out of ``repr``: ``asyncio.run`` formats its result when it
    returns (CPython 3.11's SIGINT-handler check), and a d = 1000 state took ~40 ms to print."""

    outcome: Outcome
    state: dict[str, Any] = field(repr=False)
    tally: Tally
    reason: str = ""
    query: Query | None = field(default=None, repr=False)
    pending: Pending | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def split_state(state: dict[str, Any]) -> tuple[dict[str, Any], Tally]:
    """Separate the algorithm's state from the runner's tally."""
    return {k: v for k, v in state.items() if not k.startswith("run.")}, Tally.from_state(state)


def budget_reason(tally: Tally, limits: Limits, next_cost: int = 0) -> str | None:
    """Why the job must stop now, or None."""
    if limits.max_steps is not None and tally.step >= limits.max_steps:
        return f"max_steps ({limits.max_steps}) reached"
    if limits.max_queries is not None and tally.queries + next_cost > limits.max_queries:
        return f"max_queries ({limits.max_queries}) reached"
    if limits.max_seconds is not None and tally.elapsed >= limits.max_seconds:
        return f"max_seconds ({limits.max_seconds:g}) reached"
    return None


def host_query(query: Query, objective: Objective) -> Query:
    """The query as ``objective`` takes it: points stay on the algorithm's device only for adapters that
    compute there (``on_device = True``, e.g. builtin functions); the rest (HTTP, people) get CPU points."""
    if getattr(objective, "on_device", False) or query.points.is_cpu:  # not .device: it builds an object per step
        return query
    return replace(query, points=query.points.cpu())


def wire_event(event: dict[str, Any]) -> bytes:
    """An event dict as stored JSON bytes (a unix ``time`` becomes ISO-8601). The runner's own events
    carry a datetime, which orjson writes directly (~0.5 µs an event, no copy)."""
    t = event.get("time")
    if isinstance(t, float):
        event = {**event, "time": datetime.fromtimestamp(t, timezone.utc)}
    return orjson.dumps(event, default=_plain)


async def run_segment(algo: Algorithm, state: dict[str, Any], objective: Objective, sink: Sink, limits: Limits,
                      answer: dict[str, Any] | None = None) -> SegmentResult:
    """Run steps until the budget, the time slice, a cancel or an outside answer stops them.

    Cancels are looked at when the segment starts and at every flush (each ``flush_seconds``, or
    each step when steps are slower), as the sink's fenced writes are. The loop is the hot path of
    cheap objectives (~100 µs steps at d = 1000): ``bench/overhead.py`` counts its cost. So a step only
    appends a :data:`ProgressRow`; the rows go to ``sink.progress`` before each flush and when the
    segment ends, however it ends (an objective error included).

    Args:
        state: algorithm state merged with the runner tally (``run.*``), as checkpointed.
        answer: the payload that answers ``tally.pending`` when the job resumes after waiting.
    """
    algo_state, tally = split_state(state)
    monitor = getattr(objective, "monitor", None)  # simulated oracles report the true f(x), for people only
    observe = getattr(sink, "observe", None)  # optional: (seconds, queries) per awaited evaluation, for /metrics
    on_device = getattr(objective, "on_device", False)
    ask, tell, evaluate, progress = algo.ask, algo.tell, objective.evaluate, sink.progress
    values_now = getattr(objective, "values_now", None)  # adapters that never wait: no coroutine per step
    # their queries reach /metrics as one count per hand-over, not one latency sample per step
    count_queries = getattr(sink, "count_queries", None) if values_now is not None else None
    rows: list[ProgressRow] = []  # progress since the last flush, handed to the sink in one call
    log = rows.append
    t0 = last_flush = time.monotonic()
    elapsed0 = tally.elapsed
    slice_end = t0 + limits.segment_seconds
    time_end = t0 + limits.max_seconds - elapsed0 if limits.max_seconds is not None else math.inf
    max_steps = limits.max_steps if limits.max_steps is not None else math.inf
    max_queries = limits.max_queries if limits.max_queries is not None else math.inf
    stop_at, monotonic = min(slice_end, time_end), time.monotonic  # one clock check a step for both limits

    def result(outcome: Outcome, reason: str = "", **kw: Any) -> SegmentResult:
        tally.elapsed = elapsed0 + (time.monotonic() - t0)
        return SegmentResult(outcome, {**algo_state, **tally.to_state()}, tally, reason, **kw)

    def told(query: Query, answer: Answer, queries: int, failed: int = 0, evaluations: int = 0,
             shown: float | None = None) -> None:
        """Tell the algorithm and count the step. Takes an :class:`Evaluation`'s fields in order, so
        ``told(query, *ev)``; ``evaluations`` 0 means one per query."""
        nonlocal algo_state
        algo_state, info = tell(algo_state, query, answer)
        value = info.value
        if value is None:
            x = algo.x_of(algo_state)
            if shown is None and monitor is not None:
                shown = monitor(x)
        else:
            x = info.x
        row = tally.record(queries, failed, evaluations or queries, value, shown, x, info.extra)
        if tally.step > tally.published_step:
            log(row)
            tally.published_step = tally.step

    counted = tally.queries  # the segment's queries already given to count_queries

    def publish() -> None:
        nonlocal counted
        if rows:
            progress(rows.copy())
            rows.clear()
        if count_queries is not None and tally.queries > counted:
            count_queries(tally.queries - counted)
            counted = tally.queries

    try:
        if sink.cancelled():
            return result(Outcome.CANCELLED, "cancelled")
        if tally.pending:
            query = ask(algo_state)
            if answer is None:
                return result(Outcome.WAITING, "waiting for an answer", query=query)
            told(query, *objective.resolve(host_query(query, objective), answer))
            tally.pending = ""

        while True:
            now = monotonic()
            if now >= stop_at:
                if now >= slice_end:
                    return result(Outcome.CONTINUE, "time slice used")
                return result(Outcome.DONE, f"max_seconds ({limits.max_seconds:g}) reached")
            query = ask(algo_state)
            cost = 1 if query.kind == "ranking" else query.points.shape[0]  # per point; per oracle call for rankings
            if tally.step >= max_steps or tally.queries + cost > max_queries:
                return result(Outcome.DONE, budget_reason(tally, limits, cost) or "budget reached")
            asked = query if on_device else host_query(query, objective)
            if values_now is not None:  # computed here and now (its time is the step's, not an objective
                told(query, Answer(values=values_now(asked.points)), cost)  # latency), a query per point
            else:
                t_eval = time.perf_counter()
                ev = await evaluate(asked)
                if isinstance(ev, Pending):
                    tally.pending = f"q{tally.step + 1}"
                    return result(Outcome.WAITING, "waiting for an answer", query=query, pending=ev)
                if observe is not None:
                    observe(time.perf_counter() - t_eval, ev.queries)
                told(query, *ev)
            if now - last_flush >= limits.flush_seconds:
                last_flush = now
                publish()
                signal = sink.flush()
                if signal is Signal.FENCED:
                    return result(Outcome.FENCED, "a newer segment owns the job")
                if signal is Signal.CANCEL or sink.cancelled():
                    return result(Outcome.CANCELLED, "cancelled")
    finally:  # the steps since the last flush reach the sink however the segment ends
        publish()


class MemorySink:
    """A sink that keeps events in memory (in-process runs, benchmarks, tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def progress(self, rows: list[ProgressRow]) -> None:
        self.events.extend(map(progress_event, rows))

    def flush(self) -> Signal:
        return Signal.OK

    def cancelled(self) -> bool:
        return False


def initial_state(algo: Algorithm, x0: Tensor, seed: int) -> dict[str, Any]:
    """The first checkpoint of a job."""
    return {**algo.init(x0.to(torch.float64), seed), **Tally().to_state()}


def result_body(tally: Tally, reason: str, x_fallback: Tensor) -> dict[str, Any]:
    """The ``Result`` of a finished job as JSON-able dict."""
    x = tally.x_best if tally.x_best is not None else x_fallback
    return {"x_best": [float(v) for v in x.reshape(-1).tolist()], "value_best": tally.best_value,
            "steps": tally.step, "queries": tally.queries, "reason": reason, "artifacts": []}


def dumps(obj: Any) -> str:
    """Compact JSON text (orjson: non-finite floats become null, 0-d tensors and numpy scalars numbers)."""
    return orjson.dumps(obj, default=_plain).decode()


def _plain(obj: Any) -> Any:
    item = getattr(obj, "item", None)  # 0-d tensors, numpy scalars
    if item is None:
        raise TypeError(f"{type(obj).__name__} is not JSON serializable")
    return item()
