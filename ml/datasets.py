"""Public datasets as Snapshots, so the same models and metrics run on real behaviour.

MovieLens 100K (GroupLens; via ../shared/data/fetch.sh): every rating is read as an
interaction (a view; a rating of 4 or 5 also as a cart add, a stronger signal), the first
genre plays the role of the product category. Not a shop: used for the recommender only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ml.data import QUERIES, Snapshot


def data_dir() -> Path:
    """Where ../shared/data/fetch.sh puts the public datasets: CRM_EVAL_DATA, else its default."""
    return Path(os.environ.get("CRM_EVAL_DATA", Path.home() / ".cache" / "shop-crm-data"))


COLUMNS = {
    "customers": ["customer_id", "is_known", "time_zone", "locale", "push_consent",
                  "email_consent", "lifecycle_segment", "first_seen_at"],
    "products": ["product_id", "category", "price"],
    "sessions": ["customer_id", "session_id", "started_at", "events", "product_views",
                 "converted", "platform"],
    "orders": ["customer_id", "order_id", "ordered_at", "revenue"],
    "items": ["customer_id", "order_id", "product_id", "category", "price", "quantity",
              "ordered_at"],
    "product_events": ["customer_id", "product_id", "event_name", "category", "price",
                       "event_at"],
    "messages": ["customer_id", "channel", "engagement", "engaged", "event_at"],
}  # fmt: skip
assert set(COLUMNS) == set(QUERIES)


def empty(name: str) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS[name]})
    for c in frame.columns:
        if c.endswith("_at"):
            frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame


def movielens_snapshot(folder: Path) -> Snapshot:
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    inter.columns = ["user", "item", "rating", "ts"]
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", encoding="latin-1")
    items.columns = ["item", "title", "year", "genres"]
    genre = items.set_index("item").genres.fillna("unknown").str.split().str[0]
    at = pd.to_datetime(inter.ts, unit="s", utc=True)
    base = pd.DataFrame({
        "customer_id": "ml" + inter.user.astype(str), "product_id": "m" + inter.item.astype(str),
        "category": inter.item.map(genre).fillna("unknown").to_numpy(), "price": 0.0,
        "event_at": at,
    })  # fmt: skip
    views = base.assign(event_name="Product Viewed")
    liked = base[inter.rating.to_numpy() >= 4].assign(event_name="Product Added")
    events = pd.concat([views, liked], ignore_index=True)[COLUMNS["product_events"]]
    products = pd.DataFrame({
        "product_id": "m" + items.item.astype(str),
        "category": items.item.map(genre).fillna("unknown"), "price": 0.0,
    })  # fmt: skip
    ids = events.customer_id.unique()
    customers = pd.DataFrame({"customer_id": ids}).reindex(columns=COLUMNS["customers"])
    return Snapshot(
        customers=customers,
        products=products,
        sessions=empty("sessions"),
        orders=empty("orders"),
        items=empty("items"),
        product_events=events,
        messages=empty("messages"),
    )
