"""Migrations: idempotent, ordered, and protective of applied history."""

from __future__ import annotations

import psycopg
import pytest

from crm import db
from crm.errors import DatabaseError


def test_upgrade_is_idempotent(db_url: str) -> None:
    assert db.upgrade(db_url) == []  # the template already applied everything
    with psycopg.connect(db_url) as conn:
        versions = [
            r[0] for r in conn.execute("select version from crm.schema_migrations order by 1")
        ]
    assert versions == [m.version for m in db.migrations()]


def test_edited_migration_is_refused(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("update crm.schema_migrations set checksum = 'tampered' where version = 1")
        conn.commit()
    with pytest.raises(DatabaseError, match="add a new migration"):
        db.upgrade(db_url)


def test_a_least_privilege_login_runs_the_upgrade_check_but_cannot_migrate(db_url: str) -> None:
    """Every CLI command upgrades first: up to date, that needs no rights (no DDL is run);
    with a migration pending, the login is told to have the owner run it."""
    from tests.conftest import member_url

    sender = member_url(db_url, "crm_sender")
    assert db.upgrade(sender) == []
    with psycopg.connect(db_url) as conn:
        conn.execute("delete from crm.schema_migrations where version = %s",
                     (db.migrations()[-1].version,))  # fmt: skip
        conn.commit()
    with pytest.raises(DatabaseError, match=r"crm_sender_member may not apply them.*owner"):
        db.upgrade(sender)
    assert db.upgrade(db_url) == [db.migrations()[-1].name]  # the owner can (idempotent SQL)


def test_partitions_are_created_once_and_concurrently_safe(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        for _ in range(2):
            conn.execute(
                "select raw.ensure_event_partitions(array['2026-03-01'::date, '2026-03-02'])"
            )
        parts = conn.execute(
            "select count(*) from pg_inherits where inhparent = 'raw.events'::regclass"
        ).fetchone()
    assert parts == (2,)


def test_audit_refuses_counts_that_do_not_add_up(db_url: str) -> None:
    with psycopg.connect(db_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "insert into raw.load_audit (file_path, file_name, checksum, size_bytes, status,"
            " lines, loaded, duplicates, rejected) values ('x', 'x', 'c', 1, 'loaded', 5, 1, 1, 1)"
        )


def test_connection_error_says_what_to_do() -> None:
    with pytest.raises(DatabaseError, match="CRM_DATABASE_URL"):
        db.connect("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)


def test_tls_settings_in_the_url_reach_every_connection_dbt_included() -> None:
    from crm.transform import dbt_env

    url = (
        "postgresql://crm:pw@db.example.com:6432/shop_crm?sslmode=verify-full"
        "&sslrootcert=/certs/ca.crt&sslcert=/certs/client.crt&sslkey=/certs/client.key"
    )
    info = db.conn_info(url)
    assert (info.host, info.port, info.sslmode) == ("db.example.com", 6432, "verify-full")
    env = dbt_env(url=url)
    assert env["CRM_DBT_SSLMODE"] == "verify-full"
    assert env["CRM_DBT_SSLROOTCERT"] == "/certs/ca.crt"
    assert (env["CRM_DBT_SSLCERT"], env["CRM_DBT_SSLKEY"]) == (
        "/certs/client.crt",
        "/certs/client.key",
    )
    assert "CRM_DBT_SSLROOTCERT" not in dbt_env(url="postgresql://crm:pw@db/shop_crm")
