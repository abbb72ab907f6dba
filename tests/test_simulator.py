"""The simulator: deterministic, valid against the contract, and the planted structure shows."""

from __future__ import annotations

import gzip
import hashlib
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from crm.contract import Event
from crm.simulate import SimConfig, simulate
from crm.simulate.engine import hour_affinity


def events(out: Path) -> list[dict]:
    """The valid events; the simulator's deliberately broken lines are counted and left out."""
    found, broken = [], 0
    for f in sorted((out / "events").rglob("*.jsonl.gz")):
        for line in gzip.decompress(f.read_bytes()).splitlines():
            try:
                found.append(
                    Event.model_validate(orjson.loads(line)).model_dump(
                        by_alias=True, exclude_none=True, mode="json"
                    )
                    | orjson.loads(line)
                )
            except ValueError:
                broken += 1
    assert broken == orjson.loads((out / "manifest.json").read_bytes())["broken"]
    return found


def truth(out: Path) -> dict[str, dict]:
    rows = [
        orjson.loads(x) for x in (out / "ground_truth" / "users.jsonl").read_bytes().splitlines()
    ]
    return {r["user_id"]: r for r in rows if r["user_id"]}


def digest(out: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        h.update(f.relative_to(out).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    cfg = SimConfig(users=120, days=5, seed=3)
    simulate(cfg, tmp_path / "a")
    simulate(cfg, tmp_path / "b")
    simulate(SimConfig(users=120, days=5, seed=4), tmp_path / "c")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_every_event_meets_the_contract(small_shop: Path) -> None:
    evs = events(small_shop)  # validates every line; only the planted broken ones fail
    assert len(evs) > 5_000
    kinds = Counter(e.get("event", e["type"]) for e in evs)
    for needed in ("Product Viewed", "Product Added", "Cart Viewed", "Checkout Started",
                   "Order Completed", "Products Searched", "identify", "alias", "page", "screen",
                   "Push Notification Received", "Push Notification Tapped", "Consent Updated",
                   "Email Opened"):  # fmt: skip
        assert kinds[needed] > 0, needed


def test_layout_and_ground_truth(small_shop: Path) -> None:
    days = sorted(p.name for p in (small_shop / "events").iterdir())
    assert days[0] <= "dt=2026-01-01" and "dt=2026-01-21" in days
    users = [
        orjson.loads(x)
        for x in (small_shop / "ground_truth" / "users.jsonl").read_bytes().splitlines()
    ]
    assert len(users) == 300
    assert {u["archetype"] for u in users} == {
        "bargain_hunter", "loyal_regular", "big_spender", "window_shopper", "one_timer",
    }  # fmt: skip
    for u in users:
        assert 0 <= u["preferred_hour"] < 24 and u["preferred_channel"] in ("push", "email")
        assert abs(sum(u["tastes"].values()) - 1) < 1e-3
    products = (small_shop / "catalog" / "products.jsonl").read_bytes().splitlines()
    assert len(products) >= 120


def test_identity_anonymous_browsing_is_later_tied_to_a_user(small_shop: Path) -> None:
    evs = events(small_shop)
    anon_only = {e["anonymousId"] for e in evs if "anonymousId" in e and "userId" not in e}
    linked = {
        e["anonymousId"]: e["userId"] for e in evs if e["type"] == "identify" and "anonymousId" in e
    }
    assert len(anon_only & linked.keys()) > 50  # browsed anonymously, then identified
    devices_per_user = defaultdict(set)
    for a, u in linked.items():
        devices_per_user[u].add(a)
    assert any(len(v) > 1 for v in devices_per_user.values())  # cross-device
    assert any(e["type"] == "alias" and e["previousId"] in anon_only for e in evs)


def test_push_engagement_concentrates_at_each_users_preferred_local_hour(small_shop: Path) -> None:
    gt = truth(small_shop)
    sent: Counter[bool] = Counter()
    tapped: Counter[bool] = Counter()
    for e in events(small_shop):
        if e.get("event") not in ("Push Notification Received", "Push Notification Tapped"):
            continue
        u = gt[e["userId"]]
        local = datetime.fromisoformat(e["timestamp"]).astimezone(ZoneInfo(u["time_zone"]))
        near = hour_affinity(local.hour + local.minute / 60, u["preferred_hour"]) > 0.5
        (sent if e["event"] == "Push Notification Received" else tapped)[near] += 1
    near_rate = tapped[True] / sent[True]
    far_rate = tapped[False] / sent[False]
    assert near_rate > 2.5 * far_rate, (near_rate, far_rate)


def test_no_push_token_without_push_consent(small_shop: Path) -> None:
    gt = truth(small_shop)
    for e in events(small_shop):
        token = e.get("context", {}).get("device", {}).get("token")
        if token and "userId" in e:
            assert gt[e["userId"]]["push_consent"], e["userId"]
    assert any(not u["push_consent"] for u in gt.values())


def test_archetypes_behave_differently(small_shop: Path) -> None:
    gt = truth(small_shop)
    orders: Counter[str] = Counter()
    spend: defaultdict[str, list[float]] = defaultdict(list)
    for e in events(small_shop):
        if e.get("event") == "Order Completed":
            arch = gt[e["userId"]]["archetype"]
            orders[arch] += 1
            for p in e["properties"]["products"]:
                spend[arch].append(p["price"])
    people = Counter(u["archetype"] for u in gt.values())
    rate = {a: orders[a] / people[a] for a in people}
    assert rate["loyal_regular"] > 2 * rate["window_shopper"]
    mean = {a: sum(v) / len(v) for a, v in spend.items() if v}
    assert mean["big_spender"] > 2 * mean["bargain_hunter"]


def test_churned_people_go_quiet(small_shop: Path) -> None:
    gt = truth(small_shop)
    last: dict[str, str] = {}
    for e in events(small_shop):
        if "userId" in e:
            day = (
                datetime.fromisoformat(e["timestamp"])
                .astimezone(ZoneInfo("UTC"))
                .date()
                .isoformat()
            )
            last[e["userId"]] = max(last.get(e["userId"], ""), day)
    churned = [u for u, t in gt.items() if t["churn_date"] and u in last]
    assert churned
    for u in churned:  # nothing after the churn day (one day of slack for late uploads)
        assert (
            datetime.fromisoformat(last[u]) - datetime.fromisoformat(gt[u]["churn_date"])
        ).days <= 1


@pytest.mark.parametrize("seed", [1, 2])
def test_retries_are_exact_duplicates(tmp_path: Path, seed: int) -> None:
    summary = simulate(SimConfig(users=150, days=4, seed=seed), tmp_path)
    ids = Counter(e["messageId"] for e in events(tmp_path))
    repeated = sum(n - 1 for n in ids.values())
    assert repeated == summary.duplicates
