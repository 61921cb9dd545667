"""The FastAPI application: validates, records and enqueues. Never imports torch or the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from fastapi import FastAPI

from . import logs, metrics
from .api.routes import datasets, defenses, events, health, jobs, queries
from .api import openapi
from .api.routes import keys as api_keys
from .embedded import EmbeddedRedis
from .limits import BodyLimit
from .problems import install_handlers
from .queue import Sender, make_celery
from .security import KeyRing
from .settings import Settings, get_settings
from .web import routes as web_routes


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

        logs.configure(settings)  # JSON lines if ZOSERVE_LOG_JSON (uvicorn has set up its loggers by now)
        url, embedded = resolve_redis_url(settings)
        # A burst of more than max_connections concurrent commands waits for a connection instead of
        # failing with "Too many connections" (redis-py's default pool raises at 100).
        # retries (with backoff, ~2 s) ride out a Redis restart; past them a request is a 503, not a 500
        client = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(
            url, max_connections=100, timeout=20, retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 6),
            retry_on_error=[RedisConnectionError, RedisTimeoutError]))
        app.state.settings = settings
        app.state.store = JobStore(client)
        app.state.celery = make_celery(settings, url)
        app.state.sender = Sender(app.state.store.sent_many)  # new jobs' segments go to the broker off the loop
        app.state.keyring = KeyRing(settings, client)  # static keys, then runtime keys in Redis; rate limits
        try:
            yield
        finally:
            await app.state.sender.aclose()  # sends what is queued while Redis is still open
            await app.state.store.aclose()  # stops the SSE fan-out reader before Redis closes
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
    openapi.install(app)  # problem+json errors, Bearer auth and the limits' status codes in the spec
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # 413 problem over max_body_bytes
    app.include_router(api_keys.router)
    for module in (jobs, queries, events, datasets, health, defenses):
        app.include_router(module.router)
    app.include_router(metrics.router)
    app.include_router(web_routes.router)  # /ui pages + the form's /v1 routes (service/web)
    return app
