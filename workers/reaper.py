"""The reaper: a thread in every worker's main process that finds segments nobody will run.

Two ways a job can be left with no segment on its way, and what the reaper does about each:

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

Jobs that merely wait in a long queue are never touched: their message exists, their sender
removed its outbox entry, and no segment holds or held their lease.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from celery import Celery

from service import keys
from service.queue import enqueue_segment

from .jobstore import WorkerStore

log = logging.getLogger("zoserve.reaper")


class Reaper:
    """Sweeps every ``every`` seconds; :meth:`sweep` is one pass (tests call it directly)."""

    def __init__(self, store: WorkerStore, app: Celery, every: float):
        self.store, self.app, self.every = store, app, every
        self._stop = threading.Event()

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
        """Revive dead segments, re-send lost sends; returns how many of each."""
        revived = resent = 0
        for raw in self.store.r.smembers(keys.OPEN):
            job_id = raw.decode()
            found = self.store.revive(job_id)
            if found is not None:
                ticket, queue = found
                enqueue_segment(self.app, job_id, ticket, queue)
                self.store.sent(job_id, ticket)
                log.warning("reaper: revived %s (its segment died); new ticket %s", job_id, ticket)
                revived += 1
        due = self.store.r.zrangebyscore(keys.OUTBOX, "-inf", time.time() - self.every, start=0, num=500)
        for raw in due:
            found = self.store.resend(raw.decode())
            if found is not None:
                job_id, ticket, queue = found
                enqueue_segment(self.app, job_id, ticket, queue)
                self.store.sent(job_id, ticket)
                log.warning("reaper: re-sent %s ticket %s (its sender died before sending)", job_id, ticket)
                resent += 1
        return {"revived": revived, "resent": resent}
