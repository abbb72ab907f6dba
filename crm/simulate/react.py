"""The simulated shop answers what shop-crm sent: its days after the history, with planted effects.

``react`` replays a simulated shop to the end of its history (same configuration and seed, so
the same people in the same state) and continues it for some days. Everyone goes on browsing
and ordering on their own baseline, exactly as in the history but for the shop's own random
sends, which shop-crm's deliveries replace. Each delivery shop-crm recorded in
``crm.deliveries`` as sent reaches the customer's device (push, to a device holding a token)
or inbox (e-mail), and the customer reacts through the contract's events, with the
``delivery_id`` carried back:

- **Receipt and open** (``Push Notification Received`` / ``Tapped``, ``Email Delivered`` /
  ``Opened`` / ``Link Clicked``). The open probability is the history's: highest at the
  customer's preferred local hour, higher on their preferred weekday, lower off their preferred
  channel (``open_probability``). That is the planted effect of the send hour.
- **Recommendations.** A message that links to the customer's recommendations opens a screen
  with two rows: the customer's top three recommendations as shop-crm serves them
  (``ml.recommendations``) and three products drawn from the shop's bestsellers
  (``Product List Viewed`` with ``list_id`` ``recommendations`` / ``bestsellers``). Each shown
  product is clicked (``Product Clicked``, ``Product Viewed``) and then bought with
  probabilities that grow with how much the customer truly likes its category
  (``click_probability``, ``buy_probability``): the planted effect of recommending what the
  customer likes.
- **Conversion.** Per campaign and lifecycle segment a planted probability that the message
  makes the customer order within two days, an order whose size is the customer's own basket
  times a planted factor (``PlantedEffects``). The draw is made whether or not the customer
  opened, and also for members of the holdout group, who get nothing and do nothing more.

Every random draw of a reaction comes from a generator seeded by the delivery's own key, so the
baseline days are the same whatever shop-crm sent, and what each message caused is known
exactly: ``ground_truth/reactions.jsonl`` holds, per delivery, the open probability, whether it
was opened, the products shown with their planted click probabilities, and the orders the
message caused. ``crm.simulate.truth`` turns that into each campaign's true uplift.

Output (OUT): ``events/dt=YYYY-MM-DD/events.jsonl.gz`` (the continued days, as received),
``ground_truth/reactions.jsonl``, ``ground_truth/effects.json`` and ``manifest.json``.
Deterministic for a shop, a set of deliveries and a seed.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg

from crm.errors import CrmError
from crm.simulate.catalog import Product
from crm.simulate.engine import (
    DAY,
    Device,
    Person,
    SimConfig,
    Simulator,
    _poisson,
    open_probability,
)

SHOWN = 3  # products per row of the recommendations screen
CONVERSION_DELAY_HOURS = 8.0  # mean delay from receipt to the order a message causes
CONVERSION_MAX_HOURS = 40.0  # ... which always comes within this (attribution is 72 h)


@dataclass(frozen=True)
class Effect:
    """A campaign's planted effect: the probability that its message makes a member order
    (before the lifecycle segment's factor), and that order's size against the member's own
    basket."""

    conversion: float
    value: float = 1.0


@dataclass(frozen=True)
class PlantedEffects:
    campaigns: dict[str, Effect] = field(
        default_factory=lambda: {
            "welcome_new_users": Effect(0.06, 1.0),
            "active_recommendations": Effect(0.03, 1.0),
            "buyer_offers": Effect(0.08, 1.3),
            "winback_inactive": Effect(0.05, 1.0),
            "winback_first_order": Effect(0.08, 1.2),
            "cart_reminder": Effect(0.12, 1.0),
            "cart_reminder-offer": Effect(0.15, 0.9),
            "post_purchase": Effect(0.02, 1.0),
            "browse_abandonment": Effect(0.0, 1.0),  # planted: no effect at all
        }
    )
    default: Effect = Effect(0.04, 1.0)
    segments: dict[str, float] = field(
        default_factory=lambda: {
            "new": 1.5,
            "active": 1.0,
            "buyer": 1.0,
            "repeat_buyer": 0.6,
            "inactive": 0.7,
            "lost": 0.3,
        }
    )

    def of(self, campaign_id: str, segment: str | None) -> Effect:
        base = self.campaigns.get(campaign_id, self.default)
        factor = self.segments.get(segment or "", 1.0)
        return Effect(min(base.conversion * factor, 1.0), base.value)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {
            "open_probability": "0.45 * (0.12 + 0.88 * exp(-d^2 / (2 * 1.5^2))), d = hours from "
            "the preferred local hour; x1.3 on the preferred weekday; x0.35 off the preferred "
            "channel",
            "click_probability": "0.05 + 0.45 * r, r = the customer's taste for the product's "
            "category over their strongest taste",
            "buy_probability": "0.30 * r, once clicked",
            "conversion_delay": f"exponential, mean {CONVERSION_DELAY_HOURS} h, at most "
            f"{CONVERSION_MAX_HOURS} h after receipt",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlantedEffects:
        base = cls()
        return cls(
            campaigns={k: Effect(**v) for k, v in data.get("campaigns", {}).items()}
            or base.campaigns,
            default=Effect(**data["default"]) if "default" in data else base.default,
            segments=data.get("segments", base.segments),
        )


def liking(p: Person, product: Product) -> float:
    """How much the customer truly likes the product's category, 0..1 (1: their favourite)."""
    return p.tastes[product.category] / max(p.tastes)


def click_probability(p: Person, product: Product) -> float:
    return 0.05 + 0.45 * liking(p, product)


def buy_probability(p: Person, product: Product) -> float:
    return 0.30 * liking(p, product)


@dataclass(frozen=True)
class Delivery:
    """A row of ``crm.deliveries`` as the simulated shop sees it."""

    delivery_id: int
    campaign_id: str
    customer_id: str
    channel: str
    state: str
    segment: str | None
    slot: datetime
    sent_at: datetime | None
    link: str | None
    recommended: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.campaign_id}|{self.customer_id}|{self.channel}|{self.slot.isoformat()}"


DELIVERIES = """
    select d.delivery_id, d.campaign_id, d.customer_id, d.channel, d.state, d.segment, d.slot,
           d.sent_at, d.link,
           array(select r.product_id from ml.recommendations r
                 where r.customer_id = d.customer_id order by r.rank limit %(shown)s)
    from crm.deliveries d
    where d.state in ('sent', 'held_out', 'suppressed', 'failed') and d.slot < %(until)s
    order by d.delivery_id
"""
BESTSELLERS = """
    select product_id from marts.fct_order_items where ordered_at < %s
    group by product_id order by count(distinct order_id) desc, product_id limit %s
"""


def read_deliveries(url: str, since: datetime, until: datetime) -> tuple[list[Delivery], list[str]]:
    """(every decided delivery with a slot before ``until``, the shop's 30 bestsellers of
    its orders before ``since``)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(DELIVERIES, {"shown": SHOWN, "until": until}).fetchall()
        best = [r[0] for r in conn.execute(BESTSELLERS, (since, 30)).fetchall()]
    out = [Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], tuple(r[9] or ()))
           for r in rows]  # fmt: skip
    return out, best


def read_config(shop: Path) -> SimConfig:
    """The configuration a simulated shop was written with (its ``manifest.json``)."""
    manifest = shop / "manifest.json"
    if not manifest.exists():
        raise CrmError(f"{manifest} not found: is {shop} a simulated shop (crm simulate)?")
    cfg = orjson.loads(manifest.read_bytes())["config"]
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    values = {k: v for k, v in cfg.items() if k in fields}
    values["start"] = date.fromisoformat(values["start"])
    return SimConfig(**values)


@dataclass
class ReactSummary:
    out: Path
    days: int = 0
    events: int = 0
    deliveries: int = 0
    received: int = 0
    opened: int = 0
    caused_orders: int = 0
    by_campaign: dict[str, dict[str, int]] = field(default_factory=dict)


class Reactions:
    """A replayed shop continued past its history, reacting to shop-crm's deliveries."""

    def __init__(self, cfg: SimConfig, out: Path, effects: PlantedEffects, seed: int) -> None:
        self.sim = Simulator(cfg, out)
        self.cfg = cfg
        self.effects = effects
        self.seed = seed
        self.by_user = {p.user_id: p for p in self.sim.people}
        self.by_anonymous = {d.anonymous_id: p for p in self.sim.people for d in p.devices}
        self.products = {prod.product_id: prod for prod in self.sim.products}
        self.truth: list[dict[str, Any]] = []

    def replay(self, progress: Callable[[int], None] | None = None) -> None:
        """Re-run the history in memory (nothing written): the people reach its last day in
        the state the history left them in."""
        for day in range(self.cfg.days):
            self.sim.run_day(day)
            self.sim.buffers.pop(day - 1, None)
            if progress:
                progress(day)
        self.sim.buffers.clear()
        self.sim.summary = dataclasses.replace(self.sim.summary, events=0, by_type={})

    def person(self, customer_id: str) -> Person | None:
        if customer_id.startswith("anon:"):
            return self.by_anonymous.get(customer_id[5:])
        p = self.by_user.get(customer_id)
        return p if p is not None and p.registered_day is not None else None

    def seconds(self, at: datetime) -> float:
        return (at - self.sim.epoch0).total_seconds()

    def local(self, p: Person, t: float) -> tuple[float, int]:
        """(local hour, weekday) of the person at shop time ``t``."""
        offset, _ = self.sim.clock.offset(p.zone, int(t // DAY))
        at = self.sim.epoch0 + timedelta(seconds=t + offset)
        return at.hour + at.minute / 60, at.weekday()

    # ---------- one delivery
    def react(self, d: Delivery, bestsellers: list[str], start: datetime, end: datetime) -> None:
        """Record what the delivery caused; if it was received within [start, end), emit the
        customer's reaction."""
        rng = random.Random(f"{self.seed}|{d.key}")
        p = self.person(d.customer_id)
        effect = self.effects.of(d.campaign_id, d.segment)
        converts = rng.random() < effect.conversion  # drawn in both arms alike
        rec: dict[str, Any] = {
            "delivery_id": d.delivery_id,
            "campaign_id": d.campaign_id,
            "customer_id": d.customer_id,
            "person": None if p is None else p.index + 1,
            "state": d.state,
            "channel": d.channel,
            "segment": d.segment,
            "planted_conversion": round(effect.conversion, 6),
            "planted_value": effect.value,
            "would_convert": converts,
            "received": False,
            "orders": [],
            "shown": [],
        }
        self.truth.append(rec)
        if p is None or d.state != "sent" or d.sent_at is None or not start <= d.sent_at < end:
            return
        dev = self._device(p, d.channel)
        if d.channel == "push" and dev is None:
            return  # no device of theirs holds a token: nothing arrives
        self.sim.rng, saved = rng, self.sim.rng  # every draw below from this delivery's own
        try:
            self._received(d, p, dev, rec, converts, effect, bestsellers)
        finally:
            self.sim.rng = saved

    def _device(self, p: Person, channel: str) -> Device | None:
        if channel == "push":
            tokens = [x for x in p.devices if x.token]
            return next((x for x in tokens if x.logged_in), tokens[0] if tokens else None)
        return next((x for x in p.devices if x.type == "web"), p.devices[0])

    def _received(self, d: Delivery, p: Person, dev: Device | None, rec: dict[str, Any],
                  converts: bool, effect: Effect, bestsellers: list[str]) -> None:  # fmt: skip
        sim, rng = self.sim, self.sim.rng
        t = self.seconds(d.sent_at) + rng.uniform(1, 20)  # type: ignore[arg-type]
        hour, weekday = self.local(p, t)
        p_open = open_probability(p, d.channel, hour, weekday)
        opened = rng.random() < p_open
        props = {"campaign_id": d.campaign_id, "delivery_id": str(d.delivery_id)}
        rec |= {"received": True, "local_hour": round(hour, 2), "preferred_hour": p.preferred_hour,
                "p_open": round(p_open, 6), "opened": opened}  # fmt: skip
        if d.channel == "push":
            sim.emit(p, dev, t, "track", "Push Notification Received", props)
        else:
            sim.emit(p, None, t, "track", "Email Delivered", props, server_side=True)
        bought: list[Product] = []
        if opened:
            t += rng.expovariate(1 / (240 if d.channel == "push" else 600))
            if d.channel == "push":
                sim.emit(p, dev, t, "track", "Push Notification Tapped", props)
                sim.emit(p, dev, t + 1, "track", "Application Opened", {"from_background": True})
            else:
                sim.emit(p, None, t, "track", "Email Opened", props, server_side=True)
                sim.emit(p, None, t + 20, "track", "Email Link Clicked", props, server_side=True)
            if d.link and "recommendations" in d.link:
                bought = self._screen(d, p, dev, t + 5, rec, bestsellers)
        if bought:
            self._order(d, p, dev, t + rng.uniform(60, 600), bought, rec, "recommendation")
        if converts:
            delay = min(rng.expovariate(1 / CONVERSION_DELAY_HOURS), CONVERSION_MAX_HOURS)
            at = self.seconds(d.sent_at) + delay * 3600 + rng.uniform(30, 300)  # type: ignore[arg-type]
            n = max(1, 1 + _poisson(rng, p.arch.items_per_order * effect.value - 1))
            basket = [sim._pick_product(p) for _ in range(n)]
            if dev is not None and dev.type != "web":
                sim.emit(p, dev, at - 30, "track", "Application Opened", {"from_background": False})
            self._order(d, p, dev, at, basket, rec, "conversion")

    def _screen(self, d: Delivery, p: Person, dev: Device | None, t: float, rec: dict[str, Any],
                bestsellers: list[str]) -> list[Product]:  # fmt: skip
        """The recommendations screen the message opens: what is clicked, what goes to the
        basket."""
        sim, rng = self.sim, self.sim.rng
        mine = [self.products[x] for x in d.recommended if x in self.products][:SHOWN]
        pool = [x for x in bestsellers if x not in d.recommended and x in self.products]
        popular = [self.products[x] for x in rng.sample(pool, min(SHOWN, len(pool)))]
        device = dev
        bought = []
        for list_id, shown in (("recommendations", mine), ("bestsellers", popular)):
            if not shown:
                continue
            listed = [{"product_id": x.product_id, "position": i + 1} for i, x in enumerate(shown)]
            row = {"list_id": list_id, "products": listed}
            sim.emit(p, device, t, "track", "Product List Viewed", row, server_side=device is None)
            for i, prod in enumerate(shown):
                p_click, p_buy = click_probability(p, prod), buy_probability(p, prod)
                clicked = rng.random() < p_click
                buys = clicked and rng.random() < p_buy
                rec["shown"].append({"list": list_id, "product_id": prod.product_id,
                                     "p_click": round(p_click, 6), "clicked": clicked,
                                     "p_buy": round(p_buy, 6), "bought": buys})  # fmt: skip
                if not clicked:
                    continue
                t += rng.expovariate(1 / 20)
                props = sim._product_props(prod)
                sim.emit(p, device, t, "track", "Product Clicked",
                         {**props, "list_id": list_id, "position": i + 1},
                         server_side=device is None)  # fmt: skip
                sim.emit(p, device, t + 2, "track", "Product Viewed",
                         {**props, "source": d.channel}, server_side=device is None)  # fmt: skip
                if buys:
                    sim.emit(p, device, t + 10, "track", "Product Added", {**props, "quantity": 1},
                             server_side=device is None)  # fmt: skip
                    bought.append(prod)
        return bought

    def _order(self, d: Delivery, p: Person, dev: Device | None, t: float,
               products: list[Product], rec: dict[str, Any], why: str) -> None:  # fmt: skip
        sim = self.sim
        if dev is not None and not dev.logged_in and p.registered_day is not None:
            dev.logged_in = True  # as in the history: a registered customer signs in to order
            sim.emit(p, dev, t - 20, "identify", traits={"email": p.email})
            sim.emit(p, dev, t - 19, "track", "Signed In", {"method": "password"})
        lines: dict[str, dict[str, Any]] = {}
        for prod in products:
            if prod.product_id in lines:
                lines[prod.product_id]["quantity"] += 1
            else:
                lines[prod.product_id] = {**sim._product_props(prod), "quantity": 1}
        order_id = f"r{sim.rng.getrandbits(52):013x}"
        revenue = round(sum(x["price"] * x["quantity"] for x in lines.values()), 2)
        shipping = 0.0 if revenue > 50 else 4.99
        tax = round(revenue * 0.08, 2)
        server = dev is None
        sim.emit(p, dev, t, "track", "Checkout Started",
                 {"order_id": order_id, "value": revenue, "currency": "USD"},
                 server_side=server)  # fmt: skip
        props = {
            "order_id": order_id,
            "revenue": revenue,
            "total": round(revenue + shipping + tax, 2),
            "subtotal": revenue,
            "shipping": shipping,
            "tax": tax,
            "discount": 0.0,
            "currency": "USD",
            "products": list(lines.values()),
        }
        at = t + 30
        sim.emit(p, dev, at, "track", "Order Completed", props, server_side=server)
        when = (sim.epoch0 + timedelta(seconds=at)).isoformat(timespec="milliseconds")
        rec["orders"].append({"order_id": order_id, "revenue": revenue, "at": when, "why": why})

    # ---------- the days
    def run(self, deliveries: list[Delivery], bestsellers: list[str], days: int) -> ReactSummary:
        out = self.sim.out
        first = self.cfg.days
        # the shop's own random sends stop: shop-crm's deliveries replace them; the days go
        # through the collector, so no garbage lines (the file loader's tests have those)
        self.sim.shop_messages = False
        self.sim.cfg = dataclasses.replace(self.cfg, broken_rate=0.0)
        for day in range(first, first + days):
            self.sim.run_day(day)
        end = self.sim.epoch0 + timedelta(days=first + days)
        start = self.sim.epoch0 + timedelta(days=first)
        for d in deliveries:
            self.react(d, bestsellers, start, end)
        summary = ReactSummary(out=out, days=days, deliveries=len(self.truth))
        for day in sorted(self.sim.buffers):
            self.sim._write_day(day)
        summary.events = self.sim.summary.events
        for rec in self.truth:
            c = summary.by_campaign.setdefault(
                rec["campaign_id"], {"deliveries": 0, "received": 0, "opened": 0, "orders": 0}
            )
            c["deliveries"] += 1
            c["received"] += rec["received"]
            c["opened"] += bool(rec.get("opened"))
            c["orders"] += len(rec["orders"])
        summary.received = sum(c["received"] for c in summary.by_campaign.values())
        summary.opened = sum(c["opened"] for c in summary.by_campaign.values())
        summary.caused_orders = sum(c["orders"] for c in summary.by_campaign.values())
        truth = out / "ground_truth"
        truth.mkdir(parents=True, exist_ok=True)
        with (truth / "reactions.jsonl").open("wb") as f:
            for rec in self.truth:
                f.write(orjson.dumps(rec) + b"\n")
        (truth / "effects.json").write_bytes(
            orjson.dumps(self.effects.as_dict(), option=orjson.OPT_INDENT_2)
        )
        manifest = {
            "continues": dataclasses.asdict(self.cfg) | {"start": self.cfg.start.isoformat()},
            "first_day": (self.cfg.start + timedelta(days=first)).isoformat(),
            "days": days,
            "seed": self.seed,
            "events": summary.events,
            "deliveries": summary.deliveries,
            "by_campaign": summary.by_campaign,
        }
        (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        return summary


def react(
    shop: Path,
    url: str,
    out: Path,
    days: int = 5,
    seed: int | None = None,
    effects: PlantedEffects | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReactSummary:
    """Continue the simulated shop in ``shop`` for ``days`` days after its history, reacting
    to the deliveries recorded in the database at ``url``; write the days and the truth into
    ``out``. ``seed`` (default: the shop's) seeds the reactions."""
    cfg = read_config(shop)
    if out.resolve() == shop.resolve():
        raise CrmError("write the reactions into a folder of their own, not the shop's")
    r = Reactions(cfg, out, effects or PlantedEffects(), cfg.seed if seed is None else seed)
    since = datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=UTC) + timedelta(
        days=cfg.days
    )
    deliveries, bestsellers = read_deliveries(url, since, since + timedelta(days=days))
    r.replay(progress)
    return r.run(deliveries, bestsellers, days)
