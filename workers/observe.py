"""Worker observability, wired through Celery signals (imported by ``workers/celery_app.py``).

* JSON log lines (``ZOSERVE_LOG_JSON``): the formatter of ``service/logs.py`` on Celery's root and
  task loggers, stamped with this worker's node name.
* Job ids in logs: ``task_prerun`` binds the job id (a segment's first argument) and the task id
  to context variables for the segment; ``task_postrun`` logs one ``segment done`` line (job,
  outcome, seconds, worker) and unbinds them.

Celery task events for Flower (``worker_send_task_events``, ``task_send_sent_event``) are set in
``service.queue.make_celery``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from service.logs import JOB_ID, TASK_ID, use_json
from service.settings import get_settings

log = logging.getLogger("zoserve.worker")
_node: dict[str, str] = {}
_started: dict[str, tuple[float, Any, Any]] = {}


@signals.celeryd_init.connect
def _remember_node(sender: str | None = None, **_: Any) -> None:
    if sender:
        _node["name"] = str(sender)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None and get_settings().log_json:
        use_json(logger, {"worker": _node["name"]} if "name" in _node else None)


def _job_of(args: Any) -> str | None:
    first = args[0] if isinstance(args, (list, tuple)) and args else None
    return first if isinstance(first, str) and first.startswith("job_") else None


@signals.task_prerun.connect
def _bind(task_id: str = "", args: Any = None, **_: Any) -> None:
    _started[task_id] = (time.monotonic(), JOB_ID.set(_job_of(args)), TASK_ID.set(task_id))


@signals.task_postrun.connect
def _unbind(task_id: str = "", task: Any = None, retval: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is None:
        return
    t0, job_token, task_token = started
    job_id = JOB_ID.get()
    if job_id:
        outcome, seconds = retval if isinstance(retval, str) else state, round(time.monotonic() - t0, 4)
        log.info("segment of %s done: %s in %.3f s", job_id, outcome, seconds,
                 extra={"outcome": outcome, "seconds": seconds, "task": getattr(task, "name", None),
                        "worker": _node.get("name")})
    JOB_ID.reset(job_token)
    TASK_ID.reset(task_token)
