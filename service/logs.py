"""Structured logs: one JSON object per line, with the job id when there is one.

Used by the API (``configure`` from the app's lifespan, after uvicorn set up its loggers) and
by the workers (``workers/observe.py`` via Celery's ``after_setup_logger``), when
``ZOSERVE_LOG_JSON=true``. The job id comes from, in order: ``extra={"job_id": ...}``, the
:data:`JOB_ID` context variable (a worker sets it for the segment it runs), or a ``job_…`` id
in the message (uvicorn's access lines name the job in the path) or in Celery's task data.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from .settings import Settings

JOB_ID: ContextVar[str | None] = ContextVar("zoserve_job_id", default=None)
TASK_ID: ContextVar[str | None] = ContextVar("zoserve_task_id", default=None)
JOB_IN_TEXT = re.compile(r"\bjob_[0-9a-f]{32}\b")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}
API_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "job_id"?, "task_id"?, "worker"?, ...extra, "exc"?}``."""

    def __init__(self, static: dict[str, Any] | None = None):
        super().__init__()
        self.static = dict(static or {})  # e.g. {"worker": "cpu-1@host"}

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": message, **self.static,
        }
        job = getattr(record, "job_id", None) or JOB_ID.get()
        if job is None:  # the message, else Celery's structured ``data`` (a received task's args)
            found = JOB_IN_TEXT.search(message) or JOB_IN_TEXT.search(str(getattr(record, "data", "")))
            job = found.group(0) if found else None
        if job:
            out["job_id"] = job
        task = getattr(record, "task_id", None) or TASK_ID.get()
        if task:
            out["task_id"] = task
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            out.update(zip(("client", "method", "path", "http", "status"), record.args))
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def use_json(logger: logging.Logger, static: dict[str, Any] | None = None, level: int = logging.INFO) -> None:
    """Give every handler of ``logger`` the JSON formatter (a stderr handler if it has none)."""
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter(static))


def configure(settings: Settings) -> None:
    """API side: JSON for the root logger and uvicorn's (call after uvicorn configured logging)."""
    if not settings.log_json:
        return
    for name in API_LOGGERS:
        logger = logging.getLogger(name)
        if name == "" or logger.handlers:
            use_json(logger)
