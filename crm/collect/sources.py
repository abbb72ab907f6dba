"""Sources of the collector: a name, a write key (stored as its SHA-256), browser origins."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import psycopg

from crm import db
from crm.errors import CrmError

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")


class SourceError(CrmError):
    """A source command cannot be carried out (bad name, unknown source, ...)."""


@dataclass(frozen=True)
class Source:
    name: str
    key_hint: str
    origins: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    rate_limit: int | None = None  # calls per second; None: the setting; 0: no limit


class Key(NamedTuple):
    """What the collector knows of an active write key."""

    source: str
    origins: tuple[str, ...]
    rate_limit: int | None  # None: CRM_COLLECT_RATE_LIMIT


def _check_rate(rate_limit: int | None) -> None:
    if rate_limit is not None and rate_limit < 0:
        raise SourceError("rate limit: calls per second, 0 for none")


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add(
    url: str, name: str, origins: list[str] | None = None, rate_limit: int | None = None
) -> str:
    """Create a source (or replace a revoked one of that name); return its new write key."""
    _check_rate(rate_limit)
    if not NAME.fullmatch(name):
        raise SourceError(
            f"source name {name!r}: lower-case letters, digits, '-' and '_', at most 63"
        )
    origins = [o.rstrip("/") for o in origins or []]
    bad = [o for o in origins if not ORIGIN.fullmatch(o)]
    if bad:
        raise SourceError(
            f"origin {bad[0]!r}: expected scheme://host[:port], e.g. https://shop.example"
        )
    key = secrets.token_urlsafe(24)
    with db.connect(url) as conn, conn.transaction():
        db.require_migrated(conn)
        row = conn.execute(
            """
            insert into raw.sources (name, key_sha256, key_hint, origins, rate_limit)
            values (%s, %s, %s, %s, %s)
            on conflict (name) do update
                set key_sha256 = excluded.key_sha256, key_hint = excluded.key_hint,
                    origins = excluded.origins, rate_limit = excluded.rate_limit,
                    created_at = now(), revoked_at = null
                where raw.sources.revoked_at is not null
            returning name
            """,
            (name, key_digest(key), key[:6], origins, rate_limit),
        ).fetchone()
    if row is None:
        raise SourceError(f"source {name!r} exists; revoke it first to issue a new key")
    return key


def set_rate_limit(url: str, name: str, rate_limit: int | None) -> None:
    """Change a source's limit (None: back to the setting); collectors apply it within
    seconds."""
    _check_rate(rate_limit)
    with db.connect(url) as conn, conn.transaction():
        done = conn.execute(
            "update raw.sources set rate_limit = %s where name = %s and revoked_at is null",
            (rate_limit, name),
        ).rowcount
    if not done:
        raise SourceError(f"no active source named {name!r}")


def revoke(url: str, name: str) -> None:
    with db.connect(url) as conn, conn.transaction():
        done = conn.execute(
            "update raw.sources set revoked_at = now() where name = %s and revoked_at is null",
            (name,),
        ).rowcount
    if not done:
        raise SourceError(f"no active source named {name!r}")


def list_sources(url: str) -> list[Source]:
    with db.connect(url) as conn:
        rows = conn.execute(
            "select name, key_hint, origins, created_at, revoked_at, rate_limit"
            " from raw.sources order by name"
        ).fetchall()
    return [Source(n, h, tuple(o), c, r, limit) for n, h, o, c, r, limit in rows]


class KeyRing:
    """The active write keys, as the collector checks them: read from PostgreSQL and kept in
    a file beside the spool, so a collector started while PostgreSQL is down still knows them.
    Revocations reach a running collector at its next refresh."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.keys: dict[str, Key] = {}  # by the key's SHA-256
        self.revoked: set[str] = set()
        if cache.exists():
            try:
                data = json.loads(cache.read_text())
                self.keys = {
                    k: Key(v[0], tuple(v[1]), v[2] if len(v) > 2 else None)
                    for k, v in data["keys"].items()
                }
                self.revoked = set(data.get("revoked", []))
            except (ValueError, KeyError, TypeError):
                pass  # rebuilt at the next refresh

    def refresh(self, url: str) -> None:
        """Raises psycopg.Error when PostgreSQL cannot be reached (the keys stay as they were)."""
        with psycopg.connect(url, connect_timeout=3) as conn:
            rows = conn.execute(
                "select key_sha256, name, origins, rate_limit, revoked_at is not null"
                " from raw.sources"
            ).fetchall()
        self.keys = {k: Key(n, tuple(o), lim) for k, n, o, lim, revoked in rows if not revoked}
        self.revoked = {k for k, *_, revoked in rows if revoked}
        tmp = self.cache.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "keys": {
                        k: [v.source, list(v.origins), v.rate_limit] for k, v in self.keys.items()
                    },
                    "revoked": sorted(self.revoked),
                }
            )
        )
        os.replace(tmp, self.cache)

    def lookup(self, key: str) -> Key | str:
        """The key's source, or why the key is refused."""
        digest = key_digest(key)
        found = self.keys.get(digest)
        if found:
            return found
        return "write key revoked" if digest in self.revoked else "unknown write key"

    def allows_origin(self, origin: str) -> bool:
        """Preflights carry no key: an origin any source serves (or any, if one has none)."""
        return any(not k.origins or origin in k.origins for k in self.keys.values())
