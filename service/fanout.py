"""EventHub: per-process fan-out of job event streams to SSE subscribers.

Without it every SSE subscriber held its own ``XREAD BLOCK`` on the shared connection pool:
each event woke every subscriber for three Redis round trips, and the 100th open stream took
the pool's last connection, after which every request of the process failed with 503.

The hub runs ONE reader task per API process. It issues one ``XREAD BLOCK`` over the streams of
all watched jobs (one connection, whatever the number of subscribers or jobs), formats each new
entry as an SSE frame once, and offers the batch to every subscriber's bounded queue.

Exactness (``Last-Event-ID`` resume loses and repeats nothing) does not rest on the hub: every
:class:`Batch` carries ``prev``, the reader's cursor before it. A subscriber whose own position
is before ``prev`` (it joined while the reader was ahead, or its queue overflowed and a batch
was dropped) reads the gap from Redis with ``XRANGE`` and drops rows it already sent. A new job
(its first subscriber appends to the process's own wake stream, which the blocked XREAD also
reads, so it returns and re-reads with the new key at once); its subscribers read everything
before that from Redis, so joining never loses rows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from zoserve.models.events import TERMINAL_TYPES

from . import keys

log = logging.getLogger(__name__)
Row = tuple[str, str, str]  # (stream id, event type, event json)
Entries = list[tuple[bytes, dict[bytes, bytes]]]


def sse_frame(rid: str, kind: str, data: str) -> str:
    """One SSE event: ``id`` is the stream id, ``event`` the type, ``data`` the JSON as stored."""
    return f"id: {rid}\nevent: {kind}\ndata: {data}\n\n"


def stream_id(rid: str) -> tuple[int, int]:
    """A Redis Stream id as a comparable pair (``"0"`` and ``"5"`` mean ``5-0``)."""
    ms, _, seq = rid.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Batch:
    """New entries of one job, in stream order, with the cursor before them.

    What subscribers share is computed at most once per batch, and only when one needs it: the SSE
    frames (a subscriber that keeps some types formats just those), the rows' stream ids (needed only
    by a subscriber that already sent some of these rows during its catch-up).
    """

    prev: str
    rows: tuple[Row, ...]
    prev_key: tuple[int, int] = (0, 0)
    terminal: bool = False

    @functools.cached_property
    def frames(self) -> tuple[str, ...]:
        return tuple(sse_frame(*r) for r in self.rows)

    @functools.cached_property
    def keys(self) -> tuple[tuple[int, int], ...]:
        return tuple(stream_id(r[0]) for r in self.rows)


@dataclass(eq=False)
class Subscription:
    """One subscriber's queue of batches; ``lagged`` is set when a batch was dropped (queue full)."""

    queue: asyncio.Queue[Batch]
    lagged: bool = False

    def offer(self, batch: Batch) -> bool:
        """Queue ``batch``; False (and ``lagged``) when the queue is full and it was dropped."""
        try:
            self.queue.put_nowait(batch)
            return True
        except asyncio.QueueFull:
            self.lagged = True  # the subscriber re-reads the gap from Redis
            return False


@dataclass(eq=False)
class _Feed:
    cursor: str | None = None  # last id the reader has seen; None until known
    subs: set[Subscription] = field(default_factory=set)


class EventHub:
    """Fan-out of ``zo:job:{id}:events`` streams; one reader task per process, started lazily."""

    # block_ms stays well under redis-py's default socket timeout (5 s): a read racing it fails as TimeoutError
    def __init__(self, client: aioredis.Redis, block_ms: int = 2000, queue_size: int = 1024, count: int = 2000):
        self._r, self.block_ms, self.queue_size, self.count = client, block_ms, queue_size, count
        self._feeds: dict[str, _Feed] = {}
        self.dropped = 0  # batches dropped on full queues (each one a gap read from Redis)
        self._closing = False
        self._wake = asyncio.Event()  # in-process: the reader idles on it while nothing is watched
        self._wake_key, self._wake_cursor = keys.hub_wake(uuid.uuid4().hex), "0-0"  # in Redis: interrupts XREAD
        self._in_xread = False
        self._task: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        """Receive every batch of ``job_id`` appended from about now on, until the block exits."""
        sub = Subscription(asyncio.Queue(self.queue_size))
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed()
        feed.subs.add(sub)
        try:
            if feed.cursor is None:
                last = await self._r.xrevrange(keys.events(job_id), count=1)
                if feed.cursor is None:  # another subscriber may have set it meanwhile
                    feed.cursor = _text(last[0][0]) if last else "0-0"
                    if self._in_xread:  # the reader is blocked on the other jobs: make it re-read
                        await self._poke()
            self._ensure_reader()
            yield sub
        finally:
            feed.subs.discard(sub)
            if not feed.subs and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]

    def watched(self) -> int:
        """Jobs with at least one subscriber (for tests and metrics)."""
        return len(self._feeds)

    async def aclose(self) -> None:
        """Stop the reader (the app's lifespan calls this before closing Redis).

        The reader checks a flag between reads, and a poke on the wake stream ends the read in
        flight. Cancelling is only the fallback: redis-py can absorb a cancellation that lands
        inside a blocking command (seen here: the task then sat out the whole XREAD block).
        """
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            if self._in_xread:
                try:
                    await self._poke()
                except Exception:  # noqa: BLE001 - Redis gone: cancel below
                    pass
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=5)
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("event hub: the reader had failed", exc_info=task.exception())
        try:
            await self._r.delete(self._wake_key)
        except Exception:  # noqa: BLE001 - best effort; the key expires anyway
            pass

    async def _poke(self) -> None:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=8, approximate=True)
            pipe.expire(self._wake_key, 3600)
            await pipe.execute()

    def _ensure_reader(self) -> None:
        if self._closing:
            raise RuntimeError("the event hub is closed")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="zoserve-event-hub")
        self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            jobs = {keys.events(j): j for j, f in self._feeds.items() if f.cursor is not None}
            if not jobs:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams = {self._wake_key: self._wake_cursor, **{k: self._feeds[j].cursor for k, j in jobs.items()}}
            try:
                self._in_xread = True
                res = await self._r.xread(streams, count=self.count, block=self.block_ms)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis restarting: subscribers poll on keep-alive; retry
                if self._closing:  # a cancel during shutdown can surface as redis' TimeoutError
                    return
                log.warning("event hub: XREAD failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            finally:
                self._in_xread = False
            for key, entries in cast(list[tuple[bytes, Entries]], res or []):
                if _text(key) == self._wake_key:
                    self._wake_cursor = _text(entries[-1][0])
                else:
                    self._deliver(jobs[_text(key)], entries)

    def _deliver(self, job_id: str, entries: Entries) -> None:
        feed = self._feeds.get(job_id)
        if feed is None or feed.cursor is None:
            return  # nobody is watching any more
        floor = stream_id(feed.cursor)
        skip = 0  # entries at or before the cursor: a feed re-created mid-read (ids ascend, so a prefix)
        while skip < len(entries) and stream_id(entries[skip][0].decode()) <= floor:
            skip += 1
        rows = tuple((rid.decode(), f[b"t"].decode(), f[b"e"].decode()) for rid, f in entries[skip:])
        if not rows:
            return
        batch = Batch(feed.cursor, rows, floor, any(r[1] in TERMINAL_TYPES for r in rows))
        feed.cursor = rows[-1][0]
        for sub in feed.subs:
            if not sub.offer(batch):
                self.dropped += 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
