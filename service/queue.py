"""The Celery side the API needs: configuration and enqueueing segments by task name.

The API never imports the workers; it sends ``zoserve.run_segment(job_id, ticket)`` by name
after the job record is written. Only ids travel through the broker; the spec stays in Redis.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from .settings import Settings

RUN_SEGMENT = "zoserve.run_segment"
QUEUES = ("cpu", "gpu")


def make_celery(settings: Settings, redis_url: str) -> Celery:
    """A Celery app configured for zoserve: JSON only, acks_late, prefetch 1, queues cpu and gpu."""
    app = Celery("zoserve", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_queues=[Queue(q) for q in QUEUES],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        result_expires=3600,
    )
    return app


def enqueue_segment(app: Celery, job_id: str, ticket: str, queue: str | None, countdown: float | None = None) -> None:
    """Send one segment of a job to its queue."""
    app.send_task(RUN_SEGMENT, args=[job_id, ticket], queue=queue or "cpu", countdown=countdown)
