"""Shared by the service benches: embedded Redis plus the API as a uvicorn subprocess.

The API runs in its own process (``uvicorn --factory service.app:create_app``, optionally with
``--workers N``) so the load generator's parsing never shares a GIL with the server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client")]

from service.embedded import EmbeddedRedis, free_port  # noqa: E402
from tests.support.stack import stop_process, worker_env  # noqa: E402


@contextmanager
def redis_and_api(workers: int = 1, **env: str) -> Iterator[tuple[str, str, Path]]:
    """Yield ``(redis_url, api_url, tmp_dir)``: a fresh embedded Redis and the API on loopback
    (auth disabled). The API's log is ``tmp_dir / "api.log"``; the folder is removed after a
    clean exit."""
    tmp = Path(tempfile.mkdtemp(prefix="zoserve-bench-"))
    with EmbeddedRedis(tmp / "redis") as redis_server:
        with api_process(redis_server.url, tmp, workers, **env) as url:
            yield redis_server.url, url, tmp
    shutil.rmtree(tmp, ignore_errors=True)  # kept (with api.log) when the bench fails


@contextmanager
def api_process(redis_url: str, tmp: Path, workers: int = 1, **env: str) -> Iterator[str]:
    """``uvicorn --workers N`` serving ``create_app()`` configured by environment."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    full_env = worker_env(redis_url, ZOSERVE_REDIS_URL=redis_url, ZOSERVE_AUTH_DISABLED="true",
                          ZOSERVE_DATA_DIR=str(tmp / "data"), **env)
    log = tmp / "api.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        if workers > 1:
            time.sleep(1.0 + 0.5 * workers)  # the first answer proves one worker; give the rest time to import
        yield url
    finally:
        stop_process(proc)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"API exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"API did not become ready:\n{log.read_text()[-3000:]}")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (``p`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]
