"""`zoserve up` starts embedded Redis + API + worker; Ctrl-C stops all; AOF keeps jobs across restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service.embedded import free_port
from tests.support.stack import ROOT, wait_until, worker_env


def _up(port: int, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = worker_env("")
    env.pop("REDIS_URL")
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "zoserve.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _ctrl_c(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    proc.wait(30)


def test_up_submit_watch_ctrl_c_and_restart(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    base = f"http://127.0.0.1:{port}"
    proc = _up(port, data, tmp_path / "up.log")
    try:
        wait_until(lambda: _ready(base), timeout=90, every=0.2)
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"algorithm": "zo-adam", "objective": {"kind": "builtin", "function": "sphere", "dim": 5},
                                    "budget": {"max_steps": 30}}))
        env = worker_env("")
        out = subprocess.run([sys.executable, "-m", "zoserve.cli", "--url", base, "submit", str(spec), "--watch"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.splitlines()[0]
        summary = json.loads(out.stdout.splitlines()[-1])
        assert summary["status"] == "succeeded" and summary["steps"] == 30
        assert "30/30 steps" in out.stderr
    finally:
        _ctrl_c(proc)
    assert proc.returncode is not None
    assert not (data / "redis" / "redis.url").exists()  # embedded Redis stopped too
    # AOF: a new `up` on the same data dir still knows the job
    proc = _up(port, data, tmp_path / "up2.log")
    try:
        wait_until(lambda: _ready(base), timeout=90, every=0.2)
        job = httpx.get(f"{base}/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["progress"]["step"] == 30
    finally:
        _ctrl_c(proc)
