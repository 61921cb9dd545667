"""Recovery mechanics one by one: outbox and reaper, crash counting and poison jobs, idempotent
commits, waiting jobs ignoring stray segments, and a broker that refuses pickled messages."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from kombu import Connection, Exchange, Producer

from service import keys, scripts
from service.embedded import EmbeddedRedis, free_port
from service.queue import FED_RELAUNCH, RUN_SEGMENT, Sender, enqueue_segment, fed_task_id, make_celery
from service.settings import Settings
from service.store import JobStore
from tests.conftest import OUT
from tests.support.chaos import Worker
from tests.support.stack import wait_until
from workers.jobstore import LeaseRefused, ProgressRun, WorkerStore
from workers.runner import PROGRESS_KEYS, ProgressRow
from workers.reaper import Reaper
from zoserve.models.jobs import job_create_adapter

SPEC = {"algorithm": "zo-sgd", "objective": {"kind": "builtin", "function": "sphere", "dim": 4},
        "budget": {"max_steps": 20}}


def create(url: str, body: dict[str, object] = SPEC, tenant: str = "t") -> tuple[str, str]:
    """A job recorded the way the API records it, but never sent (as if the API died right after)."""

    async def go() -> tuple[str, str]:
        client = aioredis.Redis.from_url(url)
        try:
            store = JobStore(client)
            h, _ = await store.create_job(tenant, job_create_adapter.validate_python(body), None)
            return h["id"], (await client.hget(keys.job(h["id"]), "ticket")).decode()
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture()
def bare(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """A Redis no worker listens to."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server.url, redis.Redis.from_url(server.url)


def test_dead_segment_is_revived_with_a_new_ticket_and_counted_until_poison(bare: tuple[str, redis.Redis]) -> None:
    url, r = bare
    job_id, t0 = create(url)
    assert r.zscore(keys.OUTBOX, f"{job_id}|{t0}") is not None  # recorded with the job
    store = WorkerStore(r, lease_ttl=1, maxlen=1000, max_crashes=2)
    store.acquire(job_id, t0)
    assert r.zscore(keys.OUTBOX, f"{job_id}|{t0}") is None and r.sismember(keys.OPEN, job_id)
    assert store.revive(job_id) is None  # its lease is live: not dead yet
    time.sleep(1.1)  # the segment "died": lease expired, never released
    t1, queue = store.revive(job_id)  # type: ignore[misc]
    assert queue == "cpu" and r.zscore(keys.OUTBOX, f"{job_id}|{t1}") is not None
    with pytest.raises(LeaseRefused) as stale:
        store.acquire(job_id, t0)  # the dead worker's message, redelivered later
    assert stale.value.code == -3
    store.acquire(job_id, t1)
    assert r.hget(keys.job(job_id), "crashes") == b"1"
    time.sleep(1.1)
    t2, _ = store.revive(job_id)  # type: ignore[misc]
    with pytest.raises(LeaseRefused) as poison:
        store.acquire(job_id, t2)
    assert poison.value.code == -6 and poison.value.info.endswith("|2")
    # a segment that ends normally resets the count
    other, ticket = create(url)
    lease = store.acquire(other, ticket)
    assert store.commit(other, lease.token, events=[("progress", "{}")], release=True) == 0
    assert r.hmget(keys.job(other), "open", "crashes") == [b"", b"0"] and not r.sismember(keys.OPEN, other)


def test_commit_retried_after_a_lost_reply_applies_once(bare: tuple[str, redis.Redis]) -> None:
    url, r = bare
    job_id, ticket = create(url)
    store = WorkerStore(r, lease_ttl=30, maxlen=1000)
    lease = store.acquire(job_id, ticket)
    commit = r.register_script(scripts.COMMIT)
    op = json.dumps({"hset": {"progress": "{}"}, "queries": {}, "release": False, "lease_ttl": 30, "maxlen": 1000,
                     "cid": uuid.uuid4().hex, "job": job_id, "outbox": "", "due": 0})
    ks = [keys.fence(job_id), keys.lease(job_id), keys.job(job_id), keys.events(job_id), keys.checkpoint(job_id),
          keys.queries(job_id), keys.OUTBOX, keys.OPEN]
    before = r.xlen(keys.events(job_id))
    for _ in range(2):  # redis-py retries the same EVALSHA when the connection drops after Redis ran it
        assert commit(keys=ks, args=[lease.token, op, b"", "progress", '{"step": 1}']) == 0
    assert r.xlen(keys.events(job_id)) == before + 1


def test_a_step_is_published_once_and_progress_never_moves_back(bare: tuple[str, redis.Redis]) -> None:
    """The store's guard behind the replay logic: whatever a segment believes it must publish, a step
    already in the stream is not appended again and the job's progress does not regress."""
    url, r = bare
    job_id, ticket = create(url)
    store = WorkerStore(r, lease_ttl=30, maxlen=1000)
    lease = store.acquire(job_id, ticket)
    progress = [("progress", {"type": "progress", "time": 0.0, "step": s, "queries": 3 * s, "failed_queries": 0,
                              "evaluations": 3 * s, "value": 1.0 / s, "best_value": 1.0 / s, "extra": {}}) for s in (1, 2, 3)]
    assert store.commit(job_id, lease.token, events=progress[:2]) == 0
    assert store.commit(job_id, lease.token, events=[progress[1], progress[2]]) == 0  # step 2 again, then 3
    assert store.commit(job_id, lease.token, events=[progress[0]],  # a stale segment's final commit
                        hset={"progress": json.dumps({"step": 1})}) == 0
    steps = [json.loads(f[b"e"])["step"] for _, f in r.xrange(keys.events(job_id)) if f[b"t"] == b"progress"]
    assert steps == [1, 2, 3]
    h = r.hgetall(keys.job(job_id))
    assert json.loads(h[b"progress"])["step"] == 3 and h[b"published_step"] == b"3" and h[b"republished_dropped"] == b"2"


def test_progress_runs_are_split_into_one_entry_per_step_and_deduplicated(bare: tuple[str, redis.Redis]) -> None:
    """A sink's flush sends its steps as one run (JSON lines); the script appends one ``progress`` entry per
    line, in order, each exactly as serialised, and drops the steps already in the stream like single events."""
    url, r = bare
    job_id, ticket = create(url)
    store = WorkerStore(r, lease_ttl=30, maxlen=1000)
    lease = store.acquire(job_id, ticket)

    def row(step: int) -> ProgressRow:
        return (1.7e9 + step, step, 3 * step, 0, 3 * step, 1.0 / step, 1.0 / step, {"lr": 0.1})

    def event(step: int) -> dict[str, Any]:
        return {"type": "progress", "step": step, "queries": 3 * step, "failed_queries": 0,
                "evaluations": 3 * step, "value": 1.0 / step, "best_value": 1.0 / step, "extra": {"lr": 0.1}}

    def run(first: int, last: int) -> ProgressRun:
        out = ProgressRun([row(first)])  # handed over in two parts, as by two flushes
        assert out.add([row(s) for s in range(first + 1, last)]) and out.add([row(last)])
        assert not out.add([row(last + 2)])  # not the next step: the sink starts a new run
        return out

    assert store.commit(job_id, lease.token, events=[("progress", run(1, 3))]) == 0
    assert store.commit(job_id, lease.token, events=[("progress", run(2, 5)), ("status", '{"type": "status"}')]) == 0
    rows = [(f[b"t"].decode(), json.loads(f[b"e"])) for _, f in r.xrange(keys.events(job_id))]
    progress = [e for t, e in rows if t == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4, 5] and rows[-1][0] == "status"
    assert progress[3] == {**event(4), "time": "2023-11-14T22:13:24+00:00"}
    h = r.hgetall(keys.job(job_id))
    assert h[b"published_step"] == b"5" and h[b"republished_dropped"] == b"2"
    assert json.loads(h[b"progress"]) == {k: event(5)[k] for k in PROGRESS_KEYS}


def test_a_waiting_job_ignores_stray_segments(bare: tuple[str, redis.Redis]) -> None:
    url, r = bare
    job_id, ticket = create(url)
    store = WorkerStore(r, lease_ttl=30, maxlen=1000)
    lease = store.acquire(job_id, ticket)
    store.commit(job_id, lease.token, hset={"status": "waiting", "pending_query": "q1"}, release=True)
    events = r.xlen(keys.events(job_id))
    with pytest.raises(LeaseRefused) as refused:  # a duplicate of the segment that asked the question
        store.acquire(job_id, ticket)
    assert refused.value.code == -3 and r.xlen(keys.events(job_id)) == events  # no second query event


def test_reaper_resends_a_lost_send_once_and_drops_stale_entries(bare: tuple[str, redis.Redis], tmp_path: Path) -> None:
    url, r = bare
    celery = make_celery(Settings(redis_url=url, data_dir=tmp_path), url)
    lost, ticket = create(url)
    rotated, old = create(url)
    r.hset(keys.job(rotated), "ticket", "newer")  # its segment ran and moved on; the entry is stale
    store = WorkerStore(r, lease_ttl=30, maxlen=1000)
    reaper = Reaper(store, celery, every=0.3)
    assert reaper.sweep() == {"revived": 0, "resent": 0, "vanished": 0}  # too young: its sender may still be sending
    time.sleep(0.4)
    assert reaper.sweep() == {"revived": 0, "resent": 1, "vanished": 0}
    assert r.zcard(keys.OUTBOX) == 0
    messages = [json.loads(m) for m in r.lrange("cpu", 0, -1)]
    assert [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages] == [(RUN_SEGMENT, repr([lost, ticket]))]
    time.sleep(0.4)
    assert reaper.sweep() == {"revived": 0, "resent": 0, "vanished": 0}  # sent once


def test_reaper_finds_a_message_that_vanished_from_the_broker(bare: tuple[str, redis.Redis], tmp_path: Path) -> None:
    """A worker SIGKILLed between kombu's BRPOP and its unacked bookkeeping takes the message with it."""
    url, r = bare
    celery = make_celery(Settings(redis_url=url, data_dir=tmp_path), url)
    (lost, t_lost), (queued, t_queued) = create(url), create(url)
    for job_id, ticket in ((lost, t_lost), (queued, t_queued)):
        r.zrem(keys.OUTBOX, f"{job_id}|{ticket}")  # both senders finished sending...
        r.hset(keys.job(job_id), "updated_at", "2020-01-01T00:00:00+00:00")  # ...long ago
    enqueue_segment(celery, queued, t_queued, None)  # but only this message is still in the broker
    reaper = Reaper(WorkerStore(r, lease_ttl=30, maxlen=1000), celery, every=0.2)
    assert reaper.sweep() == {"revived": 0, "resent": 1, "vanished": 1}
    args = sorted(json.loads(m)["headers"]["argsrepr"] for m in r.lrange("cpu", 0, -1))
    assert args == sorted([repr([lost, t_lost]), repr([queued, t_queued])])  # same ticket: a duplicate is harmless
    assert reaper.find_vanished() == 0  # a job waiting in the queue is left alone
    r.hset(keys.job(queued), "status", "succeeded")
    reaper.find_vanished()
    assert not r.sismember(keys.ACTIVE, queued) and r.sismember(keys.ACTIVE, lost)


FED = {"algorithm": "fedzo", "config": {"rounds": 5}, "objective": {"kind": "federated", "family": "quadratic",
       "n_clients": 3, "dim": 4}, "budget": {"max_steps": 5}}


def test_reaper_relaunches_a_federated_round_none_of_whose_messages_is_left(
        bare: tuple[str, redis.Redis], tmp_path: Path) -> None:
    """Celery's chords are not crash-safe: a worker that dies after storing its client's result, before
    the callback is sent, leaves the round with no message at all. Two scans in a row that find none
    relaunch the next round, once; a job with a message anywhere (queued or unacked) is left alone."""
    url, r = bare
    celery = make_celery(Settings(redis_url=url, data_dir=tmp_path), url)
    (lost, t_lost), (busy, t_busy) = create(url, FED), create(url, FED)
    for job_id, ticket in ((lost, t_lost), (busy, t_busy)):  # started: round 2 done, no lease, nothing to send
        r.zrem(keys.OUTBOX, f"{job_id}|{ticket}")
        r.hset(keys.job(job_id), mapping={"status": "running", "fed_round": "2",
                                          "updated_at": "2020-01-01T00:00:00+00:00"})
    r.hset("unacked", "tag-1", json.dumps({"headers": {"id": fed_task_id(busy, "local3.0")}}))  # a client at work
    reaper = Reaper(WorkerStore(r, lease_ttl=30, maxlen=1000), celery, every=0.2)
    assert reaper.find_vanished() == 1 and r.llen("cpu") == 0  # once could be kombu's BRPOP instant: wait
    assert reaper.find_vanished() == 1  # twice: relaunch
    [message] = [json.loads(m) for m in r.lrange("cpu", 0, -1)]
    assert message["headers"]["task"] == FED_RELAUNCH and message["headers"]["argsrepr"] == repr([lost, 3])
    assert message["headers"]["id"].startswith(lost)  # so the next scan finds it
    assert reaper.find_vanished() == 0 and r.llen("cpu") == 1  # the relaunch is on its way: not again


def test_sender_drops_sent_entries_and_leaves_a_failed_send_to_the_reaper(
        bare: tuple[str, redis.Redis], tmp_path: Path) -> None:
    """The API's Sender: what it sends leaves the outbox; a send the broker refused stays there (the
    reaper's to send), and neither the rest of its batch nor the next batch is held up."""
    url, r = bare
    settings = Settings(redis_url=url, data_dir=tmp_path)
    celery = make_celery(settings, url)
    down = make_celery(settings, f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    down.conf.update(task_publish_retry=False, broker_transport_options={"max_retries": 0})  # fail at once
    first, failed, after, later = (create(url) for _ in range(4))

    async def go() -> None:
        client = aioredis.Redis.from_url(url)
        sender = Sender(JobStore(client).sent_many)
        try:
            for app, (job_id, ticket) in ((celery, first), (down, failed), (celery, after)):  # one batch
                await sender.send(app, job_id, ticket, None)
            for _ in range(200):  # until that batch is done
                if await client.zscore(keys.OUTBOX, "|".join(first)) is None:
                    break
                await asyncio.sleep(0.05)
            await sender.send(celery, *later, None)  # the next batch
        finally:
            await sender.aclose()
            await client.aclose()

    asyncio.run(go())
    sent = [json.loads(m)["headers"]["argsrepr"] for m in r.lrange("cpu", 0, -1)]
    assert sorted(sent) == sorted(repr(list(segment)) for segment in (first, after, later))
    assert [m.decode() for m in r.zrange(keys.OUTBOX, 0, -1)] == ["|".join(failed)]


def test_lost_send_still_runs_on_the_live_stack(redis_server: EmbeddedRedis, worker: object) -> None:
    """The API 'died' after recording the job: a worker's reaper sends it (reaper_seconds=5)."""
    job_id, _ = create(redis_server.url, tenant="tenant-a")
    r = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: r.hget(keys.job(job_id), "status") == b"succeeded", timeout=30)


@pytest.mark.slow
def test_poison_job_fails_after_n_crashes_and_others_flow(tmp_path: Path) -> None:
    """Segments of a job named poison* kill their worker process (os._exit, see tests/support/poison_app.py)."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        r = redis.Redis.from_url(server.url)
        w = Worker(server.url, "poison", tmp_path / "worker.log", app="tests.support.poison_app", pool="prefork",
                   ZOSERVE_LEASE_SECONDS="5", ZOSERVE_REAPER_SECONDS="1", ZOSERVE_SEGMENT_MAX_CRASHES="2",
                   ZOSERVE_DATA_DIR=str(tmp_path / "data"))
        try:
            w.start()
            celery = make_celery(Settings(redis_url=server.url, data_dir=tmp_path), server.url)
            poison, ticket = create(server.url, {**SPEC, "name": "poison-1"})
            enqueue_segment(celery, poison, ticket, None)
            good = []
            for i in range(3):
                job_id, t = create(server.url, {**SPEC, "name": f"good-{i}", "seed": i})
                enqueue_segment(celery, job_id, t, None)
                good.append(job_id)
            status = lambda j: (r.hget(keys.job(j), "status") or b"").decode()  # noqa: E731
            wait_until(lambda: status(poison) in ("failed", "succeeded"), timeout=60)
            wait_until(lambda: all(status(j) == "succeeded" for j in good), timeout=30)
            assert w.proc is not None and w.proc.poll() is None  # the worker itself survived
        finally:
            w.stop()
        error = json.loads(r.hget(keys.job(poison), "error"))
        assert status(poison) == "failed" and error["type"] == "urn:zoserve:worker-lost", error
        assert "2 times in a row" in error["detail"]
        events = [f[b"t"] for _, f in r.xrange(keys.events(poison))]
        assert events.count(b"error") == 1 and b"result" not in events
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert log.count("WorkerLostError") >= 2 or log.count("exited with 'exitcode 13'") >= 2, log[-3000:]


def test_celery_refuses_pickled_messages(redis_server: EmbeddedRedis, worker: object, tmp_path: Path) -> None:
    """A pickle whose unpickling would create a file is published like a real task: the worker
    refuses the content type, never unpickles it, and runs no task."""
    marker = tmp_path / "unpickled"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (Path(marker),))  # type: ignore[return-value]

    task_id = "pickle-" + uuid.uuid4().hex
    log = OUT / "worker-w1.log"
    with Connection(redis_server.url) as conn:
        producer = Producer(conn.channel(), exchange=Exchange("cpu", type="direct"), routing_key="cpu",
                            serializer="pickle")
        producer.publish(((Exploit(), task_id), {}, {}), content_type=None,
                         headers={"lang": "py", "task": RUN_SEGMENT, "id": task_id, "argsrepr": "()",
                                  "kwargsrepr": "{}", "retries": 0, "root_id": task_id, "parent_id": None},
                         declare=[], serializer="pickle")

    def refusal() -> list[str] | None:  # the log quotes the raw body (with our task id), then the refusal
        lines = log.read_text(errors="replace").splitlines()
        at = [i for i, line in enumerate(lines) if task_id in line]
        return lines[at[0]:at[0] + 40] if at and any("ContentDisallowed" in ln for ln in lines[at[0]:at[0] + 40]) else None

    after = wait_until(refusal, timeout=20)
    assert any("Refusing to deserialize untrusted content of type pickle" in line for line in after)
    text = log.read_text(errors="replace")
    assert f"[{task_id}] received" not in text and f"[{task_id}] succeeded" not in text  # no task ran
    assert not marker.exists()  # and nothing was unpickled
