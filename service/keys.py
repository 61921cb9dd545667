"""Every Redis key zoserve uses, in one place."""

from __future__ import annotations

PREFIX = "zo"


def job(job_id: str) -> str:
    """Hash: the job record (spec, status, progress, result, error, tenant...)."""
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    """Stream: the job's events; stream ids are the SSE ids."""
    return f"{PREFIX}:job:{job_id}:events"


def checkpoint(job_id: str) -> str:
    """String: the algorithm + runner state after the last segment."""
    return f"{PREFIX}:job:{job_id}:ckpt"


def fence(job_id: str) -> str:
    """Int: the fencing token; every lease increments it, writes must present the current one."""
    return f"{PREFIX}:job:{job_id}:fence"


def lease(job_id: str) -> str:
    """String with TTL: the token of the segment that currently owns the job."""
    return f"{PREFIX}:job:{job_id}:lease"


def queries(job_id: str) -> str:
    """Hash: query id -> PendingQuery JSON."""
    return f"{PREFIX}:job:{job_id}:queries"


def answers(job_id: str) -> str:
    """Hash: query id -> answer JSON."""
    return f"{PREFIX}:job:{job_id}:answers"


def tenant_jobs(tenant: str) -> str:
    """Sorted set: the tenant's job ids scored by creation sequence."""
    return f"{PREFIX}:tenant:{tenant}:jobs"


def idempotency(tenant: str, key: str) -> str:
    """String: ``job_id|body_hash`` for an Idempotency-Key."""
    return f"{PREFIX}:idem:{tenant}:{key}"


def artifact(job_id: str, name: str) -> str:
    """Hash: one artifact of a finished job, fields ``data`` (bytes) and ``media_type``."""
    return f"{PREFIX}:job:{job_id}:artifact:{name}"


def candidate_media(job_id: str, query_id: str) -> str:
    """Hash: a ranking query's candidates drawn by the user's generator, ``<id>`` -> image bytes and
    ``<id>:type`` -> its media type (``render: "endpoint"``)."""
    return f"{PREFIX}:job:{job_id}:media:{query_id}"


SEQUENCE = f"{PREFIX}:seq"
WORKERS = f"{PREFIX}:workers"  # sorted set: worker name -> last heartbeat (unix seconds)
CANCEL_CHANNEL = f"{PREFIX}:cancel"  # pub/sub: job ids whose cancel was requested
IDEMPOTENCY_TTL = 24 * 3600


def dataset(ds_id: str) -> str:
    """Hash: an uploaded dataset's metadata (tenant, name, n, d, classes, size)."""
    return f"{PREFIX}:dataset:{ds_id}"


def dataset_data(ds_id: str) -> str:
    """String: the dataset's .npz bytes."""
    return f"{PREFIX}:dataset:{ds_id}:data"


def tenant_datasets(tenant: str) -> str:
    """Sorted set: the tenant's dataset ids by upload time."""
    return f"{PREFIX}:tenant:{tenant}:datasets"


def rater(token_digest: str) -> str:
    """Hash with TTL (its expiry): a rater link by token digest (id, job_id, tenant, created_at, expires_at)."""
    return f"{PREFIX}:rater:{token_digest}"


def job_raters(job_id: str) -> str:
    """Hash: the job's rater links, link id -> JSON record with the token digest (for listing and revoking)."""
    return f"{PREFIX}:job:{job_id}:raters"


def apikey(key_digest: str) -> str:
    """Hash: a runtime API key by SHA-256 digest (id, tenant, name, created_at, revoked_at)."""
    return f"{PREFIX}:apikey:{key_digest}"


def apikey_id(key_id: str) -> str:
    """String: the digest of runtime API key ``key_id`` (for revocation by id)."""
    return f"{PREFIX}:apikey-id:{key_id}"


def rate(principal: str) -> str:
    """Hash with TTL: a key's token bucket (tokens, ts)."""
    return f"{PREFIX}:rate:{principal}"


def tenant_active(tenant: str) -> str:
    """Set: the tenant's jobs that may be in flight (pruned of terminal ones on every create)."""
    return f"{PREFIX}:tenant:{tenant}:active"


def hub_wake(process: str) -> str:
    """Stream with TTL: wakes one API process's event-hub XREAD when a job gets its first watcher."""
    return f"{PREFIX}:hub:{process}:wake"


APIKEYS = f"{PREFIX}:apikeys"  # sorted set: runtime key id -> creation time
OUTBOX = f"{PREFIX}:outbox"  # sorted set: "job_id|ticket" -> when its segment is due to be sent (reaper re-sends)
OPEN = f"{PREFIX}:open"  # set: job ids whose segment acquired a lease and has not released it yet
ACTIVE = f"{PREFIX}:active"  # set: every job not known to be finished (the reaper prunes finished ones)
JOB_PREFIX = f"{PREFIX}:job:"
