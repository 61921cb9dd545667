"""A worker app for the poison-job test: segments of jobs named ``poison*`` kill their process.

Test-only (``celery -A tests.support.poison_app worker``): production code has no hook for this;
the patch wraps ``workers.tasks.execute_segment`` in this process only.
"""

from __future__ import annotations

import os
from typing import Any

import workers.tasks as tasks
from workers.celery_app import app

__all__ = ["app"]
_execute = tasks.execute_segment


def _crashing(task: Any, ctx: Any, lease: Any) -> str:
    if ctx.store.job(lease.job_id).get("name", "").startswith("poison"):
        os._exit(13)  # like a segfault or the OOM killer: no exception handler runs
    return _execute(task, ctx, lease)


tasks.execute_segment = _crashing
