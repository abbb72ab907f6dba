"""Right of access and right to erasure, on a copy of the ML shop: export everything about a
person; erase them, then search every table and Redis for any of their identifiers and find
none; re-ingest their old lines and still find none; the rest of the data is untouched."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path

import psycopg
import pytest

from crm import privacy
from crm.settings import Settings
from tests.conftest import member_url, scalar


@pytest.fixture
def settings(shop: str, tmp_path: Path) -> Settings:
    return Settings(_env_file=None, database_url=shop, home=tmp_path / "home")


def _someone(conn: psycopg.Connection) -> str:
    """A known customer with several devices, orders and personal data."""
    return conn.execute(
        """
        select i.customer_id from intermediate.int_identities_stitched i
        join pii.customer_pii p on p.customer_id = i.customer_id
        where exists (select 1 from marts.fct_orders o where o.customer_id = i.customer_id)
        group by 1 having count(*) >= 3 order by count(*) desc, 1 limit 1
        """
    ).fetchone()[0]  # type: ignore[index]


def _found_anywhere(conn: psycopg.Connection, ids: list[str]) -> dict[str, int]:
    """Every text or jsonb column of every table in the pipeline's schemas that holds any
    of ``ids`` (as a value or inside a document), with how many rows."""
    cols = conn.execute(
        """
        select c.table_schema, c.table_name, c.column_name from information_schema.columns c
        join information_schema.tables t using (table_schema, table_name)
        where c.table_schema = any(%s) and t.table_type = 'BASE TABLE'
          and c.data_type in ('text', 'character varying', 'jsonb', 'json')
          and not (c.table_schema = 'crm' and c.table_name = 'erased_identifiers')
        """,
        (list(privacy.SCHEMAS),),
    ).fetchall()
    patterns = [f"%{i}%" for i in ids]
    hits = {}
    for schema, table, column in cols:
        n = conn.execute(
            f'select count(*) from "{schema}"."{table}" where "{column}"::text like any(%s)',
            (patterns,),
        ).fetchone()[0]  # type: ignore[index]
        if n:
            hits[f"{schema}.{table}.{column}"] = n
    return hits


def test_export_then_erase_leaves_no_trace_and_nothing_comes_back(
    shop: str, settings: Settings, tmp_path: Path
) -> None:
    from crm.ingest.load import ingest_paths
    from ml.publish import redis_client

    r = redis_client(settings)
    with psycopg.connect(shop) as conn:
        who = _someone(conn)
        other = conn.execute(
            "select customer_id from marts.dim_customers where customer_id <> %s limit 1", (who,)
        ).fetchone()[0]  # type: ignore[index]
        for cid in (who, other):  # what scoring and campaigns would have left about them
            conn.execute(
                "insert into ml.churn_scores (customer_id, churn_probability, risk_band,"
                " model_version, scored_at) values (%s, 0.5, 'medium', '1', now())"
                " on conflict do nothing",  # scoring may have been there first
                (cid,),
            )
            conn.execute(
                "insert into crm.deliveries (campaign_id, customer_id, channel, slot, state,"
                " title, body) values ('c', %s, 'push', now(), 'sent', 'Hi', 'Offer')",
                (cid,),
            )
            r.set(f"crm:customer:{cid}", json.dumps({"segment": 1}))
        conn.commit()
        before = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]  # type: ignore[index]
                  for t in ("marts.dim_customers", "raw.events", "crm.deliveries")}  # fmt: skip

        document = privacy.export(conn, who, r)
        person = privacy.resolve(conn, who)
    assert len(person.identifiers) >= 3 and document["customer_id"] == who
    assert {"raw.events", "pii.customer_pii", "pii.contact_traits", "marts.dim_customers",
            "marts.fct_orders", "ml.churn_scores",
            "crm.deliveries"} <= set(document["tables"])  # fmt: skip
    email = document["tables"]["pii.customer_pii"][0]["email"]
    assert "@" in email
    assert document["redis"] == {f"crm:customer:{who}": {"segment": 1}}
    json.loads(privacy.to_json(document))  # one JSON document
    their_events = len(document["tables"]["raw.events"])

    # erased by a login that is only a privacy officer (dbt's tables and their change-count
    # triggers included), not by the owner
    with psycopg.connect(member_url(shop, "crm_privacy_officer")) as conn:
        done = privacy.erase(conn, who, r)
    assert done.rows["raw.events"] == their_events and done.redis_keys == 1
    with psycopg.connect(shop) as conn:
        assert _found_anywhere(conn, person.identifiers) == {}
        assert _found_anywhere(conn, [email]) == {}
        after = {t: conn.execute(f"select count(*) from {t}").fetchone()[0]  # type: ignore[index]
                 for t in before}  # fmt: skip
        assert after["marts.dim_customers"] == before["marts.dim_customers"] - 1
        assert after["raw.events"] == before["raw.events"] - their_events
        assert after["crm.deliveries"] == before["crm.deliveries"]  # counts kept, anonymised
        assert conn.execute("select count(*) from ml.churn_scores where customer_id = %s",
                            (other,)).fetchone() == (1,)  # fmt: skip
        # idempotent: a second run finds nothing more to remove
        again = privacy.erase(conn, who, r)
        assert not again.rows and again.redis_keys == 0
    assert not any(person_id in os.fsdecode(k) for k in r.keys("*") for person_id in
                   person.identifiers)  # fmt: skip
    assert r.get(f"crm:customer:{other}") is not None

    # a backfill carrying their old calls under new messageIds, and one call of someone else
    day = document["tables"]["raw.events"][0]["event_date"]
    folder = tmp_path / "landing" / "events" / f"dt={day}"
    folder.mkdir(parents=True)
    lines = []
    for row in document["tables"]["raw.events"][:20]:
        call = dict(row["payload"])
        call["messageId"] = str(uuid.uuid4())
        lines.append(json.dumps(call))
    stranger = {**json.loads(lines[0]), "messageId": str(uuid.uuid4()),
                "userId": "someone-new", "anonymousId": "device-new"}  # fmt: skip
    lines.append(json.dumps(stranger))
    # and a broken line of theirs (not JSON: quarantined, were they not erased)
    lines.append(f'{{"userId": "{who}", "messageId": "{uuid.uuid4()}", "type": "tra')
    with gzip.open(folder / "backfill.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    (result,) = ingest_paths([folder], url=shop, settings=settings)
    assert (result.loaded, result.erased, result.rejected) == (1, len(lines) - 1, 0)
    with psycopg.connect(shop) as conn:
        assert _found_anywhere(conn, person.identifiers) == {}
        assert _found_anywhere(conn, [email]) == {}
        audit = conn.execute(
            "select loaded, erased from raw.load_audit where load_id = %s", (result.load_id,)
        ).fetchone()
    assert audit == (1, len(lines) - 1)


def test_retention_drops_whole_old_day_partitions_and_keeps_the_rest(shop: str) -> None:
    from datetime import date, timedelta

    with psycopg.connect(shop) as conn:
        days = [r[0] for r in conn.execute(
            "select distinct event_date from raw.events order by 1").fetchall()]  # fmt: skip
        kept_from = days[len(days) // 2]
        expected = conn.execute(
            "select count(*) from raw.events where event_date >= %s", (kept_from,)
        ).fetchone()[0]  # type: ignore[index]
        today = kept_from + timedelta(days=30)
        derived = privacy.derived_event_tables(conn)
        assert {"stg_events__calls", "int_events_sessionized", "int_identifier_days",
                "int_sessions", "fct_orders", "fct_sessions"} <= {
                    table for _, table, _ in derived}  # fmt: skip

        def aged() -> int:  # rows of dbt's incremental tables older than kept_from
            return sum(scalar(
conn,
                f'select count(*) from "{schema}"."{table}" where "{column}" < %s::date'
                + ("" if column == "event_date" else "::timestamp at time zone 'UTC'"),
                (kept_from,)) for schema, table, column in derived)  # fmt: skip

        before = aged()
        done = privacy.apply_retention(conn, 30, today)
        assert done["partitions_dropped"] == sum(1 for d in days if d < kept_from)
        left = conn.execute("select min(event_date), count(*) from raw.events").fetchone()
        assert left == (kept_from, expected)
        # what raw forgot, dbt's incremental tables forget too
        assert before > 0 and done["derived_rows_deleted"] == before and aged() == 0
        again = privacy.apply_retention(conn, 30, today)
        assert again["partitions_dropped"] == again["derived_rows_deleted"] == 0
        assert isinstance(today, date)


def test_requests_are_worked_off_and_the_dag_takes_them_from_its_form(
    shop: str, settings: Settings, tmp_path: Path, airflow_home: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    from airflow.dag_processing.dagbag import DagBag

    from crm.settings import PROJECT_ROOT, get_settings
    from tests.test_dags import without_deadline

    with psycopg.connect(shop) as conn:
        a, b = [r[0] for r in conn.execute(
            "select customer_id from marts.dim_customers order by 1 limit 2")]  # fmt: skip
        privacy.submit(conn, "export", a, "test")
        with pytest.raises(ValueError):
            privacy.submit(conn, "forget", a, "test")
        conn.commit()
    done = privacy.process_pending(shop, tmp_path / "out")
    assert done == {"export": 1}
    exported = json.loads((tmp_path / "out" / "request-1.json").read_text())
    assert exported["customer_id"] == a and exported["tables"]

    monkeypatch.setenv("CRM_DATABASE_URL", shop)
    monkeypatch.setenv("CRM_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "privacy_requests.py"))
        dag = without_deadline(bag.dags["privacy_requests"])
        capsys.readouterr()
        run = dag.test(run_conf={"kind": "erase", "subject": b})
        assert run.state == "success"
        # nothing personal in the run's logs or its XCom (counts only)
        said = capsys.readouterr()
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "Returned value was: {'erase': 1}" in said.out + said.err + logged
        returned = [line for line in (said.out + said.err + logged).splitlines()
                    if "Returned value" in line]  # fmt: skip
        assert returned and not any(b in line for line in returned)
        assert b not in said.out + said.err + logged
    finally:
        get_settings.cache_clear()
    with psycopg.connect(shop) as conn:
        rows = conn.execute(
            "select kind, status, subject, subject_hash from crm.privacy_requests"
            " order by request_id"
        ).fetchall()
        assert conn.execute(
            "select count(*) from marts.dim_customers where customer_id = %s", (b,)
        ).fetchone() == (0,)
    assert rows[1] == ("erase", "done", None, privacy.digest(b))  # the id itself is gone

    # erasing the person exported first deletes that export and the id on its request
    with psycopg.connect(shop) as conn:
        privacy.submit(conn, "erase", a, "test")
        conn.commit()
    assert privacy.process_pending(shop, tmp_path / "out") == {"erase": 1}
    assert not (tmp_path / "out" / "request-1.json").exists()
    with psycopg.connect(shop) as conn:
        kept = conn.execute(
            "select count(*) from crm.privacy_requests where subject is not null"
        ).fetchone()
    assert kept == (0,)
