"""Data minimisation at ingestion: IPs truncated, personal traits moved to pii.contact_traits,
the same rules in Python (the loader) and SQL (what migration 0013 did to older rows)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import psycopg

from crm.ingest.load import ingest_paths
from crm.ingest.minimise import minimise, truncate_ip
from crm.migrations import __file__ as migrations_init
from crm.settings import Settings

EMAIL = "Ann.Example@Example.com"


def call(i: int, **over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "messageId": f"m-{i}",
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": "device-1",
        "timestamp": "2026-02-01T10:00:00Z",
        "properties": {"product_id": "p1"},
        "context": {"ip": "203.0.113.77", "timezone": "Europe/Berlin"},
    }
    base.update(over)
    return base


PAYLOADS = [
    call(1),
    call(2, context={"ip": "2001:db8:abcd:12::1"}),
    call(3, context={"ip": "not an ip"}),
    call(4, context={"device": {"ip": "198.51.100.9"}}, properties={"ip": 42}),
    call(
        5,
        type="identify",
        userId="u1",
        traits={
            "email": f" {EMAIL} ",
            "first_name": "Ann",
            "lastName": "Example",
            "phone": "+49 30 1234567",
            "plan": "gold",
            "name": "",
        },
    ),
    call(
        6,
        context={"ip": "203.0.113.5", "traits": {"email": EMAIL, "username": "ann"}},
        properties={"items": [{"ip": "192.0.2.44"}], "type": "ip"},
    ),
    call(7, type="identify", userId="u1", traits={"email": None, "birthday": "1990-01-01"}),
    call(8, context={"ip": "01.2.3.4"}),
    call(10, context={"ip": "192.0.2.1", "device": {"advertisingId": "AAID-1", "id": "d1"}}),
]


def test_ips_are_truncated_to_their_network() -> None:
    assert truncate_ip("203.0.113.77") == "203.0.113.0"
    assert truncate_ip("2001:db8:abcd:12::1") == "2001:db8:abcd::"
    for bad in ("not an ip", "256.1.1.1", "01.2.3.4", "1.2.3.4/24", "fe80::1%eth0", ""):
        assert truncate_ip(bad) is None, bad


def test_personal_traits_leave_the_call_and_hashes_stay() -> None:
    stored, personal = minimise(orjson.dumps(PAYLOADS[4]))
    kept = orjson.loads(stored)
    assert personal == {"email": f" {EMAIL} ", "first_name": "Ann", "lastName": "Example",
                        "phone": "+49 30 1234567"}  # fmt: skip
    assert kept["traits"] == {
        "plan": "gold",
        "email_sha256": hashlib.sha256(EMAIL.lower().encode()).hexdigest(),
        "phone_sha256": hashlib.sha256(b"+49 30 1234567").hexdigest(),
    }
    assert kept["context"]["ip"] == "203.0.113.0"
    # everywhere an "ip" key is, and nothing else called ip
    stored, personal = minimise(orjson.dumps(PAYLOADS[5]))
    kept = orjson.loads(stored)
    assert personal == {"email": EMAIL, "username": "ann"}
    assert kept["properties"] == {"items": [{"ip": "192.0.2.0"}], "type": "ip"}
    assert "email" not in kept["context"]["traits"]
    # a line without anything personal is stored byte for byte
    plain = orjson.dumps({k: v for k, v in call(9).items() if k != "context"})
    assert minimise(plain) == (plain, None)


def test_advertising_ids_are_dropped_or_hashed() -> None:
    idfa = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
    line = orjson.dumps({**call(1), "context": {"device": {"advertisingId": idfa, "id": "d1"}}})
    stored, _ = minimise(line)
    assert orjson.loads(stored)["context"]["device"] == {"id": "d1"}
    assert idfa.encode() not in stored
    stored, _ = minimise(line, advertising_id="hash")
    assert orjson.loads(stored)["context"]["device"] == {
        "id": "d1",
        "advertisingId_sha256": hashlib.sha256(idfa.lower().encode()).hexdigest(),
    }


def test_sql_rules_match_the_loader(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        for payload in PAYLOADS:
            stored, personal = minimise(orjson.dumps(payload))
            same = conn.execute(
                "select raw.minimise_payload(%s::jsonb) = %s::jsonb,"
                " raw.personal_traits(%s::jsonb) is not distinct from %s::jsonb",
                (orjson.dumps(payload).decode(), stored.decode(),
                 orjson.dumps(payload).decode(), orjson.dumps(personal).decode()
                 if personal else None),
            ).fetchone()  # fmt: skip
            assert same == (True, True), payload["messageId"]


def _all_text(conn: psycopg.Connection, needle: str, skip_schema: str) -> list[str]:
    cols = conn.execute(
        """
        select c.table_schema, c.table_name, c.column_name from information_schema.columns c
        join information_schema.tables t using (table_schema, table_name)
        where c.table_schema not in ('pg_catalog', 'information_schema', %s)
          and t.table_type = 'BASE TABLE'
          and c.data_type in ('text', 'character varying', 'jsonb', 'json')
        """,
        (skip_schema,),
    ).fetchall()
    return [
        f"{s}.{t}.{c}"
        for s, t, c in cols
        if conn.execute(
            f'select exists (select 1 from "{s}"."{t}" where "{c}"::text ilike %s)',
            (f"%{needle}%",),
        ).fetchone()[0]  # type: ignore[index]
    ]


def test_loader_keeps_personal_data_in_pii_only(
    tmp_path: Path, settings: Settings, db_url: str
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(p) for p in PAYLOADS) + b"\n")
    (res,) = ingest_paths([path], url=db_url, settings=settings)
    assert (res.loaded, res.rejected) == (len(PAYLOADS), 0)
    with psycopg.connect(db_url) as conn:
        for needle in (EMAIL, "Ann", "1234567", "203.0.113.77", "2001:db8:abcd:12", "1990-01"):
            assert _all_text(conn, needle, "pii") == [], needle
        traits: dict[str, Any] = dict(conn.execute(
            "select message_id, traits from pii.contact_traits order by 1").fetchall())  # fmt: skip
        assert traits["m-5"]["email"] == f" {EMAIL} " and traits["m-7"] == {
            "birthday": "1990-01-01"
        }
        assert set(traits) == {"m-5", "m-6", "m-7"}
        ips: dict[str, str | None] = dict(
            conn.execute("select message_id, payload #>> '{context,ip}' from raw.events")
        )
        assert ips["m-1"] == "203.0.113.0" and ips["m-2"] == "2001:db8:abcd::"
        assert ips["m-3"] is None
    # loading the same calls again (a renamed copy) adds no second contact row
    copy = tmp_path / "again.jsonl"
    copy.write_bytes(path.read_bytes() + b"\n")
    (again,) = ingest_paths([copy], url=db_url, settings=settings)
    assert again.duplicates == len(PAYLOADS)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("select count(*) from pii.contact_traits").fetchone() == (3,)


def test_the_migration_minimised_rows_stored_before_it(db_url: str) -> None:
    """Rows stored by an older loader (personal traits, full IPs and advertising ids in the
    payload) are minimised when migrations 0013 and 0016 run (they are idempotent, so they run
    here again)."""
    migration = "\n".join(
        Path(migrations_init).with_name(name).read_text()
        for name in ("0013_minimisation.sql", "0016_collector.sql")
    )
    with psycopg.connect(db_url) as conn:
        conn.execute("select raw.ensure_event_partitions(array['2026-02-01'::date])")
        for i, payload in enumerate(PAYLOADS):
            conn.execute(
                "insert into raw.events (message_id, type, user_id, anonymous_id, event_at,"
                " event_date, payload, load_id, line_number) values (%s, %s, %s, %s,"
                " '2026-02-01T10:00:00Z', '2026-02-01', %s, 0, %s)",
                (payload["messageId"], payload["type"], payload.get("userId"),
                 payload["anonymousId"], orjson.dumps(payload).decode(), i),
            )  # fmt: skip
        conn.execute(migration)
        conn.execute(migration)
        stored: dict[object, Any] = dict(
            conn.execute("select message_id, payload from raw.events").fetchall()
        )
        moved: dict[object, Any] = dict(
            conn.execute("select message_id, traits from pii.contact_traits").fetchall()
        )
    for payload in PAYLOADS:
        kept, personal = minimise(orjson.dumps(payload))
        assert stored[payload["messageId"]] == orjson.loads(kept)
        assert moved.get(payload["messageId"]) == personal


def test_numbers_beyond_a_double_are_kept_as_written() -> None:
    big = b'{"traits": {"email": "a@b.c", "score": 1e400, "n": 123456789012345678901234567890},'
    stored, personal = minimise(big + b' "context": {"ip": "192.0.2.1"}}')
    assert personal == {"email": "a@b.c"}
    assert b'"score":1e400' in stored and b"123456789012345678901234567890" in stored
    assert b'"ip":"192.0.2.0"' in stored and b"a@b.c" not in stored
