"""The FastAPI application: validates, records and enqueues. Never imports torch or the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from .api.routes import datasets, events, health, jobs, queries
from .embedded import EmbeddedRedis
from .problems import install_handlers
from .queue import make_celery
from .security import KeyRing
from .settings import Settings, get_settings


def resolve_redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """The configured Redis, or a freshly started embedded one."""
    if settings.redis_url:
        return settings.redis_url, None
    embedded = EmbeddedRedis(settings.data_dir / "redis").start()
    return embedded.url, embedded


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; Redis (embedded if no URL), the store and the Celery producer live in the lifespan."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .store import JobStore

        url, embedded = resolve_redis_url(settings)
        client = aioredis.Redis.from_url(url)
        app.state.settings = settings
        app.state.store = JobStore(client)
        app.state.celery = make_celery(settings, url)
        app.state.keyring = KeyRing(settings)
        try:
            yield
        finally:
            await client.aclose()
            if embedded:
                embedded.stop()

    app = FastAPI(
        title="zoserve",
        version="0.1.0",
        summary="Zeroth-order (black-box) optimization as a service.",
        description="Submit ZO optimization jobs, stream their progress, answer their queries.",
        lifespan=lifespan,
    )
    install_handlers(app)
    for module in (jobs, queries, events, datasets, health):
        app.include_router(module.router)
    return app
