"""``make demo``'s collector step: a shop's tracker sending to ``crm collect``.

    python -m crm.collect.demo EVENTS_FILE_OR_FOLDER [--count N]

Starts the collector (a source ``demo`` with a new write key), sends the first N calls (all with
``--count 0``) of the file, or of the folder's event files in order, through Segment's own
Python library (``segment-analytics-python``, as a shop's backend runs it: batches, retries,
its own messageIds kept from the file), waits until every call is
in ``raw.events``, prints how fresh that was, and stops the collector. The same calls come
again later with the day's file: each is loaded once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from crm import db
from crm.collect import sources
from crm.ingest.files import iter_lines
from crm.settings import get_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _calls(path: Path, count: int) -> list[dict[str, Any]]:
    files = (
        sorted(x for x in path.rglob("events.jsonl*") if x.is_file()) if path.is_dir() else [path]
    )
    calls: list[dict[str, Any]] = []
    for file in files:
        for _, line in iter_lines(file):
            if count and len(calls) >= count:
                return calls
            if line.strip():
                calls.append(orjson.loads(line))
    return calls


def send(client: Any, call: dict[str, Any]) -> None:
    """One call of the contract through the client's method for its type."""
    common = {
        "context": call.get("context") or {},
        "timestamp": datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00")),
        "anonymous_id": call.get("anonymousId"),
        "message_id": call["messageId"],
    }
    user = call.get("userId")
    kind = call["type"]
    if kind == "track":
        client.track(user, call["event"], call.get("properties"), **common)
    elif kind == "identify":
        client.identify(user, call.get("traits"), **common)
    elif kind == "page":
        client.page(user, None, call.get("name"), call.get("properties"), **common)
    elif kind == "screen":
        client.screen(user, None, call.get("name"), call.get("properties"), **common)
    elif kind == "alias":
        client.alias(call["previousId"], user, context=common["context"],
                     timestamp=common["timestamp"], message_id=call["messageId"])  # fmt: skip
    elif kind == "group":
        client.group(user, call["groupId"], call.get("traits"), **common)


@contextlib.contextmanager
def running_collector(
    url: str, name: str = "demo", rate_limit: int | None = None
) -> Iterator[tuple[str, str]]:
    """``crm collect`` on a free port for a source ``name`` with a new write key (an older key
    of that name is revoked) and ``rate_limit``: (its base URL, the key); stopped on exit."""
    settings = get_settings()
    if any(s.name == name and not s.revoked_at for s in sources.list_sources(url)):
        sources.revoke(url, name)
    key = sources.add(url, name, rate_limit=rate_limit)
    port = _free_port()
    env = {**os.environ, "CRM_COLLECT_PORT": str(port), "CRM_DATABASE_URL": url}
    log = Path(settings.home) / "demo-collect.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crm.cli", "collect"], env=env, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the collector did not start; see {log}")
            time.sleep(0.2)
        yield base, key
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    from segment.analytics import Client

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", type=Path)
    parser.add_argument("--count", type=int, default=2000, help="0: every call")
    args = parser.parse_args()
    url = db.database_url(get_settings())
    db.upgrade(url)
    # every call at once: days of a shop's traffic replayed in seconds, so no rate limit
    with running_collector(url, rate_limit=0 if args.count == 0 else None) as (base, key):
        calls = _calls(args.events, args.count)
        with psycopg.connect(url) as conn:
            last = conn.execute("select max(load_id) from raw.load_audit").fetchone()
        before = (last[0] if last else None) or 0
        errors: list[object] = []
        client = Client(key, host=base, upload_size=100, max_queue_size=len(calls) + 1,
                        on_error=lambda e, _: errors.append(e))  # fmt: skip
        started = time.monotonic()
        for call in calls:
            send(client, call)
        client.flush()  # every call answered (200: fsynced in the collector's spool)
        acked = time.monotonic()
        ids = sorted({c["messageId"] for c in calls})  # a tracker may repeat a call
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "select (select count(*) from raw.message_ids where message_id = any(%s)),"
                    " (select coalesce(sum(rejected), 0) from raw.load_audit"
                    "  where source = 'collector:demo' and load_id > %s)",
                    (ids, before),
                ).fetchone()
                present, rejected = row if row else (0, 0)
                if present + rejected >= len(ids) or time.monotonic() - acked > 120:
                    break
                time.sleep(0.1)
        visible = time.monotonic()
        client.join()
        print(
            f"{len(calls):,} calls of {args.events.name} sent with segment-analytics-python to "
            f"{base}: acknowledged in {acked - started:.1f} s, all in raw.events "
            f"{visible - acked:.1f} s after the last acknowledgement ({present:,} of "
            f"{len(ids):,} distinct messageIds loaded, {rejected:,} quarantined); "
            f"client errors: {len(errors)}"
        )
        if errors or present + rejected < len(ids):
            sys.exit(1)


if __name__ == "__main__":
    main()
