"""Database access: the connection URL (given or embedded), connections, and migrations."""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, quote, unquote, urlparse

import psycopg
from psycopg import sql

from crm.errors import DatabaseError
from crm.settings import Settings, get_settings

log = logging.getLogger(__name__)

MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Arbitrary constant: serialises concurrent `crm db upgrade` runs.
MIGRATION_LOCK = 724_310_001


def _import_pgserver() -> ModuleType:
    """Import pgserver (heavy, only when the embedded server is used) without its noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR is not set
        import pgserver
    # Its INFO lines (and one at interpreter exit, after streams close) are noise for users.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    return pgserver


def embedded_url(settings: Settings) -> str:
    """Start (or reuse) the embedded PostgreSQL in CRM_HOME/pgdata and return its URL.

    The server keeps running after this process exits, like a local development server;
    ``crm db stop`` stops it.
    """
    pgserver = _import_pgserver()

    pgdata = Path(settings.home) / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    name = settings.embedded_database
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
    return str(server.get_uri(name))


def embedded_url_offline(settings: Settings) -> str:
    """The embedded server's URL without starting it: its socket directory is in
    postmaster.pid when it runs, else CRM_HOME/pgdata (where pgserver puts it)."""
    pgdata = Path(settings.home) / "pgdata"
    socket_dir = str(pgdata)
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        lines = pid_file.read_text().splitlines()
        if len(lines) > 4 and lines[4].strip():
            socket_dir = lines[4].strip()
    return f"postgresql://postgres:@/{settings.embedded_database}?host={socket_dir}"


def stop_embedded(settings: Settings | None = None) -> bool:
    """Stop the embedded server if it runs; return whether it did."""
    settings = settings or get_settings()
    pgdata = Path(settings.home) / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = _import_pgserver().get_server(pgdata, cleanup_mode="stop")
    server.cleanup()
    return True


_url_cache: dict[str, str] = {}


def database_url(settings: Settings | None = None) -> str:
    """CRM_DATABASE_URL when set, else the embedded server's URL."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    key = str(settings.home)
    if key not in _url_cache:
        _url_cache[key] = embedded_url(settings)
    return _url_cache[key]


@dataclass(frozen=True)
class ConnInfo:
    """The URL split into the parts dbt profiles and Airflow connections want."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    sslmode: str | None
    sslrootcert: str | None = None  # CA to verify the server (sslmode=verify-ca/verify-full)
    sslcert: str | None = None  # client certificate, when the server asks for one
    sslkey: str | None = None


def conn_info(url: str) -> ConnInfo:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    host = query.get("host", [parsed.hostname or "localhost"])[0]
    return ConnInfo(
        host=host,
        port=int(query.get("port", [parsed.port or 5432])[0]),
        user=unquote(parsed.username or "postgres"),
        password=unquote(parsed.password or ""),
        dbname=(parsed.path or "/postgres").lstrip("/") or "postgres",
        sslmode=query.get("sslmode", [None])[0],
        sslrootcert=query.get("sslrootcert", [None])[0],
        sslcert=query.get("sslcert", [None])[0],
        sslkey=query.get("sslkey", [None])[0],
    )


def with_database(url: str, name: str) -> str:
    """The same server and credentials, another database."""
    parsed = urlparse(url)
    return parsed._replace(path=f"/{name}").geturl()


def connect(url: str | None = None, **kwargs: object) -> psycopg.Connection:
    url = url or database_url()
    try:
        return psycopg.connect(url, **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL ({exc}). Check CRM_DATABASE_URL, or unset it to use "
            "the embedded server."
        ) from None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("crm.migrations").iterdir():
        m = MIGRATION_NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def upgrade(url: str | None = None) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return their names.

    Idempotent and safe to run concurrently (an advisory lock serialises runners). A migration
    whose file changed after it was applied is an error: write a new migration instead.
    """
    applied_now: list[str] = []
    with connect(url, autocommit=True) as conn:
        if _up_to_date(conn):
            return applied_now  # nothing to do: no DDL, so a least-privilege login may run it
        conn.execute("select pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute("create schema if not exists crm")
            conn.execute(
                """
                create table if not exists crm.schema_migrations (
                    version    integer primary key,
                    name       text not null,
                    checksum   text not null,
                    applied_at timestamptz not null default now()
                )
                """
            )
            done = {
                v: (n, c)
                for v, n, c in conn.execute(
                    "select version, name, checksum from crm.schema_migrations"
                )
            }
            for mig in migrations():
                if mig.version in done:
                    if done[mig.version][1] != mig.checksum:
                        raise DatabaseError(
                            f"migration {mig.name} changed after it was applied; "
                            "add a new migration instead of editing an applied one"
                        )
                    continue
                with conn.transaction():
                    conn.execute(mig.sql.encode())
                    conn.execute(
                        "insert into crm.schema_migrations (version, name, checksum) "
                        "values (%s, %s, %s)",
                        (mig.version, mig.name, mig.checksum),
                    )
                applied_now.append(mig.name)
                log.info("applied migration %s", mig.name)
        except psycopg.errors.InsufficientPrivilege as exc:
            user = conn.info.user
            raise DatabaseError(
                f"migrations are pending and {user} may not apply them ({exc}): run `crm db "
                "upgrade` as the database's owner"
            ) from None
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


def _up_to_date(conn: psycopg.Connection) -> bool:
    """Every migration applied, unchanged (read only; False when it cannot be read)."""
    try:
        with conn.transaction():
            if conn.execute("select to_regclass('crm.schema_migrations')").fetchone() == (None,):
                return False
            done: dict[int, str] = dict(
                conn.execute("select version, checksum from crm.schema_migrations")
            )
    except psycopg.errors.InsufficientPrivilege:
        return False
    return all(done.get(m.version) == m.checksum for m in migrations())


def fresh_database(server_url: str, name: str) -> str:
    """Drop the database ``name`` on the server if it exists, create it anew, migrate it;
    return its URL (the lint database, the tests' template)."""
    with connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    upgrade(url)
    return url


def set_clock(url: str, at: datetime | None) -> None:
    """Make ``at`` the database's "now" for crm.now() in every new session (None: the wall
    clock again). Sessions already open keep the clock they started with."""
    name = conn_info(url).dbname
    with connect(url, autocommit=True) as conn:
        if at is None:
            conn.execute(sql.SQL("alter database {} reset crm.now").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("alter database {} set crm.now = {}").format(
                    sql.Identifier(name), sql.Literal(at.isoformat())
                )
            )


def clock(url: str | None = None) -> datetime:
    """The pipeline's "now" (crm.now()): the wall clock unless ``crm db clock`` set another."""
    with connect(url) as conn:
        row = conn.execute("select crm.now()").fetchone()
    assert row is not None
    return row[0]


def require_migrated(conn: psycopg.Connection) -> None:
    """Raise a DatabaseError that says what to run when migrations are pending."""
    latest = max(m.version for m in migrations())
    current = None
    if conn.execute("select to_regclass('crm.schema_migrations')").fetchone() != (None,):
        row = conn.execute("select max(version) from crm.schema_migrations").fetchone()
        current = row[0] if row else None
    if current is None or current < latest:
        raise DatabaseError(
            f"database schema is at version {current}, code needs {latest}: run `crm db upgrade`"
        )


def ensure_reader(url: str, user: str, password: str) -> str:
    """A login role for dashboards and other readers: a member of crm_marketer (the marts, the
    ML results and the delivery log; never raw events or pii). Created, or its password reset,
    by a role allowed to; returns the reader's URL on the same server and database."""
    return ensure_login(url, user, password, "crm_marketer")


def ensure_login(url: str, user: str, password: str, group: str) -> str:
    """A login role that is a member of ``group`` (one of the migrations' group roles), created
    or its password reset; returns its URL on the same server and database."""
    info = conn_info(url)
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (user,)).fetchone()
        verb = "alter" if exists else "create"
        conn.execute(
            sql.SQL(verb + " role {} login password {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(group), sql.Identifier(user)))
        conn.execute(
            sql.SQL("grant connect on database {} to {}").format(
                sql.Identifier(info.dbname), sql.Identifier(user)
            )
        )
    parsed = urlparse(url)
    netloc = f"{quote(user)}:{quote(password, safe='')}@" + parsed.netloc.rpartition("@")[2]
    return parsed._replace(netloc=netloc).geturl()


def kept_secret(path: Path) -> str:
    """A random secret generated once and kept (mode 0600) for local use."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def reader_password(user: str, settings: Settings | None = None) -> str:
    """CRM_READER_PASSWORD, or one generated once and kept in CRM_HOME/superset/."""
    import os

    home = Path((settings or get_settings()).home)
    return os.environ.get("CRM_READER_PASSWORD") or kept_secret(
        home / "superset" / f"{user}.password"
    )
