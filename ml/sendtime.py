"""Best send time and channel per customer, with a confidence.

Each customer's engagement by local hour (taps, opens and clicks count fully, session starts
a little) is shrunk towards their segment's profile, which is itself shrunk towards the global
profile (empirical Bayes: the prior strengths are the ones that best predict a later slice of
the training data). Few events -> close to the segment; many -> their own habit. Channels:
each channel's engagement rate under a Beta prior centred on the global rate, among the
channels the customer consented to.

The baseline, ``GlobalHour``, sends everyone at the hour with most engagements overall: the
model is served only when it beats it (``ml.jobs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ml.data import Snapshot

HOURS = 24
PRIOR_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
SESSION_WEIGHTS = (0.3, 1.0, 2.0)
CHANNEL_PRIOR = 10.0


def local_hours(times: pd.Series, zones: pd.Series) -> pd.Series:
    """Hour of day of each UTC timestamp in the matching IANA zone (UTC when unknown)."""
    out = pd.Series(0, index=times.index, dtype="int64")
    zones = zones.fillna("UTC")
    for zone, idx in zones.groupby(zones).groups.items():
        try:
            out.loc[idx] = times.loc[idx].dt.tz_convert(str(zone)).dt.hour.to_numpy()
        except Exception:  # unknown zone name: fall back to UTC rather than drop the events
            out.loc[idx] = times.loc[idx].dt.hour.to_numpy()
    return out


def smooth(counts: np.ndarray) -> np.ndarray:
    """Circular smoothing over neighbouring hours (rows = customers)."""
    return 0.5 * counts + 0.25 * np.roll(counts, 1, axis=-1) + 0.25 * np.roll(counts, -1, axis=-1)


def hits(pred: np.ndarray, actual: np.ndarray, tolerance: int = 1) -> np.ndarray:
    d = np.abs(pred - actual) % HOURS
    return np.minimum(d, HOURS - d) <= tolerance


def engagement_events(snap: Snapshot, session_weight: float = 1.0) -> pd.DataFrame:
    """(customer_id, hour, weight, engaged): engagements (weight 1), session starts and
    orders (``session_weight``) in local hours."""
    tz = snap.customers.set_index("customer_id").time_zone
    m = snap.messages[snap.messages.engaged]
    s = snap.sessions
    o = snap.orders
    ev = pd.concat(
        [
            pd.DataFrame(
                {"customer_id": m.customer_id, "at": m.event_at, "weight": 1.0, "engaged": True}
            ),
            pd.DataFrame(
                {
                    "customer_id": s.customer_id,
                    "at": s.started_at,
                    "weight": session_weight,
                    "engaged": False,
                }
            ),
            pd.DataFrame(
                {
                    "customer_id": o.customer_id,
                    "at": o.ordered_at,
                    "weight": session_weight,
                    "engaged": False,
                }
            ),
        ],
        ignore_index=True,
    )
    ev["hour"] = local_hours(ev["at"], ev.customer_id.map(tz))
    return ev


def reweighted(ev: pd.DataFrame, session_weight: float) -> pd.DataFrame:
    """The same events with session starts and orders counted ``session_weight``."""
    return ev.assign(weight=np.where(ev.engaged, 1.0, session_weight))


def hour_counts(ev: pd.DataFrame, customers: pd.Index) -> np.ndarray:
    table = ev.pivot_table(index="customer_id", columns="hour", values="weight", aggfunc="sum")
    table = table.reindex(index=customers, columns=range(HOURS)).fillna(0.0)
    return table.to_numpy()


@dataclass
class SendTimeModel:
    prior_user: float = 4.0  # pseudo-events of the segment profile added to each customer
    session_weight: float = 1.0  # a session start counts this much of a tap or an open
    prior_segment: float = 50.0
    segment_profiles: dict[str, np.ndarray] = field(default_factory=dict)
    global_profile: np.ndarray = field(default_factory=lambda: np.full(HOURS, 1 / HOURS))
    global_best_hour: int = 12  # the baseline: the hour with most engagements overall
    channel_rates: dict[str, float] = field(default_factory=dict)

    task = "send_time"
    key_metric = "hit_rate"
    kind = "model"

    # ---------- fitting
    def _profiles(self, ev: pd.DataFrame, segments: pd.Series) -> None:
        g = np.bincount(ev.hour, weights=ev.weight, minlength=HOURS) + 1.0
        self.global_profile = smooth(g / g.sum())
        self.segment_profiles = {}
        seg = ev.customer_id.map(segments).fillna("unknown")
        for name, part in ev.groupby(seg):
            c = smooth(np.bincount(part.hour, weights=part.weight, minlength=HOURS))
            p = c + self.prior_segment * self.global_profile
            self.segment_profiles[str(name)] = p / p.sum()

    def fit(self, snap: Snapshot, segments: pd.Series | None = None) -> SendTimeModel:
        segments = self._segments(snap, segments)
        # empirical Bayes: choose the prior strength and the weight of session starts that
        # best predict the engagements of the last quarter of the training period from the
        # first three quarters (hit rate first, likelihood to break ties)
        scores: dict[tuple[float, float], tuple[float, float]] = {}
        base = engagement_events(snap)  # local hours computed once, reweighted per candidate
        for w in SESSION_WEIGHTS:
            ev = reweighted(base, w)
            times = ev["at"]
            split = times.min() + 0.75 * (times.max() - times.min())
            early, late = ev[times < split], ev[(times >= split) & ev.engaged]
            if len(late) < 20 or not len(early):
                break
            self._profiles(early, segments)
            for a in PRIOR_GRID:
                scores[(w, a)] = self._heldout_fit(early, late, segments, a)
        if scores:
            self.session_weight, self.prior_user = max(scores, key=lambda k: scores[k])
        ev = reweighted(base, self.session_weight)
        engaged = ev[ev.engaged]
        self.global_best_hour = int(np.bincount(engaged.hour, minlength=HOURS).argmax())
        self._profiles(ev, segments)
        self._channels(snap)
        return self

    def _heldout_fit(
        self, early: pd.DataFrame, late: pd.DataFrame, segments: pd.Series, prior: float
    ) -> tuple[float, float]:
        """(hit rate, log-likelihood) of the late engagements under the early posterior."""
        ids = pd.Index(late.customer_id.unique())
        post = self._posterior(hour_counts(early, ids), ids, segments, prior)
        rows = ids.get_indexer(late.customer_id)
        hour = late.hour.to_numpy()
        hit = hits(post.argmax(axis=1)[rows], hour).mean()
        return float(hit), float(np.log(post[rows, hour] + 1e-12).mean())

    def _posterior(
        self, counts: np.ndarray, ids: pd.Index, segments: pd.Series, prior: float | None = None
    ) -> np.ndarray:
        prior = self.prior_user if prior is None else prior
        seg = ids.map(lambda c: segments.get(c, "unknown"))
        base = np.vstack([self.segment_profiles.get(str(s), self.global_profile) for s in seg])
        post = smooth(counts) + prior * base
        return post / post.sum(axis=1, keepdims=True)

    def _channels(self, snap: Snapshot) -> None:
        m = snap.messages
        sent = m.engagement.isin(["received", "delivered"])
        rates = {}
        for ch in ("push", "email"):
            n = int((sent & (m.channel == ch)).sum())
            k = int((m.engaged & (m.channel == ch)).sum())
            rates[ch] = (k + 1) / (n + 2)
        self.channel_rates = rates

    @staticmethod
    def _segments(snap: Snapshot, segments: pd.Series | None) -> pd.Series:
        if segments is not None:
            return segments
        return snap.customers.set_index("customer_id").lifecycle_segment

    # ---------- scoring
    def score(self, snap: Snapshot, segments: pd.Series | None = None) -> pd.DataFrame:
        segments = self._segments(snap, segments)
        ids = pd.Index(snap.customers.customer_id)
        ev = engagement_events(snap, self.session_weight)
        counts = hour_counts(ev, ids)
        post = self._posterior(counts, ids, segments)
        best = post.argmax(axis=1)
        window = np.stack([np.roll(post, k, axis=1) for k in (-1, 0, 1)]).sum(axis=0)
        confidence = window[np.arange(len(ids)), best]
        out = pd.DataFrame(
            {
                "customer_id": ids,
                "best_hour": best,
                "confidence": confidence.round(4),
                "events": counts.sum(axis=1).round(2),
                "basis": np.where(counts.sum(axis=1) >= 1, "customer", "segment"),
            }
        )
        return out.merge(self._best_channels(snap), on="customer_id", how="left")

    def _best_channels(self, snap: Snapshot) -> pd.DataFrame:
        m = snap.messages
        sent = (
            m[m.engagement.isin(["received", "delivered"])]
            .groupby(["customer_id", "channel"])
            .size()
        )
        engaged = m[m.engaged].groupby(["customer_id", "channel"]).size()
        c = snap.customers.set_index("customer_id")
        cols = {}
        for ch in ("push", "email"):
            n = (
                sent.xs(ch, level="channel")
                if ch in sent.index.get_level_values(1)
                else pd.Series(dtype=float)
            )
            k = (
                engaged.xs(ch, level="channel")
                if ch in engaged.index.get_level_values(1)
                else pd.Series(dtype=float)
            )
            n, k = n.reindex(c.index).fillna(0), k.reindex(c.index).fillna(0)
            rate = self.channel_rates.get(ch, 0.1)
            post = (k + CHANNEL_PRIOR * rate) / (n + CHANNEL_PRIOR)
            consent = c[f"{ch}_consent"].fillna(False).astype(bool)
            cols[ch] = post.where(consent, -1.0)
        table = pd.DataFrame(cols)
        best = table.idxmax(axis=1).where(table.max(axis=1) >= 0)
        return pd.DataFrame(
            {"customer_id": table.index, "best_channel": best.to_numpy(),
             "channel_engagement_rate": table.max(axis=1).clip(lower=0).round(4).to_numpy()}
        )  # fmt: skip

    # ---------- evaluation
    def evaluate(
        self, snap: Snapshot, cutoff: pd.Timestamp, segments: pd.Series | None = None
    ) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
        """Share of held-out engagements (after ``cutoff``) within ±1 hour of the predicted
        hour, against the single best global hour from the training data."""
        train = snap.before(cutoff)
        pred = self.score(train, segments).set_index("customer_id").best_hour
        later = snap.between(cutoff, snap.end + pd.Timedelta(days=1))
        ev = engagement_events(later)
        ev = ev[ev.engaged & ev.customer_id.isin(pred.index)]
        actual = ev.hour.to_numpy()
        ours = hits(pred.loc[ev.customer_id].to_numpy(), actual)
        base = hits(np.full(len(actual), self.global_best_hour), actual)
        metrics = {
            "hit_rate": float(ours.mean()) if len(ours) else 0.0,
            "hit_rate_global_hour": float(base.mean()) if len(base) else 0.0,
            "heldout_engagements": float(len(actual)),
            "prior_user": self.prior_user,
            "session_weight": self.session_weight,
        }
        metrics["lift_over_global"] = metrics["hit_rate"] / max(
            metrics["hit_rate_global_hour"], 1e-9
        )
        by_hour = pd.DataFrame({"hour": range(HOURS), "global_profile": self.global_profile})
        return metrics, {"global_profile": by_hour}


@dataclass
class GlobalHour(SendTimeModel):
    """The baseline: everyone's best hour is the global best hour (channels as the model's)."""

    kind = "baseline: global hour"

    def score(self, snap: Snapshot, segments: pd.Series | None = None) -> pd.DataFrame:
        hour = self.global_best_hour
        window = float(self.global_profile[[(hour + k) % HOURS for k in (-1, 0, 1)]].sum())
        out = super().score(snap, segments)
        return out.assign(best_hour=hour, confidence=round(window, 4), basis="global")
