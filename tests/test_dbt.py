"""The dbt project on a real PostgreSQL: it builds and tests, recovers the simulator's
identities, keeps personal data out of reach, and incremental runs equal full refreshes."""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from crm import db
from crm.ingest.load import ingest_paths
from crm.settings import Settings
from crm.transform import DBT_PROJECT, TransformError, build, run_dbt
from tests.conftest import insert_out_of_contract_event

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(
    pg_server_url: str, template_url: str, small_shop: Path, tmp_path_factory
) -> Iterator[str]:
    """One database with the small shop ingested and the whole project built."""
    name = "crm_test_dbt_built"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name} template crm_test_template")
    url = db.with_database(pg_server_url, name)
    settings = Settings(_env_file=None, database_url=url)
    ingest_paths([small_shop / "events"], settings=settings)
    build(url=url, capture=True)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


def rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_stitching_recovers_the_simulated_people(built: str, small_shop: Path) -> None:
    truth = {}
    with (small_shop / "ground_truth" / "identities.csv").open() as f:
        for r in csv.DictReader(f):
            truth[r["anonymous_id"]] = r["user_id"]
    stitched = dict(
        rows(
            built,
            "select identifier, customer_id from intermediate.int_identities_stitched"
            " where identifier_type = 'anonymous_id'",
        )
    )
    linked = {a: c for a, c in stitched.items() if not c.startswith("anon:")}
    assert len(linked) > 100
    wrong = {a: (c, truth[a]) for a, c in linked.items() if truth.get(a) != c}
    assert not wrong, list(wrong.items())[:5]
    # devices of people who never registered stay anonymous customers of their own
    for a, c in stitched.items():
        if truth.get(a) == "":
            assert c == f"anon:{a}"


def test_anonymous_browsing_before_login_counts_for_the_customer(built: str) -> None:
    [(n,)] = rows(built, """
        select count(*) from intermediate.int_events_sessionized e
        join intermediate.int_identities_stitched i on i.identifier = e.anonymous_id
        where e.user_id is null and i.is_known and e.event_name = 'Product Viewed'
    """)  # fmt: skip
    assert n > 100
    # and those views are in the customer's interactions
    [(m,)] = rows(built, "select count(*) from marts.customer_product_interactions"
                         " where customer_id not like 'anon:%' and views > 0")  # fmt: skip
    assert m > 100


def test_marts_are_consistent_with_raw_data(built: str, small_shop: Path) -> None:
    manifest = orjson.loads((small_shop / "manifest.json").read_bytes())
    [(orders,)] = rows(built, "select count(*) from marts.fct_orders")
    assert orders == manifest["orders"]
    [(customers, segments)] = rows(
        built, "select count(*), count(distinct lifecycle_segment) from marts.dim_customers"
    )
    assert customers > 200 and segments >= 4
    [(bad,)] = rows(
        built,
        "select count(*) from marts.dim_customers where orders_count >= 2"
        " and lifecycle_segment not in ('repeat_buyer', 'inactive', 'lost')",
    )
    assert bad == 0
    [(converted, with_session)] = rows(built, """
        select (select sum(orders) from marts.fct_sessions),
               (select count(*) from marts.fct_orders where session_id is not null)
    """)  # fmt: skip
    assert converted == with_session > 0
    [(hours,)] = rows(
        built, "select min(cardinality(activity_hour_of_week)) from marts.customer_features"
    )
    assert hours == 168


def test_marketers_cannot_read_personal_data(built: str) -> None:
    with psycopg.connect(built) as conn:
        conn.execute("set role crm_marketer")
        assert conn.execute("select count(*) from marts.dim_customers").fetchone()[0] > 0  # type: ignore[index]
        for table in ("pii.customer_pii", "raw.events", "staging.stg_events__identifies"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(f"select 1 from {table} limit 1")
    emails = rows(built, "select count(*) from pii.customer_pii where email like '%@example.com'")
    assert emails[0][0] > 100


def test_docs_generate(built: str) -> None:
    run_dbt(["docs", "generate"], url=built, capture=True)
    catalog = orjson.loads((DBT_PROJECT / "target" / "catalog.json").read_bytes())
    assert "model.shop_crm.dim_customers" in catalog["nodes"]


def test_every_table_enforces_its_grain(built: str) -> None:
    """Each table dbt builds has a primary key or a unique index (not partial) in the database;
    only event-sized tables outside marts and pii may instead say why not in
    `meta.grain_not_enforced`."""
    manifest = orjson.loads((DBT_PROJECT / "target" / "manifest.json").read_bytes())
    exempt = {
        (node["schema"], node["alias"]): node["config"].get("meta", {}).get("grain_not_enforced")
        for node in manifest["nodes"].values()
        if node["resource_type"] in ("model", "snapshot")
    }
    tables = rows(
        built,
        """
        select n.nspname, c.relname,
               exists (select 1 from pg_index i where i.indrelid = c.oid
                       and i.indisunique and i.indpred is null) as keyed
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p')
          and n.nspname in ('staging', 'intermediate', 'marts', 'pii', 'snapshots')
        """,
    )
    assert {schema for schema, _, _ in tables} >= {"marts", "pii", "snapshots"}
    unkeyed = [f"{s}.{t}" for s, t, keyed in tables if not keyed and not exempt.get((s, t))]
    assert not unkeyed, f"tables without an enforced grain: {unkeyed}"
    wrongly_exempt = [
        f"{s}.{t}" for (s, t), why in exempt.items() if why and s in ("marts", "pii", "snapshots")
    ]
    assert not wrongly_exempt, f"marts must enforce their grain: {wrongly_exempt}"
    contracted = [
        node["name"]
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model" and node["config"].get("contract", {}).get("enforced")
    ]
    assert "dim_customers" in contracted


def test_dashboard_rollups_count_what_the_marts_hold(built: str) -> None:
    """The roll-ups the dashboards read agree with counting the marts directly."""
    for period, trunc in (("day", "day"), ("week", "week"), ("month", "month")):
        direct = rows(
            built,
            f"select date_trunc('{trunc}', session_date)::date, count(distinct customer_id),"
            " count(distinct customer_id) filter (where product_views > 0),"
            " count(distinct customer_id) filter (where cart_adds > 0)"
            " from marts.fct_sessions where customer_id is not null group by 1 order by 1",
        )
        rolled = rows(
            built,
            "select period_start, active_customers, product_viewers, cart_adders"
            f" from marts.active_customers where period = '{period}' and active_customers > 0"
            " order by 1",
        )
        assert rolled == direct and len(direct) > 1, period
    buyers = rows(
        built,
        "select count(distinct customer_id), count(*), sum(revenue) from marts.fct_orders"
        " where order_date > (select max(event_date) from staging.stg_events__calls) - 30",
    )
    assert (
        rows(
            built,
            "select buyers, orders, revenue from marts.active_customers"
            " where period = 'last_30_days'",
        )
        == buyers
        and buyers[0][0] > 0
    )
    by_day = (
        "select day, lifecycle_segment, count(*) from marts.customer_segments_daily group by 1, 2"
    )
    assert _table(built, "select day, lifecycle_segment, customers"
                  " from marts.lifecycle_segments_daily") == _table(built, by_day)  # fmt: skip
    moves = rows(
        built,
        "select count(*), count(distinct t.day) from marts.customer_segments_daily t"
        " join marts.customer_segments_daily y on y.customer_id = t.customer_id"
        " and y.day = t.day - 1"
        " where t.day > (select max(day) from marts.customer_segments_daily) - 7",
    )
    assert rows(built, "select sum(customers), count(distinct day) from marts.lifecycle_moves") == [
        (moves[0][0], moves[0][1])
    ]


def _table(url: str, sql: str) -> list[tuple]:
    return sorted(rows(url, sql), key=repr)


def _fingerprints(url: str) -> dict[str, str]:
    """md5 of every built table's and view's rows (sorted), per relation: what a full refresh
    and an incremental run over the same data must agree on (data_freshness ages with the
    clock)."""
    with psycopg.connect(url) as conn:
        relations = conn.execute(
            "select table_schema, table_name from information_schema.tables"
            " where table_schema in ('staging', 'intermediate', 'marts', 'pii')"
            " and table_name <> 'data_freshness'"  # ages against now()
            " order by 1, 2"
        ).fetchall()
        return {
            f"{schema}.{name}": conn.execute(
                "select md5(coalesce(string_agg(t::text, chr(10) order by t::text), ''))"
                f' from "{schema}"."{name}" as t'
            ).fetchone()[0]  # type: ignore[index]
            for schema, name in relations
        }


SESSION_COLUMNS = "message_id, device_key, user_id, event_name, event_at, session_start, session_id"


def test_incremental_run_equals_full_refresh(
    tmp_path: Path, small_shop: Path, settings: Settings, db_url: str
) -> None:
    days = sorted((small_shop / "events").iterdir())
    first, rest = days[: len(days) // 2], days[len(days) // 2 :]
    ingest_paths(first, settings=settings)
    defaults = None  # the project's own settings: loads already processed are skipped
    build(url=db_url, capture=True, dbt_vars=defaults)
    # a late event that joins two sessions of one device into one, loaded after the first run
    [(device, ts)] = rows(db_url, """
        select device_key, s1.ended_at + (s2.started_at - s1.ended_at) / 2
        from (select device_key, started_at, ended_at,
                     lead(started_at) over (partition by device_key order by started_at) as nxt
              from marts.fct_sessions) s1
        join marts.fct_sessions s2 using (device_key)
        where s2.started_at = s1.nxt and s2.started_at - s1.ended_at < interval '50 minutes'
        order by device_key limit 1
    """)  # fmt: skip
    late = tmp_path / "late.jsonl"
    late.write_bytes(orjson.dumps({
        "messageId": "late-1", "type": "track", "event": "Product Viewed", "anonymousId": device,
        "timestamp": ts.isoformat(), "properties": {"product_id": "p00001"},
    }) + b"\n")  # fmt: skip
    # most of the rest, then one day with the late event: the last run touches few customers
    ingest_paths(rest[:-1], settings=settings)
    build(url=db_url, capture=True, dbt_vars=defaults)
    ingest_paths([rest[-1], late], settings=settings)
    build(url=db_url, capture=True, dbt_vars=defaults)
    # the device views that product again, in a load of its own, then a run with nothing new:
    # each load's events count once (customer_product_interactions adds new events to its
    # stored counts; the late load's only pair now carries the newer load's id)
    again = tmp_path / "again.jsonl"
    again.write_bytes(orjson.dumps({
        "messageId": "late-2", "type": "track", "event": "Product Viewed", "anonymousId": device,
        "timestamp": (ts + timedelta(minutes=1)).isoformat(),
        "properties": {"product_id": "p00001"},
    }) + b"\n")  # fmt: skip
    [(newest,)] = rows(db_url, "select max(event_at) from staging.stg_events__calls")
    # the device then reports a time zone of its own, a half-hour one: its customer's hours
    # of calls without one (the late views above) move in its hour-of-week profile
    again.write_bytes(again.read_bytes() + orjson.dumps({
        "messageId": "late-tz", "type": "page", "anonymousId": device,
        "timestamp": (newest + timedelta(minutes=1)).isoformat(),
        "context": {"timezone": "Asia/Kolkata"},
    }) + b"\n")  # fmt: skip
    # and a late identify call ties a device already tied to one user to an earlier one: the
    # device's history moves from that user (who brought no new call) to the new one
    [(moved_device, linked_at)] = rows(db_url, """
        select identifier, linked_at from intermediate.int_identities_stitched
        where identifier_type = 'anonymous_id' and is_known
        order by identifier limit 1
    """)  # fmt: skip
    again.write_bytes(again.read_bytes() + orjson.dumps({
        "messageId": "late-3", "type": "identify", "anonymousId": moved_device,
        "userId": "u-earlier", "timestamp": (linked_at - timedelta(minutes=1)).isoformat(),
    }) + b"\n")  # fmt: skip
    # orders: one placed before a customer's stored orders (all of theirs are renumbered), one
    # after another customer's (appended, numbered on from the stored count), and a stored
    # order sent again by someone else (it stays its first caller's). Not here: an order sent
    # again by someone else with an earlier time, which moves it to them (README, known gap)
    [(early_buyer, first_at, _), (next_buyer, _, last_at)] = rows(db_url, """
        select customer_id, min(ordered_at), max(ordered_at) from marts.fct_orders
        where customer_id not like 'anon:%' group by customer_id having count(*) >= 2
        order by customer_id limit 2
    """)  # fmt: skip
    [(resent_order, resent_at)] = rows(db_url, f"""
        select order_id, ordered_at from marts.fct_orders
        where customer_id not in ('{early_buyer}', '{next_buyer}') order by order_id limit 1
    """)  # fmt: skip
    for message_id, order_id, user_id, at in [
        ("late-order", "o-late", early_buyer, first_at - timedelta(hours=1)),
        ("next-order", "o-next", next_buyer, last_at + timedelta(hours=1)),
        ("resent-order", resent_order, "u-resender", resent_at + timedelta(hours=1)),
    ]:
        again.write_bytes(again.read_bytes() + orjson.dumps({
            "messageId": message_id, "type": "track", "event": "Order Completed",
            "userId": user_id, "timestamp": at.isoformat(),
            "properties": {"order_id": order_id, "revenue": 10.0, "total": 10.0,
                           "currency": "USD",
                           "products": [{"product_id": "p00001", "price": 10.0}]},
        }) + b"\n")  # fmt: skip
    ingest_paths([again], settings=settings)
    build(url=db_url, capture=True, dbt_vars=defaults)
    [(before_rerun,)] = rows(db_url, "select now()")
    build(url=db_url, capture=True, dbt_vars=defaults)
    # a second run the same day plans from statistics that know the newest stored day
    # (without them it took that day for one row and, at 10M events, anti-joined every
    # customer with every customer in a nested loop for minutes)
    [(analyzed,)] = rows(
        db_url,
        "select last_analyze from pg_stat_user_tables"
        " where relid = 'marts.customer_segments_daily'::regclass",
    )
    assert analyzed is not None and analyzed >= before_rerun
    assert rows(db_url, "select t.time_zone from marts.dim_customers t"
                " join intermediate.int_identities_stitched i using (customer_id)"
                f" where i.identifier = '{device}'") == [("Asia/Kolkata",)]  # fmt: skip
    numbers = dict(rows(db_url, "select order_id, customer_order_number from marts.fct_orders"
                               " where order_id in ('o-late', 'o-next')"))  # fmt: skip
    assert numbers["o-late"] == 1 and numbers["o-next"] > 2, numbers
    [(resent_owner,)] = rows(
        db_url, f"select customer_id from marts.fct_orders where order_id = '{resent_order}'"
    )
    assert resent_owner != "u-resender"
    assert rows(db_url, "select customer_id from intermediate.int_identities_stitched"
                f" where identifier = '{moved_device}'") == [("u-earlier",)]  # fmt: skip
    incremental = _table(
        db_url, f"select {SESSION_COLUMNS} from intermediate.int_events_sessionized"
    )
    marts_inc = _table(db_url, "select * from marts.fct_sessions")
    every_inc = _fingerprints(db_url)
    build(url=db_url, capture=True, full_refresh=True, dbt_vars=defaults)
    every_full = _fingerprints(db_url)
    assert len(every_full) > 30
    assert [r for r in every_full if every_inc.get(r) != every_full[r]] == []
    full = _table(db_url, f"select {SESSION_COLUMNS} from intermediate.int_events_sessionized")
    assert len(incremental) == len(full) > 1000
    assert incremental == full
    assert marts_inc == _table(db_url, "select * from marts.fct_sessions")
    with psycopg.connect(db_url) as conn:
        merged = conn.execute(
            "select count(distinct session_id) from intermediate.int_events_sessionized"
            " where device_key = %s and event_at between %s - interval '40 minutes'"
            " and %s + interval '40 minutes'",
            (device, ts, ts),
        ).fetchall()
    assert merged == [(1,)]


def test_a_failing_test_stops_downstream_and_names_itself(
    small_shop: Path, settings: Settings, db_url: str
) -> None:
    day = sorted((small_shop / "events").iterdir())[3]
    ingest_paths([day], settings=settings)
    insert_out_of_contract_event(db_url)
    with pytest.raises(TransformError, match="accepted_values_stg_events__calls_platform"):
        build(url=db_url, capture=True)
    [(exists,)] = rows(db_url, "select to_regclass('marts.dim_customers') is not null")
    assert not exists  # never built: everything downstream of the failed test was skipped


def test_partial_parsing_keeps_every_test(tmp_path: Path, pg_server_url: str) -> None:
    """dbt re-parses only what changed. With a YAML snapshot defined beside a model's
    properties (dbt-core #10903), editing any macro silently dropped that file's five data
    tests from every later partial parse; the snapshot now has its own file in snapshots/."""
    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs"))

    def data_tests(*flags: str) -> set[str]:
        out = run_dbt([*flags, "ls", "--resource-type", "test", "--output", "name"],
                      url=pg_server_url, capture=True, project_dir=project).stdout  # fmt: skip
        return set(re.findall(r"^[a-z0-9_]+$", out, flags=re.MULTILINE))

    full = data_tests("--no-partial-parse")
    assert any(name.startswith("unique_consent_history") for name in full)
    for edited in ("macros/helpers.sql", "models/marts/fct_orders.yml"):
        path = project / edited
        path.write_text(path.read_text() + "\n# edited\n" if edited.endswith("yml")
                        else path.read_text() + "\n{# edited #}\n")  # fmt: skip
        assert data_tests() == full, edited
