"""Importers: public e-commerce logs turned into event files of our contract, so the whole
pipeline (ingest, dbt, ML) runs on real behaviour.

Each importer writes ``<out>/events/dt=YYYY-MM-DD/<source>.jsonl.gz`` (one file per UTC day,
sorted, gzip without a timestamp) with messageIds derived from the source rows: importing the
same file twice writes the same bytes, and ``crm ingest`` skips or deduplicates them. Rows that
cannot become a valid event are counted with their reason, never dropped silently.

- CDNOW (``CDNOW_master.txt``): each purchase line -> ``Order Completed`` by user ``cdnow:<id>``.
- RetailRocket (``events.csv``: timestamp, visitorid, event, itemid, transactionid): view ->
  ``Product Viewed``, addtocart -> ``Product Added``, transaction rows grouped by
  transactionid -> ``Order Completed``; visitors are anonymous (``rr:<visitorid>``).
- UCI Online Retail II (CSV or XLSX: Invoice, StockCode, Description, Quantity, InvoiceDate,
  Price, Customer ID, Country): one ``Order Completed`` per invoice by user ``or:<id>``; dates
  are UK local time; cancellations (invoice ``C…``) and lines without a customer are counted
  and skipped.

Events before 2000 (CDNOW is 1997-98) need ``CRM_INGEST_MIN_TIMESTAMP=1990-01-01T00:00:00Z``.
"""

from __future__ import annotations

import gzip
import hashlib
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from crm.errors import CrmError

NAMESPACE = uuid.UUID("6f1c3d1e-8a3b-4a7e-9a55-3c1b2f0d9e11")


class ImportFormatError(CrmError):
    """The input file is not in the expected format."""


@dataclass
class ImportSummary:
    source: str
    events: int = 0
    files: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def message_id(source: str, *key: object) -> str:
    return str(uuid.uuid5(NAMESPACE, source + ":" + ":".join(map(str, key))))


def _iso(ts: pd.Timestamp) -> str:
    return ts.tz_convert(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def write_days(
    events: list[dict[str, Any]], out: Path, source: str, summary: ImportSummary
) -> None:
    by_day: dict[str, list[bytes]] = defaultdict(list)
    for ev in sorted(events, key=lambda e: (e["timestamp"], e["messageId"])):
        by_day[ev["timestamp"][:10]].append(orjson.dumps(ev))
    for day, lines in sorted(by_day.items()):
        folder = out / "events" / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        data = b"\n".join(lines) + b"\n"
        (folder / f"{source}.jsonl.gz").write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
        summary.files += 1
    summary.events += len(events)


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ImportFormatError(f"{what}: missing column(s) {missing}; found {list(frame.columns)}")


def import_cdnow(path: Path, out: Path) -> ImportSummary:
    summary = ImportSummary("cdnow")
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    _require(raw, ["customer_id", "date", "number_of_cds", "dollar_value"], str(path))
    events = []
    for i, row in enumerate(raw.itertuples(index=False)):
        try:
            day = pd.Timestamp(datetime.strptime(row.date, "%Y%m%d"), tz=UTC) + pd.Timedelta(
                hours=12
            )
        except ValueError:
            summary.skipped["bad date"] += 1
            continue
        qty, value = int(row.number_of_cds), float(row.dollar_value)
        if qty < 1 or value < 0:
            summary.skipped["no CDs or negative value"] += 1
            continue
        order = f"cdnow-{row.customer_id}-{row.date}-{i}"
        events.append({
            "messageId": message_id("cdnow", i), "type": "track", "event": "Order Completed",
            "userId": f"cdnow:{int(row.customer_id)}", "timestamp": _iso(day),
            "properties": {"order_id": order, "revenue": round(value, 2), "currency": "USD",
                           "products": [{"product_id": "cd", "category": "music",
                                         "price": round(value / qty, 4), "quantity": qty}]},
        })  # fmt: skip
    write_days(events, out, "cdnow", summary)
    return summary


def import_retailrocket(path: Path, out: Path) -> ImportSummary:
    summary = ImportSummary("retailrocket")
    raw = pd.read_csv(path, dtype={"visitorid": str, "itemid": str, "transactionid": str})
    _require(raw, ["timestamp", "visitorid", "event", "itemid", "transactionid"], str(path))
    raw["when"] = pd.to_datetime(raw.timestamp, unit="ms", utc=True, errors="coerce")
    events = []
    names = {"view": "Product Viewed", "addtocart": "Product Added"}
    for i, row in enumerate(raw.itertuples(index=False)):
        if pd.isna(row.when) or pd.isna(row.visitorid) or pd.isna(row.itemid):
            summary.skipped["missing timestamp, visitor or item"] += 1
            continue
        if row.event in names:
            events.append({
                "messageId": message_id("retailrocket", i), "type": "track",
                "event": names[row.event], "anonymousId": f"rr:{row.visitorid}",
                "timestamp": _iso(row.when), "properties": {"product_id": row.itemid},
            })  # fmt: skip
        elif row.event != "transaction":
            summary.skipped[f"unknown event {row.event!r}"] += 1
    sales = raw[(raw.event == "transaction") & raw["when"].notna() & raw.visitorid.notna()]
    missing = sales.transactionid.isna()
    summary.skipped["transaction without transactionid"] += int(missing.sum())
    for tid, group in sales[~missing].groupby("transactionid"):
        first = group.iloc[0]
        qty = group.itemid.value_counts()
        events.append({
            "messageId": message_id("retailrocket", "order", tid), "type": "track",
            "event": "Order Completed", "anonymousId": f"rr:{first.visitorid}",
            "timestamp": _iso(group["when"].min()),
            "properties": {"order_id": f"rr-{tid}",
                           "products": [{"product_id": item, "price": 0, "quantity": int(n)}
                                        for item, n in sorted(qty.items())]},
        })  # fmt: skip
    summary.skipped = Counter({k: v for k, v in summary.skipped.items() if v})
    write_days(events, out, "retailrocket", summary)
    return summary


def import_online_retail(path: Path, out: Path) -> ImportSummary:
    summary = ImportSummary("online_retail")
    if path.suffix.lower() in (".xlsx", ".xls"):
        sheets = pd.read_excel(path, sheet_name=None, dtype={"Invoice": str, "StockCode": str})
        raw = pd.concat(sheets.values(), ignore_index=True)
    else:
        raw = pd.read_csv(path, dtype={"Invoice": str, "StockCode": str}, encoding="latin-1")
    raw = raw.rename(
        columns={"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"}
    )
    _require(
        raw, ["Invoice", "StockCode", "Quantity", "InvoiceDate", "Price", "Customer ID"], str(path)
    )
    cancelled = raw.Invoice.str.startswith("C", na=False)
    summary.skipped["cancellation (invoice C...)"] = int(cancelled.sum())
    no_customer = raw["Customer ID"].isna() & ~cancelled
    summary.skipped["no customer id"] = int(no_customer.sum())
    bad = (~cancelled & ~no_customer) & ((raw.Quantity < 1) | (raw.Price < 0))
    summary.skipped["non-positive quantity or negative price"] = int(bad.sum())
    keep = raw[~cancelled & ~no_customer & ~bad].copy()
    local = pd.to_datetime(keep.InvoiceDate, errors="coerce", dayfirst=False)
    keep["at"] = local.dt.tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward")
    summary.skipped["unreadable date"] = int(keep["at"].isna().sum())
    keep = keep[keep["at"].notna()]
    events = []
    for invoice, lines in keep.groupby("Invoice", sort=True):
        first = lines.iloc[0]
        customer = str(first["Customer ID"]).removesuffix(".0")
        products = [
            {"product_id": str(r.StockCode), "name": str(r.Description), "price": float(r.Price),
             "quantity": int(r.Quantity)}
            for r in lines.itertuples(index=False)
        ]  # fmt: skip
        revenue = round(float((lines.Price * lines.Quantity).sum()), 2)
        events.append({
            "messageId": message_id("online_retail", invoice), "type": "track",
            "event": "Order Completed", "userId": f"or:{customer}",
            "timestamp": _iso(first["at"]),
            "properties": {"order_id": f"or-{invoice}", "revenue": revenue, "currency": "GBP",
                           "products": products},
            "context": {"location": {"country": str(first.get("Country", ""))}},
        })  # fmt: skip
    summary.skipped = Counter({k: v for k, v in summary.skipped.items() if v})
    write_days(events, out, "online_retail", summary)
    return summary


def checksum_tree(folder: Path) -> str:
    """A digest of every file an import wrote (tests use it to show re-imports are identical)."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.jsonl.gz")):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()
