"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from ...problems import Unavailable
from ..deps import SettingsDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis answers and at least one worker is alive")
async def readyz(store: StoreDep, settings: SettingsDep) -> dict[str, object]:
    try:
        await store.r.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        raise Unavailable(f"redis unreachable: {type(exc).__name__}") from None
    workers = await store.workers_alive(window_s=max(10.0, 5 * settings.worker_heartbeat_seconds))
    if workers < 1:
        raise Unavailable("no worker is alive")
    return {"status": "ready", "workers": workers}
