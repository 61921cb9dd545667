"""Real parts for tests: embedded Redis, a celery worker subprocess, uvicorn in a thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
import uvicorn

from service.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOSERVE_")}
    env.update(REDIS_URL=redis_url, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'client'}", **extra)
    return env


@contextmanager
def celery_worker(redis_url: str, name: str, log: Path, queues: str = "cpu,gpu", pool: str = "solo",
                  **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` process; waits for its heartbeat; stops it (whole process group) after."""
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", pool, "-c", "1",
           "-Q", queues, "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(redis_url, **env), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_worker(redis_url, name, proc, log)
        yield proc
    finally:
        stop_process(proc)


def wait_for_worker(redis_url: str, name: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited early:\n{log.read_text()[-3000:]}")
        if any(m.decode().startswith(f"{name}@") for m in client.zrange("zo:workers", 0, -1)):
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker {name} did not become ready:\n{log.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


class ThreadServer(uvicorn.Server):
    """uvicorn on 127.0.0.1 in a background thread."""

    def install_signal_handlers(self) -> None:  # the main thread keeps its handlers
        pass


@contextmanager
def serve_app(app: Any, port: int | None = None) -> Iterator[str]:
    port = port or free_port()
    server = ThreadServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                        timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def wait_until(pred: Any, timeout: float = 30, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pred()
        if out:
            return out
        time.sleep(every)
    raise TimeoutError("condition not met in time")


def get_json(url: str, **kw: Any) -> Any:
    return httpx.get(url, **kw).json()
