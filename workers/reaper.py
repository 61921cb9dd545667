"""The reaper: a thread in every worker's main process that finds segments nobody will run.

The ways a job can be left with nothing on its way, and what the reaper does about each:

* **A segment died** (worker SIGKILLed, out of memory, a crash outside the task's handlers): it
  acquired a lease and never released it. Its Celery message only comes back after the broker's
  visibility timeout (and kombu's restore sweep), so the reaper does not wait for it: once the
  lease has expired it rotates the job's ticket and sends a fresh segment (``scripts.REVIVE``).
  The old message, if it ever returns, carries a stale ticket and is skipped. The next segment
  resumes from the last checkpoint; ``ACQUIRE`` counts the death towards the poison limit.
* **A send was lost** (the API or a worker died between recording a new ticket and handing its
  message to the broker, or Redis lost the last second of its AOF): every new ticket is written
  with an outbox entry in the same script, and the sender removes it after sending. Entries older
  than one period are re-sent with the *same* ticket (``scripts.RESEND``), so a duplicate is
  harmless: whichever message comes second finds the ticket used and is skipped.

* **A message vanished in the broker** (a worker SIGKILLed between kombu's ``BRPOP`` of the
  message and its bookkeeping of it as unacknowledged; Redis losing its last second of AOF after
  the sender had cleaned up): every ``STALL_EVERY`` sweeps, unfinished jobs that nothing holds
  (no lease, no open segment, no outbox entry) and that have not moved for a while are looked up
  in the broker's queues and unacknowledged messages; a ticket found nowhere goes back into the
  outbox, which sends it.
* **A federated round lost its chain** (a worker died after its client task's result was stored,
  before the chord's callback was sent, so Celery redelivers nothing; or between a round's
  checkpoint and the next round's launch): a federated job none of whose messages is left, at two
  scans in a row, gets its next round relaunched (``zoserve.fed.relaunch``).

Jobs that merely wait in a long queue are never touched: their message exists (and is found), their
sender removed its outbox entry, and no segment holds or held their lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import redis
from celery import Celery

from service import keys
from service.queue import QUEUES, enqueue_relaunch, enqueue_segment, fed_queues

from .jobstore import WorkerStore

log = logging.getLogger("zoserve.reaper")
STALL_EVERY = 6  # sweeps between broker scans for vanished messages (they cost O(queue length))
UNACKED = "unacked"  # kombu's Redis transport: hash delivery tag -> message held by a consumer


class Reaper:
    """Sweeps every ``every`` seconds; :meth:`sweep` is one pass (tests call it directly)."""

    def __init__(self, store: WorkerStore, app: Celery, every: float):
        self.store, self.app, self.every = store, app, every
        self._stop = threading.Event()
        self._sweeps = 0
        self._fed_suspects: set[bytes] = set()  # federated jobs with no message left at the last scan

    def start(self) -> "Reaper":
        threading.Thread(target=self._run, name="zoserve-reaper", daemon=True).start()
        log.info("reaper started: sweeping every %g s", self.every)
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sweep()
            except redis.RedisError as exc:  # Redis restarting: next period
                log.warning("reaper sweep failed: %s", exc)
            except Exception:  # noqa: BLE001 - the reaper must outlive any one bad entry
                log.exception("reaper sweep crashed")

    def sweep(self) -> dict[str, int]:
        """Revive dead segments, re-send lost sends (and, every STALL_EVERY sweeps, vanished messages)."""
        revived = resent = 0
        self._sweeps += 1
        lost = self.find_vanished() if self._sweeps % STALL_EVERY == 1 else 0
        for raw in self.store.r.smembers(keys.OPEN):
            job_id = raw.decode()  # type: ignore[union-attr]  # bytes: the client does not decode
            found = self.store.revive(job_id)
            if found is not None:
                ticket, queue = found
                enqueue_segment(self.app, job_id, ticket, queue)
                self.store.sent(job_id, ticket)
                log.warning("reaper: revived %s (its segment died); new ticket %s", job_id, ticket)
                revived += 1
        due = self.store.r.zrangebyscore(keys.OUTBOX, "-inf", time.time() - self.every, start=0, num=500)
        for raw in due:
            entry = self.store.resend(raw.decode())
            if entry is not None:
                job_id, ticket, queue = entry
                enqueue_segment(self.app, job_id, ticket, queue)
                self.store.sent(job_id, ticket)
                log.warning("reaper: re-sent %s ticket %s (its sender died before sending)", job_id, ticket)
                resent += 1
        return {"revived": revived, "resent": resent, "vanished": lost}

    def find_vanished(self) -> int:
        """Re-send unfinished jobs whose current message is nowhere; returns how many.

        A segment job's ticket goes back into the outbox, which sends it. A federated job (its tasks'
        ids start with its id) whose messages were all gone at two scans in a row gets its next round
        relaunched: one scan could fall in the instant between kombu's BRPOP and its unacked bookkeeping.
        """
        r = self.store.r
        ids = [raw.decode() for raw in r.smembers(keys.ACTIVE)]
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), "status", "ticket", "open", "updated_at", "fed_round", "queue", "spec")
            pipe.exists(keys.lease(job_id))
        rows = pipe.execute()
        now, segments, federated, queues = time.time(), {}, {}, set(QUEUES)
        for job_id, (status, ticket, open_, updated, fed, queue, spec), leased in zip(ids, rows[::2], rows[1::2]):
            st = (status or b"").decode()
            if st not in ("queued", "running", "waiting"):
                r.srem(keys.ACTIVE, job_id)  # finished (or gone)
            elif leased or open_ or not updated or now - datetime.fromisoformat(updated.decode()).timestamp() <= 2 * self.every:
                continue  # a segment holds it, or it moved lately
            elif fed is not None:  # federated: rounds run as chords
                if st == "running":
                    federated[job_id.encode()] = (job_id, int(fed) + 1, (queue or b"cpu").decode())
                    queues |= fed_queues(spec)
            elif st != "waiting" and ticket and r.zscore(keys.OUTBOX, f"{job_id}|{ticket.decode()}") is None:
                segments[ticket] = job_id
        suspects = {**segments, **federated}
        if suspects:
            for chunk in self._broker_messages(sorted(queues)):
                for needle in [n for n in suspects if n in chunk]:
                    del suspects[needle]
                if not suspects:
                    break
        for ticket in suspects.keys() & segments.keys():
            job_id = segments[ticket]
            r.zadd(keys.OUTBOX, {f"{job_id}|{ticket.decode()}": 0}, nx=True)  # due now: sent below
            log.warning("reaper: the segment message of %s vanished from the broker; re-sending it", job_id)
        lost = suspects.keys() & federated.keys()
        for needle in lost & self._fed_suspects:
            job_id, round_, queue = federated[needle]
            enqueue_relaunch(self.app, job_id, round_, queue)
            log.warning("reaper: no message of federated %s is left (round %d); relaunching the round", job_id, round_)
        self._fed_suspects = lost
        return len(suspects)

    def _broker_messages(self, queues: list[str], chunk: int = 1000) -> Iterator[bytes]:
        """The raw messages queued or held unacknowledged, a chunk at a time (tickets are unique hex)."""
        r = self.store.r
        for queue in queues:
            for start in range(0, int(r.llen(queue)), chunk):
                yield b"\n".join(r.lrange(queue, start, start + chunk - 1))
        cursor = 0
        while True:
            cursor, found = r.hscan(UNACKED, cursor, count=chunk)
            yield b"\n".join(found.values())
            if not cursor:
                return
