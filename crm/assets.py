"""Airflow assets shared by the DAGs: how ingest -> dbt -> score -> send are chained.

A ``postgres://`` asset URI must name host, port, database, schema and table. The host and
database come from CRM_DATABASE_URL (``localhost`` / ``shop_crm`` for the embedded server,
which listens on a Unix socket only), so the URIs name the database the pipeline really uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crm.db import conn_info
from crm.settings import get_settings

if TYPE_CHECKING:
    from airflow.sdk import Asset


def table_uri(schema: str, table: str) -> str:
    settings = get_settings()
    if settings.database_url:
        info = conn_info(settings.database_url)
        host = "localhost" if info.host.startswith("/") else info.host
        port, dbname = info.port, info.dbname
    else:
        host, port, dbname = "localhost", 5432, settings.embedded_database
    return f"postgres://{host}:{port}/{dbname}/{schema}/{table}"


def table_asset(schema: str, table: str) -> Asset:
    from airflow.sdk import Asset

    # The name defaults to the URI: another database is another asset, never a conflicting one.
    return Asset(uri=table_uri(schema, table))
