"""``crm collect``: uvicorn serving the collector, with the loader in a process of its own.

The loader runs beside the HTTP server in a second process (it parses and COPYs, which would
hold the server's GIL), started and stopped with it; ``--no-loader`` leaves loading to another
process (``crm collect-load``), e.g. one loader for several collector replicas sharing a disk.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from pathlib import Path

import uvicorn

from crm import db
from crm.cache import async_redis_client
from crm.collect import loader
from crm.collect.app import Collector, RateLimiter, create_app
from crm.collect.sources import KeyRing
from crm.collect.spool import Spool
from crm.settings import Settings, get_settings

log = logging.getLogger(__name__)


def spool_dir(settings: Settings) -> Path:
    return settings.collect_spool_dir or Path(settings.home) / "spool"


def run_loader(settings: Settings | None = None) -> None:
    """Load collected segments until SIGTERM / SIGINT (the loader process's main)."""
    settings = settings or get_settings()
    stopping = {"now": False}

    def stop(*_: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s loader %(message)s")
    ready = spool_dir(settings) / "ready"
    ready.mkdir(parents=True, exist_ok=True)
    url = db.database_url(settings)
    loader.run(ready, url, settings, stop=lambda: stopping["now"])


def serve(
    settings: Settings | None = None,
    host: str | None = None,
    port: int | None = None,
    with_loader: bool = True,
) -> None:
    settings = settings or get_settings()
    url = db.database_url(settings)
    db.upgrade(url)
    root = spool_dir(settings)
    spool = Spool(
        root,
        settings.collect_spool_max_bytes,
        settings.collect_flush_seconds,
        settings.collect_segment_bytes,
    )
    limiter = RateLimiter(async_redis_client(settings), settings.redis_prefix)
    collector = Collector(settings, spool, KeyRing(root / "keys.json"), url, limiter)
    collector.start()
    proc = None
    if with_loader:
        proc = multiprocessing.get_context("spawn").Process(
            target=run_loader, args=(settings,), name="crm-collect-loader"
        )
        proc.start()
    config = uvicorn.Config(
        create_app(collector),
        host=host or settings.collect_host,
        port=settings.collect_port if port is None else port,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
        timeout_keep_alive=30,
        limit_concurrency=2048,
        http="h11",  # bounded headers (httptools takes any size): 64 KB, then 400
        h11_max_incomplete_event_size=64 * 1024,
    )
    # uvicorn re-raises the signal that stopped it to the handler it found: without one of
    # ours, SIGTERM would end the process before the spool closes its segments
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()  # closes every open segment into ready/
        if proc is not None:
            proc.terminate()
            proc.join(30)
