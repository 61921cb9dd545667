"""A real model server for tests and benchmarks: a small torch MLP on scikit-learn digits.

The classifier (64 raw pixels in [0, 16] -> 10 logits) trains once per process in a few
seconds, deterministically. ``create_app()`` serves it with FastAPI in both protocols, and
``serve()`` runs uvicorn on 127.0.0.1 in a thread (httpx's ``TestServer`` pattern)::

    with serve() as server:
        httpx.post(server.url + "/predict", json={"inputs": [[0.0] * 64]})

Routes:
    POST /predict                      {"inputs": [[64 floats], ...]} -> {"outputs": [[10 logits], ...]}
    POST /sphere                       {"inputs"|"params": rows, "center"?: c} -> {"outputs": [sum((r-c)^2)]}
    GET  /v2/health/ready              readiness (Open Inference Protocol v2)
    GET  /v2/models/{name}             model metadata
    POST /v2/models/{name}/infer       v2 inference ("digits": logits, "sphere": scalar)
    POST /draw?format=F                {"point": [...]} -> a 32x32 picture from a fixed random torch decoder
                                       (F: png (default), jpeg; "text" and "huge" answer what no renderer accepts)
Fault injection (all answer like /predict once they let a request through):
    POST /slow?delay=S                 sleeps S seconds first
    POST /flaky?key=K&fail=N           500 for the first N calls per key
    POST /ratelimit?key=K&times=N&after=S&ok_first=F  429 with Retry-After: S (default 0) for N calls per key,
                                       after the first F (default 0) went through
    POST /nan?rows=I,J                 NaN in the given output rows (default: row 0)
    POST /wrongshape                   one output row fewer than inputs
    POST /redirect?to=URL              302 to URL
    POST /auth                         401 unless "Authorization: Bearer test-token"
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

N_FEATURES = 64
N_CLASSES = 10
TOKEN = "test-token"


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits: raw pixels ``(n, 64)`` in [0, 16] (float32) and labels ``(n,)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target, dtype=torch.long)


@functools.lru_cache(maxsize=1)
def trained_model() -> torch.nn.Module:
    """The digits classifier, trained once per process (full-batch Adam, fixed seed)."""
    x, y = digits_data()
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, 32), torch.nn.Tanh(), torch.nn.Linear(32, N_CLASSES))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.enable_grad():  # callers may be inside no_grad
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x / 16.0), y).backward()  # type: ignore[no-untyped-call]
            opt.step()
    model.requires_grad_(False)
    model.eval()
    return model


def predict(inputs: torch.Tensor) -> torch.Tensor:
    """Logits ``(n, 10)`` for raw-pixel inputs ``(n, 64)``."""
    model = trained_model()
    with torch.no_grad():
        out: torch.Tensor = model(inputs.to(torch.float32) / 16.0)
    return out


def _rows(body: dict[str, Any], key: str = "inputs") -> torch.Tensor:
    rows: list[Any] = body.get(key, body.get("params")) or []
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), -1)


def _logits_json(body: dict[str, Any]) -> dict[str, Any]:
    return {"outputs": predict(_rows(body)).tolist()}


def _add_fault_routes(app: FastAPI, calls: Counter[str]) -> None:
    @app.post("/slow")
    async def slow(request: Request, delay: float = 1.0) -> Any:
        body = await request.json()
        await asyncio.sleep(delay)
        return _logits_json(body)

    @app.post("/flaky")
    async def flaky(request: Request, key: str = "default", fail: int = 2) -> Any:
        calls["flaky:" + key] += 1
        if calls["flaky:" + key] <= fail:
            return JSONResponse({"error": f"injected failure {calls['flaky:' + key]}"}, status_code=500)
        return _logits_json(await request.json())

    @app.post("/ratelimit")
    async def ratelimit(request: Request, key: str = "default", times: int = 1, after: str = "0", ok_first: int = 0) -> Any:
        calls["ratelimit:" + key] += 1
        if ok_first < calls["ratelimit:" + key] <= ok_first + times:
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": after})
        return _logits_json(await request.json())

    @app.post("/nan")
    async def nan(request: Request, rows: str = "0") -> Any:
        out = predict(_rows(await request.json()))
        for i in (int(r) for r in rows.split(",") if r):
            if i < len(out):
                out[i, 0] = float("nan")
        # json.dumps writes NaN as a bare token; httpx's response.json() parses it back.
        return Response(json.dumps({"outputs": out.tolist()}), media_type="application/json")

    @app.post("/wrongshape")
    async def wrongshape(request: Request) -> Any:
        return {"outputs": predict(_rows(await request.json()))[:-1].tolist()}

    @app.post("/redirect")
    async def redirect(request: Request, to: str) -> Any:
        calls["redirect"] += 1
        return RedirectResponse(to, status_code=302)

    @app.post("/auth")
    async def auth(request: Request) -> Any:
        calls["auth"] += 1
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return _logits_json(await request.json())


def _add_v2_routes(app: FastAPI) -> None:
    @app.get("/v2/health/ready")
    async def ready() -> Any:
        return {"ready": True}

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> Any:
        return {"name": name, "platform": "pytorch", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> Any:
        body = await request.json()
        tensor = body["inputs"][0]
        shape = tensor["shape"]
        x = torch.tensor(tensor["data"], dtype=torch.float32).reshape(shape[0], -1)
        if name == "sphere":
            out = ((x - 1.0) ** 2).sum(1, keepdim=True)
        elif name == "digits":
            out = predict(x)
        else:
            return JSONResponse({"error": f"unknown model {name!r}"}, status_code=404)
        return {
            "model_name": name,
            "outputs": [{"name": "output", "shape": list(out.shape), "datatype": "FP32", "data": out.flatten().tolist()}],
        }


def create_app() -> FastAPI:
    """The FastAPI app: both protocols plus fault-injection routes (counters per app)."""
    app = FastAPI(title="zoserve test model server")
    calls: Counter[str] = Counter()
    app.state.calls = calls

    @app.post("/predict")
    async def predict_json(request: Request) -> Any:
        return _logits_json(await request.json())

    @app.post("/sphere")
    async def sphere(request: Request) -> Any:
        body = await request.json()
        center = float(body.get("center", 1.0))
        return {"outputs": ((_rows(body) - center) ** 2).sum(1).tolist()}

    @app.post("/draw")
    async def draw_route(request: Request, format: str = "png") -> Response:
        point = (await request.json())["point"]
        calls["draw"] += 1
        if format == "text":
            return Response("not an image", media_type="text/plain")
        if format == "huge":
            return Response(b"\x89PNG\r\n\x1a\n" + bytes(5 * 2**20), media_type="image/png")
        return Response(draw(point, format), media_type=f"image/{format}")

    _add_fault_routes(app, calls)
    _add_v2_routes(app)
    return app


def draw(point: list[float], fmt: str = "png") -> bytes:
    """A point drawn as a 32x32 RGB picture: sigmoid(W @ point), W fixed by a seed (a toy image generator)."""
    import io

    from PIL import Image

    x = torch.tensor(point, dtype=torch.float32)
    w = torch.randn(32 * 32 * 3, x.numel(), generator=torch.Generator().manual_seed(7))
    pixels = (torch.sigmoid(w @ x) * 255).round().to(torch.uint8).reshape(32, 32, 3)
    out = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(out, format=fmt.upper())
    return out.getvalue()


@dataclass
class RunningServer:
    """A started server: ``url`` is ``http://127.0.0.1:PORT``."""

    url: str
    app: FastAPI


@contextmanager
def serve(app: FastAPI | None = None, timeout_s: float = 10.0, tls: tuple[str, str] | None = None) -> Iterator[RunningServer]:
    """Run ``app`` (default :func:`create_app`) with uvicorn on 127.0.0.1, a free port, in a thread;
    over HTTPS with ``tls = (certfile, keyfile)``."""
    import uvicorn

    app = app or create_app()
    trained_model()  # train before the clock of any request timeout starts
    # proto=IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets of an explicit TCP
    # protocol; without it every response pays a 40 ms Nagle + delayed-ACK stall.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", ws="none", http="h11", loop="asyncio", timeout_graceful_shutdown=1,
        ssl_certfile=tls[0] if tls else None, ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("model server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(url=f"{'https' if tls else 'http'}://127.0.0.1:{port}", app=app)
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
