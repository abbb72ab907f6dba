"""Simulate a shop's event stream in the event contract, with the ground truth behind it.

People have a latent archetype, category tastes, an activity level and a lifecycle (first
visit, sign-up, active, lapsing, churned); they browse anonymously on one to three devices
(web, iOS, Android), sign up or log in (identify, sometimes alias), view, cart, abandon and
order, and re-buy consumables. The shop sends pushes and e-mails at random hours; whether a
person taps or opens depends on how close the send is to their preferred local hour and weekday
and whether it came on their preferred channel. Everything the models should later recover is
written to ``ground_truth/``.

Output (DIR): ``events/dt=YYYY-MM-DD/events.jsonl.gz`` (events received that UTC day, some
late and some duplicated, as real collectors deliver them), ``catalog/products.jsonl``,
``ground_truth/users.jsonl``, ``ground_truth/identities.csv`` and ``manifest.json``.
Deterministic for a given configuration and seed.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from crm.simulate.catalog import CATEGORIES, CATEGORY_INDEX, Product, build_catalog

DAY = 86_400
CHANNELS = ("push", "email")


@dataclass(frozen=True, slots=True)
class Archetype:
    name: str
    share: float
    sessions_per_day: float
    views_per_session: float
    add_to_cart: float
    checkout: float
    price_exponent: float  # <0 prefers cheap items, >0 expensive ones
    lifetime_days: float
    taste_concentration: float
    register: float  # chance a session of an unregistered visitor signs up
    favourite_categories: tuple[str, ...]
    items_per_order: float


ARCHETYPES: tuple[Archetype, ...] = (
    Archetype("bargain_hunter", 0.25, 0.35, 5.0, 0.14, 0.45, -1.5, 240, 0.6, 0.25,
              ("fashion", "home", "toys", "shoes"), 2.5),
    Archetype("loyal_regular", 0.20, 0.55, 3.0, 0.30, 0.70, 0.0, 400, 0.8, 0.50,
              ("grocery", "beauty", "pet"), 2.0),
    Archetype("big_spender", 0.10, 0.25, 3.5, 0.22, 0.60, 1.5, 300, 0.7, 0.45,
              ("electronics", "computers", "sports"), 1.3),
    Archetype("window_shopper", 0.30, 0.30, 6.0, 0.05, 0.15, 0.0, 150, 1.5, 0.08,
              ("fashion", "books", "garden", "electronics"), 1.2),
    Archetype("one_timer", 0.15, 0.40, 3.0, 0.25, 0.55, 0.0, 25, 1.0, 0.35,
              ("books", "toys", "home", "sports"), 1.5),
)  # fmt: skip

ZONES: tuple[tuple[str, str, float], ...] = (
    ("America/New_York", "en-US", 0.22),
    ("America/Los_Angeles", "en-US", 0.12),
    ("America/Sao_Paulo", "pt-BR", 0.08),
    ("Europe/London", "en-GB", 0.12),
    ("Europe/Berlin", "de-DE", 0.16),
    ("Europe/Paris", "fr-FR", 0.10),
    ("Asia/Kolkata", "en-IN", 0.08),
    ("Asia/Tokyo", "ja-JP", 0.07),
    ("Australia/Sydney", "en-AU", 0.05),
)
HOUR_PEAKS = (8, 12, 19, 21)
FIRST_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jon")
LAST_NAMES = ("Silva", "Meyer", "Khan", "Smith", "Dubois", "Sato", "Rossi", "Novak")


@dataclass(frozen=True)
class SimConfig:
    users: int = 2_000
    days: int = 60
    seed: int = 42
    start: date = date(2026, 1, 1)
    products: int | None = None  # default: users / 4, within [120, 5000]
    gzip: bool = True
    duplicate_rate: float = 0.002
    broken_rate: float = 0.0005  # extra garbage lines from buggy clients (must be rejected)
    late_rate: float = 0.01
    never_register_share: float = 0.25
    push_sends_per_week: float = 2.0
    email_sends_per_week: float = 1.5

    @property
    def n_products(self) -> int:
        return self.products or max(120, min(5_000, self.users // 4))


@dataclass
class SimSummary:
    out: Path
    events: int = 0
    duplicates: int = 0
    late: int = 0
    broken: int = 0
    files: int = 0
    users: int = 0
    orders: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Device:
    device_id: str
    anonymous_id: str
    type: str  # web, ios, android
    token: str | None
    context: dict[str, Any]
    logged_in: bool = False


@dataclass(slots=True)
class Person:
    index: int
    user_id: str
    arch: Archetype
    tastes: list[float]
    tastes_cum: list[float]
    zone: str
    locale: str
    preferred_hour: int
    preferred_weekday: int
    preferred_channel: str
    push_consent: bool
    email_consent: bool
    first_day: int
    lifetime: float
    never_registers: bool
    email: str
    first_name: str
    last_name: str
    devices: list[Device]
    registered_day: int | None = None
    repurchase_due: dict[str, float] = field(default_factory=dict)
    consent_sent: bool = False

    @property
    def churn_day(self) -> float:
        return self.first_day + self.lifetime


class _Clock:
    """UTC offsets of each zone per day, cached (DST moves them)."""

    def __init__(self, start: date) -> None:
        self.start = start
        self._cache: dict[tuple[str, int], tuple[int, timezone]] = {}

    def offset(self, zone: str, day: int) -> tuple[int, timezone]:
        key = (zone, day)
        hit = self._cache.get(key)
        if hit is None:
            d = self.start + timedelta(days=day)
            off = datetime(d.year, d.month, d.day, 12, tzinfo=ZoneInfo(zone)).utcoffset()
            assert off is not None
            secs = int(off.total_seconds())
            hit = (secs, timezone(timedelta(seconds=secs)))
            self._cache[key] = hit
        return hit


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _cumulative(weights: list[float]) -> list[float]:
    total = sum(weights)
    return list(itertools.accumulate(w / total for w in weights))


def _pick(rng: random.Random, cum: list[float]) -> int:
    return min(bisect.bisect_left(cum, rng.random()), len(cum) - 1)


def hour_affinity(send_hour: float, preferred_hour: int) -> float:
    """How receptive a person is at a local hour: a Gaussian bump around the preferred hour."""
    d = abs(send_hour - preferred_hour) % 24
    d = min(d, 24 - d)
    return math.exp(-(d * d) / (2 * 1.5 * 1.5))


def open_probability(p: Person, channel: str, local_hour: float, weekday: int) -> float:
    """The chance that a message received at this local hour and weekday is opened: highest
    at the preferred hour, higher on the preferred weekday, lower off the preferred channel."""
    base = 0.45 * (0.12 + 0.88 * hour_affinity(local_hour, p.preferred_hour))
    if weekday == p.preferred_weekday:
        base *= 1.3
    if channel != p.preferred_channel:
        base *= 0.35
    return min(base, 0.95)


class Simulator:
    def __init__(self, cfg: SimConfig, out: Path) -> None:
        self.cfg = cfg
        self.out = out
        self.rng = random.Random(cfg.seed)
        self.clock = _Clock(cfg.start)
        self.epoch0 = datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=UTC)
        self.products = build_catalog(cfg.n_products, self.rng)
        self.by_category: list[list[Product]] = [[] for _ in CATEGORIES]
        for p in self.products:
            self.by_category[p.category].append(p)
        self._product_cum = {
            (a.name, ci): _cumulative(
                [
                    p.popularity * (p.price / CATEGORIES[ci].median_price) ** a.price_exponent
                    for p in self.by_category[ci]
                ]
            )
            for a in ARCHETYPES
            for ci in range(len(CATEGORIES))
        }
        self._arch_cum = _cumulative([a.share for a in ARCHETYPES])
        self._zone_cum = _cumulative([z[2] for z in ZONES])
        self.buffers: dict[int, list[tuple[float, bytes]]] = {}
        self.summary = SimSummary(out=out)
        self._order_seq = 0
        self.shop_messages = True  # the shop's own sends of the history (off once shop-crm sends)
        self.people = [self._person(i) for i in range(cfg.users)]

    # ---------- population
    def _person(self, i: int) -> Person:
        rng, cfg = self.rng, self.cfg
        arch = ARCHETYPES[_pick(rng, self._arch_cum)]
        bias = [3.0 if c.name in arch.favourite_categories else 0.4 for c in CATEGORIES]
        raw = [rng.gammavariate(arch.taste_concentration * b, 1.0) + 1e-9 for b in bias]
        tastes = [r / sum(raw) for r in raw]
        zone, locale, _ = ZONES[_pick(rng, self._zone_cum)]
        peak = HOUR_PEAKS[rng.randrange(len(HOUR_PEAKS))]
        preferred_hour = round(peak + rng.gauss(0, 1.0)) % 24
        existing = rng.random() < 0.4
        first_day = 0 if existing else rng.randrange(cfg.days)
        lifetime = rng.expovariate(1.0 / arch.lifetime_days)
        if existing:  # already part-way through their life when the log starts
            lifetime *= rng.random() + 0.5
        push_consent = rng.random() < 0.7
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        person = Person(
            index=i,
            user_id=f"u{i + 1:07d}",
            arch=arch,
            tastes=tastes,
            tastes_cum=_cumulative(tastes),
            zone=zone,
            locale=locale,
            preferred_hour=preferred_hour,
            preferred_weekday=rng.randrange(7),
            preferred_channel="push" if push_consent and rng.random() < 0.65 else "email",
            push_consent=push_consent,
            email_consent=rng.random() < 0.6,
            first_day=first_day,
            lifetime=lifetime,
            never_registers=rng.random() < cfg.never_register_share,
            email=f"{first.lower()}.{last.lower()}{i + 1}@example.com",
            first_name=first,
            last_name=last,
            devices=[],
        )
        if existing and not person.never_registers:
            person.registered_day = -1
        n_devices = 1 if rng.random() < 0.5 else (2 if rng.random() < 0.7 else 3)
        for _ in range(n_devices):
            person.devices.append(self._device(person))
        return person

    def _device(self, p: Person) -> Device:
        rng = self.rng
        r = rng.random()
        dtype = "web" if r < 0.45 else ("ios" if r < 0.75 else "android")
        token = None
        if p.push_consent and (dtype != "web" or rng.random() < 0.4):
            token = f"{rng.getrandbits(64):016x}:APA91b{rng.getrandbits(256):064x}"
        device_id = _uuid(rng)
        device: dict[str, Any] = {"id": device_id, "type": dtype}
        if token:
            device["token"] = token
        ctx: dict[str, Any] = {
            "device": device,
            "timezone": p.zone,
            "locale": p.locale,
            "ip": f"203.0.113.{rng.randrange(1, 255)}",
        }
        if dtype == "web":
            ctx["library"] = {"name": "analytics.js", "version": "5.2.0"}
            ctx["userAgent"] = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"
        else:
            ctx["app"] = {"name": "Shop", "version": "4.12.0", "build": "4120"}
            ctx["os"] = {"name": "iOS" if dtype == "ios" else "Android",
                         "version": "18.1" if dtype == "ios" else "15"}  # fmt: skip
            ctx["library"] = {"name": f"analytics-{dtype}", "version": "4.1.0"}
        return Device(device_id, _uuid(rng), dtype, token, ctx)

    # ---------- emitting
    def emit(
        self,
        p: Person,
        dev: Device | None,
        t: float,
        typ: str,
        event: str | None = None,
        properties: dict[str, Any] | None = None,
        traits: dict[str, Any] | None = None,
        name: str | None = None,
        page: dict[str, Any] | None = None,
        server_side: bool = False,
    ) -> None:
        rng = self.rng
        ev: dict[str, Any] = {"messageId": _uuid(rng), "type": typ}
        if event is not None:
            ev["event"] = event
        if name is not None:
            ev["name"] = name
        if dev is not None:
            ev["anonymousId"] = dev.anonymous_id
            if dev.logged_in:
                ev["userId"] = p.user_id
        else:
            ev["userId"] = p.user_id
        day = int(t // DAY)
        if dev is None or dev.type == "web":
            ts = (self.epoch0 + timedelta(seconds=t)).isoformat(timespec="milliseconds")
            ts = ts.replace("+00:00", "Z")
        else:  # mobile SDKs stamp local time with its offset
            _, tz = self.clock.offset(p.zone, day)
            ts = (
                (self.epoch0 + timedelta(seconds=t))
                .astimezone(tz)
                .isoformat(timespec="milliseconds")
            )
        ev["timestamp"] = ts
        if properties is not None:
            ev["properties"] = properties
        if traits is not None:
            ev["traits"] = traits
        if server_side:
            ev["context"] = {"library": {"name": "shop-backend", "version": "1.0"}}
        elif dev is not None:
            ev["context"] = dev.context if page is None else {**dev.context, "page": page}
        line = orjson.dumps(ev)
        received = day
        if dev is not None and dev.type != "web" and rng.random() < self.cfg.late_rate:
            received += 1  # the app was offline; its batch arrives the next day
            self.summary.late += 1
        self.buffers.setdefault(received, []).append((t, line))
        self.summary.events += 1
        key = event or typ
        self.summary.by_type[key] = self.summary.by_type.get(key, 0) + 1
        if rng.random() < self.cfg.broken_rate:
            self.buffers[received].append((t, self._broken(ev)))
            self.summary.broken += 1
        if rng.random() < self.cfg.duplicate_rate:  # a client retry: same messageId again
            again = received + (1 if rng.random() < 0.3 else 0)
            self.buffers.setdefault(again, []).append((t + rng.uniform(0, 5), line))
            self.summary.duplicates += 1

    def _broken(self, ev: dict[str, Any]) -> bytes:
        """A garbage line of the kinds real collectors receive; never a valid event."""
        rng = self.rng
        bad = {**ev, "messageId": _uuid(rng)}
        kind = rng.randrange(6)
        if kind == 0:  # cut off mid-line
            line = orjson.dumps(bad)
            return line[: rng.randrange(1, len(line) - 1)]
        if kind == 1:
            del bad["messageId"]
        elif kind == 2:
            bad["timestamp"] = bad["timestamp"][:19]  # offset lost
        elif kind == 3:
            bad["type"] = "purchase"
        elif kind == 4:  # NaN from a JavaScript client
            return orjson.dumps(bad)[:-1] + b', "score": NaN}'
        else:  # Latin-1 bytes in a UTF-8 stream
            return orjson.dumps(bad)[:-1] + b', "city": "M\xfcnchen"}'
        return orjson.dumps(bad)

    # ---------- behaviour
    def _product_props(self, prod: Product) -> dict[str, Any]:
        return {
            "product_id": prod.product_id,
            "sku": prod.sku,
            "name": prod.name,
            "category": CATEGORIES[prod.category].name,
            "brand": prod.brand,
            "price": prod.price,
            "currency": "USD",
        }

    def _pick_product(self, p: Person) -> Product:
        ci = _pick(self.rng, p.tastes_cum)
        idx = _pick(self.rng, self._product_cum[(p.arch.name, ci)])
        return self.by_category[ci][idx]

    def _register(self, p: Person, dev: Device, t: float, day: int) -> float:
        p.registered_day = day
        dev.logged_in = True
        traits = {
            "email": p.email,
            "first_name": p.first_name,
            "last_name": p.last_name,
            "created_at": (self.epoch0 + timedelta(seconds=t)).isoformat().replace("+00:00", "Z"),
        }
        self.emit(p, dev, t, "identify", traits=traits)
        if self.rng.random() < 0.2:  # older SDKs merge the anonymous id with an alias call
            dev_alias = {"previousId": dev.anonymous_id}
            self._emit_alias(p, dev, t + 0.5, dev_alias)
        t += 2
        self.emit(p, dev, t, "track", "Signed Up", {"method": "email"})
        self._consents(p, dev, t + 1)
        return t + 3

    def _emit_alias(self, p: Person, dev: Device, t: float, extra: dict[str, Any]) -> None:
        ev = {
            "messageId": _uuid(self.rng),
            "type": "alias",
            "userId": p.user_id,
            "previousId": extra["previousId"],
            "timestamp": (self.epoch0 + timedelta(seconds=t))
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "context": dev.context,
        }
        self.buffers.setdefault(int(t // DAY), []).append((t, orjson.dumps(ev)))
        self.summary.events += 1
        self.summary.by_type["alias"] = self.summary.by_type.get("alias", 0) + 1

    def _consents(self, p: Person, dev: Device, t: float) -> None:
        if p.consent_sent:
            return
        p.consent_sent = True
        self.emit(
            p,
            dev,
            t,
            "track",
            "Consent Updated",
            {"channel": "email", "granted": p.email_consent, "source": "signup_form"},
        )
        if dev.type != "web" or dev.token:
            consent = {"channel": "push", "granted": p.push_consent, "source": "os_prompt"}
            self.emit(p, dev, t + 1, "track", "Consent Updated", consent)

    def _session(self, p: Person, dev: Device, t: float, day: int, source: str | None) -> None:
        rng, arch = self.rng, p.arch
        if dev.type == "web":
            self.emit(p, dev, t, "page", name="Home", page={"path": "/", "title": "Home"})
        else:
            self.emit(p, dev, t, "track", "Application Opened", {"from_background": False})
            self.emit(p, dev, t + 1, "screen", name="Home")
        t += rng.expovariate(1 / 20)
        if p.registered_day is None and not p.never_registers and rng.random() < arch.register:
            t = self._register(p, dev, t, day)
        elif p.registered_day is not None and not dev.logged_in and rng.random() < 0.6:
            dev.logged_in = True
            self.emit(p, dev, t, "identify", traits={"email": p.email})
            self.emit(p, dev, t + 1, "track", "Signed In", {"method": "password"})
            self._consents(p, dev, t + 2)
            t += 3
        cart: list[Product] = []
        views = 1 + _poisson(rng, arch.views_per_session - 1)
        for _ in range(views):
            t += rng.expovariate(1 / 45)
            if rng.random() < 0.12:
                query = CATEGORIES[_pick(rng, p.tastes_cum)].name
                self.emit(p, dev, t, "track", "Products Searched", {"query": query})
                t += rng.expovariate(1 / 15)
            prod = self._pick_product(p)
            props = self._product_props(prod)
            if source:
                props["source"] = source
            page = (
                {"path": f"/p/{prod.product_id}", "title": prod.name} if dev.type == "web" else None
            )
            self.emit(p, dev, t, "track", "Product Viewed", props, page=page)
            if rng.random() < arch.add_to_cart:
                t += rng.expovariate(1 / 30)
                self.emit(p, dev, t, "track", "Product Added", {**props, "quantity": 1})
                cart.append(prod)
        for pid, due in list(p.repurchase_due.items()):
            if day >= due and rng.random() < 0.6:
                prod = self.products[int(pid[1:]) - 1]
                t += rng.expovariate(1 / 30)
                props = self._product_props(prod)
                self.emit(p, dev, t, "track", "Product Viewed", props)
                self.emit(p, dev, t + 5, "track", "Product Added", {**props, "quantity": 1})
                cart.append(prod)
        if not cart:
            return
        if len(cart) > 1 and rng.random() < 0.15:
            gone = cart.pop(rng.randrange(len(cart)))
            self.emit(p, dev, t + 3, "track", "Product Removed", self._product_props(gone))
        t += rng.expovariate(1 / 30)
        self.emit(p, dev, t, "track", "Cart Viewed", {"products": [
            {"product_id": c.product_id, "price": c.price} for c in cart]})  # fmt: skip
        checkout = arch.checkout * (1.6 if len(p.repurchase_due) else 1.0)
        if rng.random() >= checkout:
            return  # abandoned cart
        if p.registered_day is None:
            if p.never_registers:
                return
            t = self._register(p, dev, t + 5, day)
        elif not dev.logged_in:
            dev.logged_in = True
            self.emit(p, dev, t + 2, "identify", traits={"email": p.email})
            self.emit(p, dev, t + 3, "track", "Signed In", {"method": "password"})
            t += 5
        self._order(p, dev, t, day, cart)

    def _order(self, p: Person, dev: Device, t: float, day: int, cart: list[Product]) -> None:
        rng = self.rng
        lines: dict[str, dict[str, Any]] = {}
        extra = _poisson(rng, max(p.arch.items_per_order - len(cart), 0))
        for prod in cart + [self._pick_product(p) for _ in range(extra)]:
            if prod.product_id in lines:
                lines[prod.product_id]["quantity"] += 1
            else:
                lines[prod.product_id] = {**self._product_props(prod), "quantity": 1}
        self._order_seq += 1
        order_id = f"o{self._order_seq:08d}"
        revenue = round(sum(x["price"] * x["quantity"] for x in lines.values()), 2)
        self.emit(p, dev, t, "track", "Checkout Started",
                  {"order_id": order_id, "value": revenue, "currency": "USD"})  # fmt: skip
        if rng.random() > 0.88:
            return  # abandoned checkout
        discount = (
            round(revenue * 0.1, 2) if p.arch.price_exponent < 0 and rng.random() < 0.5 else 0.0
        )
        shipping = 0.0 if revenue > 50 else 4.99
        tax = round((revenue - discount) * 0.08, 2)
        props: dict[str, Any] = {
            "order_id": order_id,
            "checkout_id": f"c{self._order_seq:08d}",
            "revenue": round(revenue - discount, 2),
            "total": round(revenue - discount + shipping + tax, 2),
            "subtotal": revenue,
            "shipping": shipping,
            "tax": tax,
            "discount": discount,
            "currency": "USD",
            "products": list(lines.values()),
        }
        if discount:
            props["coupon"] = "SAVE10"
        self.emit(p, dev, t + rng.expovariate(1 / 60), "track", "Order Completed", props)
        self.summary.orders += 1
        for pid in lines:
            cat = CATEGORIES[CATEGORY_INDEX[lines[pid]["category"]]]
            if cat.consumable:
                p.repurchase_due[pid] = day + cat.repurchase_days * rng.uniform(0.8, 1.2)
            else:
                p.repurchase_due.pop(pid, None)

    def _activity(self, p: Person, day: int) -> float:
        """Expected sessions today: archetype rate, weekday preference, lapsing decay."""
        rate = p.arch.sessions_per_day
        weekday = (self.cfg.start + timedelta(days=day)).weekday()
        rate *= 1.8 if weekday == p.preferred_weekday else 0.87
        phase = (day - p.first_day) / max(p.lifetime, 1.0)
        if phase > 0.7:
            rate *= max(0.1, 1.0 - (phase - 0.7) / 0.3 * 0.9)
        return rate

    def _local_hour(self) -> float:
        return self.rng.uniform(8, 22)

    def _engages(self, p: Person, channel: str, local_hour: float, weekday: int) -> bool:
        return self.rng.random() < open_probability(p, channel, local_hour, weekday)

    def _messages(self, p: Person, day: int, day_t: float) -> None:
        rng = self.rng
        if p.registered_day is None:
            return
        weekday = (self.cfg.start + timedelta(days=day)).weekday()
        offset, _ = self.clock.offset(p.zone, day)
        app = [d for d in p.devices if d.token and d.logged_in]
        if app and rng.random() < self.cfg.push_sends_per_week / 7:
            dev = app[rng.randrange(len(app))]
            hour = self._local_hour()
            t = day_t + hour * 3600 - offset
            campaign = f"cmp_{rng.randrange(1, 13):02d}"
            props = {"campaign_id": campaign, "campaign_name": f"Campaign {campaign[4:]}"}
            self.emit(p, dev, t, "track", "Push Notification Received", props)
            if self._engages(p, "push", hour, weekday):
                t += rng.expovariate(1 / 240)
                self.emit(p, dev, t, "track", "Push Notification Tapped", props)
                self._session(p, dev, t + 2, day, source="push")
        if p.email_consent and rng.random() < self.cfg.email_sends_per_week / 7:
            hour = self._local_hour()
            t = day_t + hour * 3600 - offset
            props = {"email_id": _uuid(rng), "campaign_id": f"eml_{rng.randrange(1, 9):02d}"}
            self.emit(p, None, t, "track", "Email Delivered", props, server_side=True)
            if self._engages(p, "email", hour, weekday):
                t += rng.expovariate(1 / 600)
                self.emit(p, None, t, "track", "Email Opened", props, server_side=True)
                if rng.random() < 0.5:
                    self.emit(p, None, t + 20, "track", "Email Link Clicked", props,
                              server_side=True)  # fmt: skip
                    web = [d for d in p.devices if d.type == "web"] or p.devices
                    self._session(p, web[0], t + 25, day, source="email")

    def run_day(self, day: int) -> None:
        rng = self.rng
        day_t = day * DAY
        for p in self.people:
            if day < p.first_day or day >= p.churn_day:
                continue
            offset, _ = self.clock.offset(p.zone, day)
            for _ in range(_poisson(rng, self._activity(p, day))):
                dev = p.devices[0] if rng.random() < 0.6 else rng.choice(p.devices)
                if rng.random() < 0.65:
                    hour = (p.preferred_hour + rng.gauss(0, 1.5)) % 24
                else:
                    hour = rng.uniform(7, 24)
                t = day_t + hour * 3600 - offset + rng.uniform(0, 60)
                self._session(p, dev, t, day, source=None)
            if self.shop_messages:
                self._messages(p, day, day_t)

    # ---------- output
    def _write_day(self, day: int) -> None:
        lines = sorted(self.buffers.pop(day, []), key=lambda x: x[0])
        if not lines:
            return
        d = self.cfg.start + timedelta(days=day)
        folder = self.out / "events" / f"dt={d.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        data = b"".join(line + b"\n" for _, line in lines)
        if self.cfg.gzip:
            (folder / "events.jsonl.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
        else:
            (folder / "events.jsonl").write_bytes(data)
        self.summary.files += 1

    def run(self, progress: Callable[[int], None] | None = None) -> SimSummary:
        self.out.mkdir(parents=True, exist_ok=True)
        for day in range(self.cfg.days):
            self.run_day(day)
            # Events stamped before midnight can still sit in later buffers (late or retried),
            # so only days that can no longer grow are written.
            self._write_day(day - 1)
            if progress:
                progress(day)
        self._write_day(self.cfg.days - 1)
        self._write_day(self.cfg.days)  # late arrivals after the last day
        for leftover in sorted(self.buffers):
            self._write_day(leftover)
        self._write_ground_truth()
        self.summary.users = len(self.people)
        return self.summary

    def _date(self, day: float | None) -> str | None:
        if day is None or day >= self.cfg.days:
            return None
        return (self.cfg.start + timedelta(days=max(int(day), 0))).isoformat()

    def _write_ground_truth(self) -> None:
        (self.out / "catalog").mkdir(exist_ok=True)
        with (self.out / "catalog" / "products.jsonl").open("wb") as f:
            for prod in self.products:
                f.write(orjson.dumps(prod.as_record()) + b"\n")
        truth = self.out / "ground_truth"
        truth.mkdir(exist_ok=True)
        names = [c.name for c in CATEGORIES]
        with (truth / "users.jsonl").open("wb") as f:
            for p in self.people:
                registered = -1 if p.registered_day is None else p.registered_day
                rec = {
                    "person": p.index + 1,
                    "user_id": p.user_id if p.registered_day is not None else None,
                    "archetype": p.arch.name,
                    "tastes": dict(zip(names, (round(w, 4) for w in p.tastes), strict=True)),
                    "time_zone": p.zone,
                    "locale": p.locale,
                    "preferred_hour": p.preferred_hour,
                    "preferred_weekday": p.preferred_weekday,
                    "preferred_channel": p.preferred_channel,
                    "push_consent": p.push_consent,
                    "email_consent": p.email_consent,
                    "first_seen_date": self._date(p.first_day),
                    "registered_date": self._date(registered) if registered >= 0 else None,
                    "registered_before_start": p.registered_day == -1,
                    "churn_date": self._date(p.churn_day),
                    "devices": [{"device_id": d.device_id, "anonymous_id": d.anonymous_id,
                                 "type": d.type, "has_token": d.token is not None}
                                for d in p.devices],
                }  # fmt: skip
                f.write(orjson.dumps(rec) + b"\n")
        with (truth / "identities.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["anonymous_id", "person", "user_id"])
            for p in self.people:
                for d in p.devices:
                    w.writerow(
                        [
                            d.anonymous_id,
                            p.index + 1,
                            p.user_id if p.registered_day is not None else "",
                        ]
                    )
        config = asdict(self.cfg)
        manifest = {
            "config": {k: str(v) if isinstance(v, date) else v for k, v in config.items()},
            "events": self.summary.events,
            "duplicates": self.summary.duplicates,
            "late": self.summary.late,
            "broken": self.summary.broken,
            "orders": self.summary.orders,
            "files": self.summary.files,
            "by_type": dict(sorted(self.summary.by_type.items())),
        }  # fmt: skip
        (self.out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def simulate(
    cfg: SimConfig, out: Path, progress: Callable[[int], None] | None = None
) -> SimSummary:
    """Write a simulated shop (events, catalog, ground truth) into ``out``."""
    return Simulator(cfg, out).run(progress)
