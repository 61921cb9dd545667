"""The ``zoserve`` command.

``submit`` and ``watch`` use only the SDK. ``up``, ``api`` and ``worker`` import the server
lazily and say how to install it when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._sync import Client


def _server_missing(exc: ImportError) -> int:
    print(f"zoserve: the server is not installed ({exc.name}); run: pip install 'zoserve[worker]'", file=sys.stderr)
    return 2


def cmd_submit(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.spec).read_text() if args.spec != "-" else sys.stdin.read())
    with Client(args.url) as client:
        job = client.jobs.create(spec)
        print(job.id)
        if args.watch:
            return _watch(client, job.id)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with Client(args.url) as client:
        return _watch(client, args.job_id)


def _watch(client: Client, job_id: str) -> int:
    from ._errors import JobFailed

    try:
        job = client.jobs.wait(job_id, progress=True)
    except JobFailed as exc:
        print(f"{exc.job.status.value}: {exc.problem.detail if exc.problem else ''}", file=sys.stderr)
        return 1
    assert job.result is not None
    print(json.dumps({"id": job.id, "status": job.status.value, "value_best": job.result.value_best,
                      "steps": job.result.steps, "queries": job.result.queries, "reason": job.result.reason}))
    return 0


def _worker_argv(queues: str | None, name: str, pool: str, concurrency: int) -> list[str]:
    if queues is None:
        try:
            import torch

            queues = "gpu" if torch.cuda.is_available() else "cpu"
        except ImportError:
            queues = "cpu"
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues, "-n", f"{name}@%h",
            "--pool", pool, "-c", str(concurrency), "--without-gossip", "--without-mingle", "-l", "INFO"]


def cmd_worker(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.execv(sys.executable, _worker_argv(args.queues, args.name, args.pool, args.concurrency))


def cmd_api(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from service.app import create_app
        from service.settings import get_settings
    except ImportError as exc:
        return _server_missing(exc)
    settings = get_settings()
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Embedded Redis + API + one worker in the foreground; Ctrl-C stops all three."""
    try:
        from service.embedded import EmbeddedRedis
        from service.settings import get_settings  # noqa: F401
    except ImportError as exc:
        return _server_missing(exc)
    data_dir = Path(args.data_dir).resolve()
    url = os.environ.get("REDIS_URL")
    embedded = None if url else EmbeddedRedis(data_dir / "redis").start()
    url = url or embedded.url  # type: ignore[union-attr]
    env = {**os.environ, "REDIS_URL": url, "ZOSERVE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1",
           "ZOSERVE_PUBLIC_URL": f"http://{args.host}:{args.port}"}
    if args.host in ("127.0.0.1", "localhost", "::1"):
        env.setdefault("ZOSERVE_AUTH_DISABLED", "true")  # loopback only: no API key needed
    procs: list[subprocess.Popen[Any]] = []

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)  # `kill` stops all three as Ctrl-C does
    try:
        procs.append(subprocess.Popen(_worker_argv(None, "local", "solo", 1), env=env))
        procs.append(subprocess.Popen([sys.executable, "-m", "zoserve.cli", "api", "--host", args.host,
                                       "--port", str(args.port)], env=env))
        print(f"zoserve up: API http://{args.host}:{args.port}  (Redis {url}, data {data_dir})", flush=True)
        if args.demo:
            _submit_demo(f"http://{args.host}:{args.port}", procs)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if embedded:
            embedded.stop()


DEMO = {"algorithm": "zo-sgd", "name": "demo: rosenbrock d=20",
        "objective": {"kind": "builtin", "function": "rosenbrock", "dim": 20},
        "budget": {"max_steps": 2000}}
# A ranking job a newcomer plays with in the browser: the procedural "image" renderer starts
# from a cold midday scene; ranking the warmest pictures first steers it to a warm sunset.
# mu/lr/ls_candidates were tuned on a simulated "warmth" rater (f: 2.7 → ~0.15 in 20 rounds).
DEMO_SUNSET = {"algorithm": "zo-ranksgd", "name": "Steer the picture towards a warm sunset",
               "config": {"mu": 0.8, "lr": 1.5, "ls_candidates": 3},
               "objective": {"kind": "ranking", "oracle": "human", "dim": 8, "m": 5, "k": 2, "render": "image"},
               "x0": [-2.0, -2.5, 2.0, -1.5, -2.0, 0.0, -1.0, -2.0], "budget": {"max_queries": 40}, "seed": 7}


def _submit_demo(base: str, procs: list[subprocess.Popen[Any]]) -> None:
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    with Client(base) as client:
        job = client.jobs.create(DEMO)
        sunset = client.jobs.create(DEMO_SUNSET)
    print(f"\ndemo jobs submitted.\n"
          f"  Rank pictures towards a warm sunset:  {base}/ui/jobs/{sunset.id}/rank\n"
          f"  Dashboard (all jobs, live plots):     {base}/ui/\n"
          f"  Watch the rosenbrock job:             zoserve --url {base} watch {job.id}\n"
          f"                                        curl -N {base}/v1/jobs/{job.id}/events\n"
          f"  API docs:                             {base}/docs\nCtrl-C stops everything.\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zoserve", description="Zeroth-order optimization as a service.")
    p.add_argument("--url", default=None, help="API base URL (default: ZOSERVE_URL or http://127.0.0.1:8000)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="embedded Redis + API + one worker, in the foreground")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", default=".zoserve")
    up.add_argument("--demo", action="store_true", help="submit a small demo job once ready")
    up.set_defaults(fn=cmd_up)
    api = sub.add_parser("api", help="run the API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(fn=cmd_api)
    wk = sub.add_parser("worker", help="run a Celery worker (queue gpu if CUDA is available, else cpu)")
    wk.add_argument("-Q", "--queues", default=None)
    wk.add_argument("-n", "--name", default="worker")
    wk.add_argument("--pool", default="solo")
    wk.add_argument("-c", "--concurrency", type=int, default=1)
    wk.set_defaults(fn=cmd_worker)
    sm = sub.add_parser("submit", help="submit a job spec (JSON file or -)")
    sm.add_argument("spec")
    sm.add_argument("--watch", action="store_true", help="then watch it with a progress bar")
    sm.set_defaults(fn=cmd_submit)
    wa = sub.add_parser("watch", help="live progress bar of a job")
    wa.add_argument("job_id")
    wa.set_defaults(fn=cmd_watch)
    args = p.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
