"""Session fixtures: one embedded Redis, one real celery worker, one real uvicorn API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.embedded import EmbeddedRedis
from service.settings import Settings, get_settings
from tests.support.stack import celery_worker, serve_app

API_KEY, OTHER_KEY = "key-tenant-a", "key-tenant-b"
OUT = Path(__file__).resolve().parents[1] / "test-output"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ZOSERVE_* variable leaks into a test; the settings cache starts empty."""
    for k in list(os.environ):
        if k.startswith("ZOSERVE_"):
            monkeypatch.delenv(k)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(redis_url=redis_server.url, data_dir=tmp_path_factory.mktemp("data"),
                    api_keys={API_KEY: "tenant-a", OTHER_KEY: "tenant-b"}, ssrf_allow=["127.0.0.1"],
                    segment_seconds=1.0)


@pytest.fixture(scope="session")
def worker(redis_server: EmbeddedRedis, settings: Settings) -> Iterator[object]:
    OUT.mkdir(exist_ok=True)
    with celery_worker(redis_server.url, "w1", OUT / "worker-w1.log", ZOSERVE_SSRF_ALLOW='["127.0.0.1"]',
                       ZOSERVE_SEGMENT_SECONDS="1.0", ZOSERVE_DATA_DIR=str(settings.data_dir)) as proc:
        yield proc


@pytest.fixture(scope="session")
def api_url(settings: Settings, worker: object) -> Iterator[str]:
    from service.app import create_app

    with serve_app(create_app(settings)) as url:
        yield url


@pytest.fixture()
def client(api_url: str) -> Iterator["zoserve.Client"]:  # type: ignore[name-defined]  # noqa: F821
    import zoserve

    with zoserve.Client(api_url, api_key=API_KEY) as c:
        yield c


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"
