"""The worker's Celery app (``celery -A workers.celery_app worker``), configured from Settings."""

from __future__ import annotations

import os
import socket

from celery import signals

from service.embedded import discover_url
from service.queue import make_celery
from service.settings import get_settings


def redis_url() -> str:
    settings = get_settings()
    url = settings.redis_url or discover_url(settings.data_dir / "redis")
    if not url:
        raise RuntimeError("no Redis: set REDIS_URL, or start `zoserve up`/`zoserve api` (embedded Redis) first")
    return url


app = make_celery(get_settings(), redis_url())
app.conf.include = ["workers.tasks", "workers.federated"]

from . import observe  # noqa: E402,F401 - JSON logs with job ids, via Celery signals


@signals.worker_process_init.connect
@signals.worker_init.connect
def _limit_threads(**_: object) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("ZOSERVE_TORCH_THREADS", "1")))


@signals.worker_process_init.connect  # prefork children
@signals.worker_ready.connect  # the solo pool's process
def _freeze_heap(**_: object) -> None:
    """Move everything imported so far (~290k objects) out of the GC's reach: a full collection over
    it took ~180 ms and recurred while jobs ran; what jobs allocate is still collected."""
    import gc

    gc.collect()
    gc.freeze()


@signals.worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    import redis

    from .jobstore import Heartbeat

    name = getattr(sender, "hostname", None) or f"worker@{socket.gethostname()}:{os.getpid()}"
    Heartbeat(redis.Redis.from_url(redis_url()), str(name), get_settings().worker_heartbeat_seconds)
