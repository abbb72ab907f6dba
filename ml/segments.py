"""AI segments: behavioural clusters with names a marketer can read.

Customers are described by scaled RFM, price level, browsing depth and category tastes;
k-means runs for several k and the silhouette picks k. Each cluster is named from its centroid
("Frequent bargain hunters · fashion, home") and keeps its id across retrains: new centroids
are matched to the previous model's with the Hungarian algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler

from ml.data import NotEnoughHistory, Snapshot, isin

DAY = pd.Timedelta(days=1)
BEHAVIOUR = [
    "sessions_per_week",
    "views_per_session",
    "conversion",
    "log_order_value",
    "price_index",
    "orders_per_week",
]
CATEGORY_WEIGHT = 0.6  # how much tastes count next to behaviour in the distance
MIN_SESSIONS = 2


def _profiled_views(snap: Snapshot) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(customers with at least MIN_SESSIONS sessions and their weeks, their product views)."""
    s = snap.sessions
    end = snap.end
    g = s.groupby("customer_id")
    weeks = ((end - g.started_at.min()) / DAY / 7).clip(lower=1)
    n = g.size()
    out = pd.DataFrame({"sessions": n, "weeks": weeks})
    out = out[out.sessions >= MIN_SESSIONS]
    pe = snap.product_events
    views = pe.loc[  # one copy of the three columns used, not two of all six
        isin(pe.customer_id, out.index) & pe.event_name.isin(["Product Viewed", "Product Clicked"]),
        ["customer_id", "category", "price"],
    ]
    return out, views


def view_prices(snap: Snapshot) -> pd.DataFrame:
    """How many views of the profiled customers were at each (category, price): counts add
    up over shards of customers, and give the categories' median prices."""
    views = _profiled_views(snap)[1]
    return views.groupby(["category", "price"]).size().rename("views").reset_index()


def median_prices(counts: pd.DataFrame) -> pd.Series:
    """category -> the median price of its views, from ``view_prices`` (summed over shards):
    the middle value, or the mean of the two middle ones, as ``Series.median``."""
    out = {}
    summed = counts.groupby(["category", "price"]).views.sum()
    for category, group in summed.groupby(level="category"):
        prices = group.index.get_level_values("price").to_numpy(float)
        cum = group.to_numpy().cumsum()
        total = int(cum[-1])
        lo = prices[np.searchsorted(cum, (total - 1) // 2, side="right")]
        hi = prices[np.searchsorted(cum, total // 2, side="right")]
        out[category] = (lo + hi) / 2
    return pd.Series(out, name="price", dtype=float)


def customer_profile(snap: Snapshot, medians: pd.Series | None = None) -> pd.DataFrame:
    """One row per customer with at least MIN_SESSIONS sessions; prices are relative to
    ``medians`` (category -> median price of views: the whole shop's when ``snap`` is a shard
    of it), computed from ``snap`` when not given."""
    out, views = _profiled_views(snap)
    out["sessions_per_week"] = np.log1p(out.sessions / out.weeks)
    out["views_per_session"] = np.log1p(views.groupby("customer_id").size() / out.sessions).fillna(
        0
    )
    o = snap.orders.groupby("customer_id")
    orders = o.size().reindex(out.index).fillna(0)
    out["conversion"] = orders / out.sessions
    out["orders_per_week"] = np.log1p(orders / out.weeks)
    out["log_order_value"] = np.log1p(o.revenue.mean().reindex(out.index).fillna(0))
    median = views.groupby("category").price.median() if medians is None else medians
    rel = np.log(views.price / views.category.map(median)).replace([np.inf, -np.inf], np.nan)
    out["price_index"] = rel.groupby(views.customer_id).mean().reindex(out.index).fillna(0)
    # crosstab counted each cell with a Python ``len`` (3.2 s of four 28,000-customer shards)
    counts = views.groupby(["customer_id", "category"]).size().unstack(fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0).reindex(out.index).fillna(0)
    shares.columns = [f"cat:{c}" for c in shares.columns]
    return pd.concat([out[BEHAVIOUR], shares], axis=1).astype("float64")


def describe(centroid: pd.Series, overall: pd.Series, spread: pd.Series) -> tuple[str, str]:
    """A name and a sentence for a cluster, from how its centroid differs from everyone."""
    z = (centroid - overall) / spread.replace(0, 1)
    freq = (
        "Frequent"
        if z.sessions_per_week > 0.5
        else "Occasional"
        if z.sessions_per_week < -0.5
        else ""
    )
    price = "premium" if z.price_index > 0.5 else "bargain" if z.price_index < -0.5 else ""
    if z.conversion > 0.5 or z.orders_per_week > 0.5:
        noun = "buyers"
    elif z.views_per_session > 0.5 and z.conversion < 0:
        noun = "window shoppers"
    elif price == "bargain":
        noun, price = "hunters", "bargain"
    else:
        noun = "shoppers"
    cats = [c for c in centroid.index if c.startswith("cat:")]
    lift = (centroid[cats] / overall[cats].replace(0, np.nan)).dropna().sort_values(ascending=False)
    top = [c[4:] for c in lift.index[:2] if lift[c] > 1.2]
    name = " ".join(w for w in (freq, price, noun) if w).capitalize()
    if top:
        name += " · " + ", ".join(top)
    words = []
    for col, label in (
        ("sessions_per_week", "visits"),
        ("views_per_session", "products viewed per visit"),
        ("conversion", "conversion"),
        ("log_order_value", "order value"),
        ("price_index", "price level"),
    ):
        if abs(z[col]) > 0.5:
            words.append(f"{'more' if z[col] > 0 else 'fewer'} {label} than average" if col in (
                "sessions_per_week", "views_per_session") else
                f"{'higher' if z[col] > 0 else 'lower'} {label} than average")  # fmt: skip
    sentence = "; ".join(words) or "close to the average customer"
    if top:
        sentence += f"; most interested in {' and '.join(top)}"
    return name, sentence[0].upper() + sentence[1:] + "."


# what tells two segments apart, by the feature in which they differ most: (higher, lower)
CONTRASTS = {
    "sessions_per_week": ("more visits", "fewer visits"),
    "views_per_session": ("more views per visit", "fewer views per visit"),
    "conversion": ("higher conversion", "lower conversion"),
    "log_order_value": ("bigger orders", "smaller orders"),
    "price_index": ("pricier items", "cheaper items"),
    "orders_per_week": ("more orders", "fewer orders"),
}


def unique_names(names: dict[int, str], centroids: pd.DataFrame,
                 spread: pd.Series) -> dict[int, str]:  # fmt: skip
    """Segments that got the same name are told apart by what differs most between them: each
    gets its largest contrast against the others of that name (in behaviour, or a category it
    views more), the next one if that is taken too, and its id only when nothing is left."""
    out = dict(names)
    by_name: dict[str, list[int]] = {}
    for sid, name in names.items():
        by_name.setdefault(name, []).append(sid)
    for name, ids in by_name.items():
        if len(ids) < 2:
            continue
        group = centroids.loc[ids]
        taken: set[str] = set()
        for sid in ids:
            z = (group.loc[sid] - group.drop(index=sid).mean()) / spread.replace(0, 1)
            options = [(abs(z[c]), CONTRASTS[c][0 if z[c] > 0 else 1]) for c in CONTRASTS
                       if c in z.index]  # fmt: skip
            options += [(z[c], f"more {c[4:]}") for c in z.index if c.startswith("cat:")]
            label = next((lab for _, lab in sorted(options, key=lambda o: -o[0])
                          if lab not in taken), f"segment {sid}")  # fmt: skip
            taken.add(label)
            out[sid] = f"{name} · {label}"
    return out


@dataclass
class SegmentModel:
    k_range: tuple[int, int] = (3, 8)
    seed: int = 0
    scaler: StandardScaler | None = None
    kmeans: KMeans | None = None
    columns: list[str] = field(default_factory=list)
    segment_ids: list[int] = field(default_factory=list)  # stable id of each k-means cluster
    names: dict[int, str] = field(default_factory=dict)
    descriptions: dict[int, str] = field(default_factory=dict)
    centroids: pd.DataFrame | None = None  # in profile units, index = stable segment id
    silhouettes: dict[int, float] = field(default_factory=dict)

    task = "segments"
    key_metric = "silhouette"
    kind = "model"  # segments have no baseline

    def _matrix(self, profile: pd.DataFrame) -> np.ndarray:
        assert self.scaler is not None
        x = self.scaler.transform(profile.reindex(columns=self.columns).fillna(0))
        cat = [i for i, c in enumerate(self.columns) if c.startswith("cat:")]
        x[:, cat] *= CATEGORY_WEIGHT
        return x

    def fit(self, snap: Snapshot, previous: SegmentModel | None = None) -> SegmentModel:
        profile = customer_profile(snap)
        if len(profile) < 50:
            raise NotEnoughHistory(
                f"only {len(profile)} customers with {MIN_SESSIONS}+ sessions: too few to cluster"
            )
        self.columns = list(profile.columns)
        self.scaler = StandardScaler().fit(profile)
        x = self._matrix(profile)
        rng = np.random.default_rng(self.seed)
        sample = x[rng.choice(len(x), size=min(len(x), 5000), replace=False)]
        fits = {}
        for k in range(self.k_range[0], self.k_range[1] + 1):
            km = KMeans(n_clusters=k, n_init=5, random_state=self.seed).fit(x)
            fits[k] = km
            self.silhouettes[k] = float(silhouette_score(sample, km.predict(sample)))
        best = max(self.silhouettes, key=lambda k: self.silhouettes[k])
        self.kmeans = fits[best]
        labels = self.kmeans.labels_
        centroids = profile.groupby(labels).mean()
        self.segment_ids = self._stable_ids(centroids, previous)
        centroids.index = [self.segment_ids[i] for i in centroids.index]
        self.centroids = centroids
        overall, spread = profile.mean(), profile.std()
        for sid, row in centroids.iterrows():
            self.names[int(sid)], self.descriptions[int(sid)] = describe(row, overall, spread)
        self.names = unique_names(self.names, centroids, spread)
        return self

    def _stable_ids(self, centroids: pd.DataFrame, previous: SegmentModel | None) -> list[int]:
        """Cluster i keeps the id of the previous segment whose centroid is nearest (one to
        one); clusters with no counterpart get fresh ids."""
        k = len(centroids)
        if previous is None or previous.centroids is None:
            return list(range(1, k + 1))
        old = previous.centroids.reindex(columns=centroids.columns).fillna(0)
        a = self._matrix(centroids)
        b = self._matrix(old)
        cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
        rows, cols = linear_sum_assignment(cost)
        ids = [0] * k
        for r, c in zip(rows, cols, strict=True):
            ids[r] = int(old.index[c])
        fresh = max(int(i) for i in old.index) + 1
        for i in range(k):
            if ids[i] == 0:
                ids[i], fresh = fresh, fresh + 1
        return ids

    def assign(self, snap: Snapshot, medians: pd.Series | None = None) -> pd.DataFrame:
        assert self.kmeans is not None, "fit first"
        profile = customer_profile(snap, medians)
        if not len(profile):
            return pd.DataFrame(columns=["customer_id", "segment_id", "segment_name"])
        x = self._matrix(profile)
        cluster = self.kmeans.predict(x)
        dist = self.kmeans.transform(x)
        sid = [self.segment_ids[c] for c in cluster]
        return pd.DataFrame(
            {
                "customer_id": profile.index,
                "segment_id": sid,
                "segment_name": [self.names[s] for s in sid],
                "distance": dist[np.arange(len(x)), cluster].round(4),
            }
        )

    score = assign

    def catalog(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "segment_id": list(self.names),
                "segment_name": list(self.names.values()),
                "description": [self.descriptions[i] for i in self.names],
            }
        )

    def evaluate(self, snap: Snapshot) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
        """Silhouette of this model's clusters on ``snap`` (comparable between a challenger
        and the champion on the same data)."""
        assert self.kmeans is not None
        profile = customer_profile(snap)
        x = self._matrix(profile)
        rng = np.random.default_rng(self.seed)
        pick = rng.choice(len(x), size=min(len(x), 5000), replace=False)
        labels = self.kmeans.predict(x[pick])
        sil = float(silhouette_score(x[pick], labels)) if len(set(labels)) > 1 else -1.0
        k = float(self.kmeans.n_clusters)
        return {"silhouette": sil, "k": k, "customers": float(len(x))}, {"segments": self.catalog()}
