"""Importers write valid, deterministic event files from public logs' exact formats; bad rows
are counted with their reason; the files load with nothing rejected."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from crm.cli import app
from crm.contract import Event
from crm.importers import (
    checksum_tree,
    import_cdnow,
    import_online_retail,
    import_retailrocket,
)
from crm.ingest.load import ingest_paths
from crm.settings import Settings

RETAILROCKET = """timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,view,248676,
1433221999827,111016,addtocart,285930,
1433222147345,111016,transaction,285930,4000
1433222147345,111016,transaction,17234,4000
1433222147345,111016,transaction,17234,4000
1433223000000,5,view,,
1433223000001,6,wishlist,1,
"""

ONLINE_RETAIL = """Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country
489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom
489434,79323P,PINK CHERRY LIGHTS,12,2009-12-01 07:45:00,6.75,13085.0,United Kingdom
C489449,22087,PAPER BUNTING WHITE LACE,-12,2009-12-01 10:33:00,2.95,16321.0,Australia
489436,21755,LOVE BUILDING BLOCK WORD,18,2010-06-01 10:00:00,5.45,,United Kingdom
489437,22143,CHRISTMAS CRAFT HEART DECORATIONS,6,2010-06-01 10:00:00,2.1,14911.0,EIRE
"""


def events_in(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.rglob("*.jsonl.gz")):
        out += [orjson.loads(line) for line in gzip.decompress(f.read_bytes()).splitlines()]
    return out


def test_retailrocket_maps_views_carts_and_grouped_transactions(tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    src.write_text(RETAILROCKET)
    s = import_retailrocket(src, tmp_path / "a")
    evs = events_in(tmp_path / "a")
    assert [Event.model_validate(e).event for e in evs].count("Product Viewed") == 2
    orders = [e for e in evs if e["event"] == "Order Completed"]
    assert len(orders) == 1
    assert orders[0]["properties"]["products"] == [
        {"product_id": "17234", "price": 0, "quantity": 2},
        {"product_id": "285930", "price": 0, "quantity": 1},
    ]
    assert orders[0]["anonymousId"] == "rr:111016"
    assert s.skipped == {"missing timestamp, visitor or item": 1, "unknown event 'wishlist'": 1}
    # the same input writes the same bytes: re-importing is harmless
    import_retailrocket(src, tmp_path / "b")
    assert checksum_tree(tmp_path / "a") == checksum_tree(tmp_path / "b")


def test_online_retail_groups_invoices_skips_cancellations_and_converts_uk_time(
    tmp_path: Path,
) -> None:
    src = tmp_path / "online_retail_II.csv"
    src.write_text(ONLINE_RETAIL)
    s = import_online_retail(src, tmp_path)
    evs = sorted(events_in(tmp_path), key=lambda e: e["timestamp"])
    assert [e["properties"]["order_id"] for e in evs] == ["or-489434", "or-489437"]
    assert evs[0]["userId"] == "or:13085"
    assert evs[0]["properties"]["revenue"] == pytest.approx(12 * 6.95 + 12 * 6.75)
    assert evs[0]["timestamp"] == "2009-12-01T07:45:00.000Z"  # GMT in winter
    assert evs[1]["timestamp"] == "2010-06-01T09:00:00.000Z"  # BST in summer
    assert s.skipped == {"cancellation (invoice C...)": 1, "no customer id": 1}
    for e in evs:
        Event.model_validate(e)


def test_importers_refuse_a_file_in_another_format(tmp_path: Path) -> None:
    src = tmp_path / "events.csv"
    src.write_text("a,b\n1,2\n")
    result = CliRunner().invoke(app, ["import", "retailrocket", str(src), "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "missing column(s)" in str(result.exception) + result.output


def test_cdnow_import_loads_every_purchase(real_data: Path, tmp_path: Path, db_url: str) -> None:
    s = import_cdnow(real_data / "CDNOW_master.txt", tmp_path)
    assert s.events == 69659 and not s.skipped
    settings = Settings(
        _env_file=None, database_url=db_url, ingest_min_timestamp="1990-01-01T00:00:00Z"
    )
    results = ingest_paths(sorted((tmp_path / "events").iterdir()), settings=settings)
    assert sum(r.loaded for r in results) == 69659
    assert sum(r.rejected for r in results) == 0
