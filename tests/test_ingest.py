"""Ingestion into a real PostgreSQL: hostile input, dedup, idempotence, the audit invariant."""

from __future__ import annotations

import gzip
import shutil
import threading
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from crm.ingest.load import ingest_paths
from crm.settings import Settings

pytestmark = pytest.mark.usefixtures("db_url")


def ev(i: int, **over: object) -> bytes:
    base: dict[str, object] = {
        "messageId": f"m-{i}",
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": f"a-{i % 7}",
        "timestamp": f"2026-02-0{1 + i % 3}T23:30:00+02:00",
        "properties": {"product_id": f"p{i}", "price": 1.5},
    }
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


HOSTILE: list[tuple[bytes, str]] = [
    (b'{"messageId": "t1", "type": "tra', "invalid JSON"),
    (b"[1, 2]", "not an object"),
    (ev(900, messageId=None), "messageId"),
    (ev(901, timestamp=None), "timestamp"),
    (ev(902, timestamp="31/02/2026"), "timestamp"),
    (ev(903, timestamp="2999-01-01T00:00:00Z"), "in the future"),
    (ev(904, type="unknown"), "type"),
    (ev(905, properties={"q": "nul\x00inside"}), "NUL"),
    (b'{"messageId": "t6", "type": "track", "event": "\\udc00", "userId": "u", '
     b'"timestamp": "2026-02-01T00:00:00Z"}', "surrogate"),
    (ev(906).replace(b"1.5", b"NaN"), "invalid JSON"),
    (ev(907).replace(b"1.5", b"Infinity"), "invalid JSON"),
    (b'{"messageId": "t8\xc3\x28", "type": "track"}', "invalid UTF-8"),
    (ev(909)[:-1] + b', "city": "M\xfcnchen"}', "invalid UTF-8 at byte"),  # in an unknown field
    (ev(908, properties={"blob": "x" * 3_000_000}), "over the limit"),  # multi-megabyte
    (b'{"messageId": "t9", "type": "track", "event": "x", "userId": "u", '
     b'"timestamp": "2026-02-01T00:00:00Z", "properties": ' + b'{"a":' * 100 + b"1" + b"}" * 100
     + b"}", "nested deeper"),
]  # fmt: skip


def audit(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select file_name, status, lines, loaded, duplicates, rejected from raw.load_audit"
            " order by load_id"
        ).fetchall()


def count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchone()[0]  # type: ignore[index]


def write(path: Path, lines: list[bytes], gz: bool = False) -> Path:
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_hostile_file_loads_the_good_lines_and_quarantines_the_rest(
    tmp_path: Path, settings: Settings, db_url: str
) -> None:
    good = [ev(i) for i in range(50)]
    sql_text = ev(60, anonymousId="x'); drop table raw.events; --", properties={"q": "' or 1=1"})
    lines = [b"\xef\xbb\xbf" + good[0], *good[1:], sql_text, b"", b"   ", good[3]]
    lines += [h for h, _ in HOSTILE]
    [res] = ingest_paths([write(tmp_path / "day.jsonl", lines)], settings=settings)

    assert res.status == "loaded"
    assert (res.lines, res.loaded, res.duplicates, res.rejected) == (
        51 + 1 + len(HOSTILE), 51, 1, len(HOSTILE),
    )  # fmt: skip
    assert count(db_url, "select count(*) from raw.events") == 51
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "select line_number, reason, line_text, line_bytes from raw.rejected_events"
            " order by line_number"
        ).fetchall()
        evil = conn.execute(
            "select anonymous_id, payload->'properties'->>'q' from raw.events"
            " where message_id = 'm-60'"
        ).fetchone()
    assert evil == ("x'); drop table raw.events; --", "' or 1=1")
    first_hostile_line = 50 + 1 + 2 + 1 + 1  # good lines, sql line, two blanks, the repeat
    assert [r[0] for r in rows] == list(
        range(first_hostile_line, first_hostile_line + len(HOSTILE))
    )
    for (raw, expected), (_, why, text, original) in zip(HOSTILE, rows, strict=True):
        assert expected in why, (expected, why)
        assert bytes(original) == raw  # nothing is lost: the exact bytes are kept
        assert "\x00" not in text


def test_timestamps_are_normalised_to_utc_and_partitioned_by_utc_date(
    tmp_path: Path, settings: Settings, db_url: str
) -> None:
    line = ev(1, timestamp="2026-02-01T23:30:00-05:00")  # already 2026-02-02 in UTC
    ingest_paths([write(tmp_path / "tz.jsonl", [line])], settings=settings)
    with psycopg.connect(db_url) as conn:
        at, day, part = conn.execute(
            "select event_at at time zone 'UTC', event_date, tableoid::regclass::text"
            " from raw.events"
        ).fetchone()  # type: ignore[misc]
    assert (str(at), str(day), part) == ("2026-02-02 04:30:00", "2026-02-02", "raw.events_20260202")


def test_rerunning_a_file_changes_nothing(tmp_path: Path, settings: Settings, db_url: str) -> None:
    path = write(tmp_path / "d.jsonl", [ev(i) for i in range(30)] + [b"garbage"])
    [first] = ingest_paths([path], settings=settings)
    before = (count(db_url, "select count(*) from raw.events"),
              count(db_url, "select count(*) from raw.rejected_events"), audit(db_url))  # fmt: skip
    [again] = ingest_paths([path], settings=settings)
    assert again.skipped and again.skipped_as == first.load_id
    after = (count(db_url, "select count(*) from raw.events"),
             count(db_url, "select count(*) from raw.rejected_events"), audit(db_url))  # fmt: skip
    assert before == after == (30, 1, [("d.jsonl", "loaded", 31, 30, 0, 1)])


def test_duplicates_across_files_and_renamed_copies_are_counted_not_loaded(
    tmp_path: Path, settings: Settings, db_url: str
) -> None:
    a = write(tmp_path / "a.jsonl", [ev(i) for i in range(0, 20)])
    b = write(tmp_path / "b.jsonl", [ev(i) for i in range(10, 30)], gz=True)
    (tmp_path / "copy").mkdir()
    c = tmp_path / "copy" / "a-renamed.jsonl"
    shutil.copy(a, c)  # same bytes, other name: skipped by checksum
    results = ingest_paths([a, b, c], settings=settings)
    assert [(r.loaded, r.duplicates) for r in results[:2]] == [(20, 0), (10, 10)]
    assert results[2].skipped
    assert count(db_url, "select count(*) from raw.events") == 30
    assert count(db_url, "select count(distinct message_id) from raw.events") == 30


def test_a_load_whose_later_batches_meet_known_ids_claims_only_the_new_ones(
    tmp_path: Path, settings: Settings, db_url: str
) -> None:
    """The first batches of a file claim their ids straight away; a later batch that holds
    known ids (loaded before) falls back to finding them, in the same transaction."""
    known = write(tmp_path / "known.jsonl", [ev(i) for i in range(9_000, 10_000)])
    big = write(tmp_path / "big.jsonl", [ev(i) for i in range(10_000)])  # 2 MB: 2+ batches
    assert big.stat().st_size > 2 << 20 - 1
    first, second = ingest_paths([known, big], settings=settings)
    assert (first.loaded, second.loaded, second.duplicates) == (1_000, 9_000, 1_000)
    assert count(db_url, "select count(*) from raw.events") == 10_000
    assert count(db_url, "select count(*) from raw.message_ids") == 10_000
    mine = f"select count(*) from raw.events where load_id = {second.load_id}"
    assert count(db_url, mine) == 9_000


def test_an_id_a_concurrent_load_claims_between_probe_and_copy_is_loaded_once(
    tmp_path: Path, settings: Settings, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load that met a known id probes for the known ones, then COPYs the rest; another load
    that claims one of them in between makes that COPY fail, and the batch is claimed again
    with ON CONFLICT: each id is loaded once, by one of the two."""
    import crm.ingest.load as load

    [first] = ingest_paths([write(tmp_path / "known.jsonl", [ev(5)])], settings=settings)
    copies: list[int] = []
    plain = load._write_chunked

    def racing(cp: psycopg.Copy, lines: Any) -> None:
        lines = list(lines)
        if lines and lines[0].count("\t") == 2:  # raw.message_ids rows
            copies.append(len(lines))
            if len(copies) == 2:  # the COPY after the probe: another load claims m-7 first
                with psycopg.connect(db_url, autocommit=True) as other:
                    other.execute(
                        "insert into raw.message_ids (message_id, event_date, load_id)"
                        " values ('m-7', '2026-02-02', %s)",
                        (first.load_id,),
                    )
        plain(cp, lines)

    monkeypatch.setattr(load, "_write_chunked", racing)
    [res] = ingest_paths([write(tmp_path / "more.jsonl", [ev(i) for i in range(20)])],
                         settings=settings)  # fmt: skip
    # the all-new COPY (failed on m-5), the COPY after the probe (failed on m-7), no more
    assert copies == [20, 19]
    assert (res.status, res.loaded, res.duplicates) == ("loaded", 18, 2)
    assert count(db_url, "select count(*) from raw.message_ids") == 20
    mine = f"select count(*) from raw.events where load_id = {res.load_id}"
    assert count(db_url, mine) == 18


def test_truncated_gzip_loads_readable_lines_and_is_marked_partial(
    tmp_path: Path, settings: Settings, db_url: str
) -> None:
    full = gzip.compress(b"\n".join(ev(i) for i in range(2000)) + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    [res] = ingest_paths([path], settings=settings)
    assert res.status == "partial"
    assert "truncated" in (res.message or "") and "re-send" in (res.message or "")
    assert 0 < res.loaded < 2000
    assert res.lines == res.loaded + res.duplicates + res.rejected
    assert count(db_url, "select count(*) from raw.events") == res.loaded
    # the complete file later: only the missing lines load
    path.write_bytes(full)
    [fixed] = ingest_paths([path], settings=settings)
    assert (fixed.status, fixed.loaded, fixed.duplicates) == (
        "loaded",
        2000 - res.loaded,
        res.loaded,
    )


def test_audit_invariant_holds_for_every_file(
    small_shop: Path, settings: Settings, db_url: str
) -> None:
    results = ingest_paths([small_shop / "events"], settings=settings)
    assert len(results) >= 21 and all(r.status == "loaded" for r in results)
    assert count(db_url, "select count(*) from raw.load_audit"
                         " where lines <> loaded + duplicates + rejected") == 0  # fmt: skip
    manifest = orjson.loads((small_shop / "manifest.json").read_bytes())
    # every simulated event lands once; the simulator's retries are the duplicates
    assert count(db_url, "select count(*) from raw.events") == manifest["events"]
    assert sum(r.duplicates for r in results) == manifest["duplicates"]
    assert sum(r.rejected for r in results) == manifest["broken"] > 0
    assert count(db_url, "select count(*) from raw.events e join raw.message_ids m"
                         " using (message_id)") == manifest["events"]  # fmt: skip


def test_parallel_parsing_gives_the_same_result_as_in_process(
    small_shop: Path, tmp_path: Path, settings: Settings, db_url: str, pg_server_url: str
) -> None:
    big = tmp_path / "all.jsonl"
    with big.open("wb") as out:
        for f in sorted((small_shop / "events").rglob("*.jsonl.gz")):
            out.write(gzip.decompress(f.read_bytes()))
        out.write(b"not json\n")
    pooled = settings.model_copy(update={"ingest_workers": 2, "ingest_batch_lines": 3000})
    import crm.ingest.load as load

    old = load.POOL_MIN_BYTES
    load.POOL_MIN_BYTES = 1  # force the worker pool on this small file
    try:
        [res] = ingest_paths([big], settings=pooled)
    finally:
        load.POOL_MIN_BYTES = old
    manifest = orjson.loads((small_shop / "manifest.json").read_bytes())
    assert (res.loaded, res.duplicates, res.rejected) == (
        manifest["events"], manifest["duplicates"], manifest["broken"] + 1,
    )  # fmt: skip
    with psycopg.connect(db_url) as conn:
        last_bad = conn.execute("select max(line_number) from raw.rejected_events").fetchone()
    assert last_bad == (res.lines,)  # line numbers survive the split into blocks


def test_concurrent_loads_of_overlapping_files_never_double_load(
    tmp_path: Path, settings: Settings, db_url: str
) -> None:
    files = [write(tmp_path / f"f{k}.jsonl", [ev(i) for i in range(k * 500, k * 500 + 1500)])
             for k in range(4)]  # fmt: skip
    results: list = []

    def load(f: Path) -> None:
        results.extend(ingest_paths([f], settings=settings))

    threads = [threading.Thread(target=load, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status == "loaded" for r in results)
    assert count(db_url, "select count(*) from raw.events") == 3000
    assert sum(r.loaded for r in results) == 3000
    assert sum(r.duplicates for r in results) == 4 * 1500 - 3000


def test_unmigrated_database_gives_a_clear_error(tmp_path: Path, pg_server_url: str) -> None:
    from crm.db import with_database
    from crm.errors import DatabaseError
    from crm.ingest.load import ingest_file

    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute("drop database if exists crm_test_empty with (force)")
        conn.execute("create database crm_test_empty")
    url = with_database(pg_server_url, "crm_test_empty")
    path = write(tmp_path / "x.jsonl", [ev(1)])
    with pytest.raises(DatabaseError, match="crm db upgrade"):
        ingest_file(path, url=url, settings=Settings(_env_file=None, database_url=url))
