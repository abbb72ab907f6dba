"""Line validation: every hostile case is rejected with a reason a person can act on."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from crm.contract import Event
from crm.ingest.validate import Limits, Rejected, _bounded, _fast, parse_line

NOW = datetime(2026, 3, 1, tzinfo=UTC)
LIMITS = Limits(
    max_line_bytes=100_000,
    max_depth=32,
    min_ts=datetime(2000, 1, 1, tzinfo=UTC),
    max_ts=NOW + timedelta(days=1),
)


def good(**over: object) -> dict[str, object]:
    ev: dict[str, object] = {
        "messageId": "m-1",
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": "a-1",
        "timestamp": "2026-02-01T10:00:00.123+02:00",
        "properties": {"product_id": "p1", "price": 9.5},
        "context": {
            "device": {"id": "d1", "type": "ios", "token": "tok"},
            "timezone": "Europe/Berlin",
        },
    }
    ev.update(over)
    return {k: v for k, v in ev.items() if v is not None}


def line(obj: object) -> bytes:
    return orjson.dumps(obj)


def reason(raw: bytes) -> str:
    with pytest.raises(Rejected) as exc:
        parse_line(raw, LIMITS)
    return exc.value.reason


def test_good_line_is_normalised_to_utc() -> None:
    row = parse_line(line(good()), LIMITS)
    assert row.event_at == datetime(2026, 2, 1, 8, 0, 0, 123000, tzinfo=UTC)
    assert row.event_date.isoformat() == "2026-02-01"
    assert (row.message_id, row.type, row.event, row.anonymous_id) == (
        "m-1", "track", "Product Viewed", "a-1",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"messageId": "m-1", "type": "tra', "invalid JSON"),
        (b"[1, 2, 3]", "not an object"),
        (b'"just a string"', "not an object"),
        (b"null", "not an object"),
        (b'{"messageId": "m", "type": "track", "event": "x", "userId": "u", '
         b'"timestamp": "2026-02-01T10:00:00Z", "properties": {"v": NaN}}', "invalid JSON"),
        (b'{"messageId": "m", "type": "track", "event": "x", "userId": "u", '
         b'"timestamp": "2026-02-01T10:00:00Z", "properties": {"v": Infinity}}', "invalid JSON"),
        (b'{"messageId": "m\xff\xfe", "type": "track"}', "invalid UTF-8 at byte"),
        (b'{"messageId": "m", "type": "track", "event": "x\\ud800", "userId": "u", '
         b'"timestamp": "2026-02-01T10:00:00Z"}', "surrogate"),
        (b'{"messageId": "m\x00", "type": "track"}', "invalid JSON"),
        (b"\xef\xbb\xbf" + line(good()), "invalid JSON"),  # a BOM inside the file, not at its start
    ],
)  # fmt: skip
def test_unparseable_lines(raw: bytes, expected: str) -> None:
    assert expected in reason(raw)


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"messageId": None}, "messageId"),
        ({"messageId": ""}, "messageId"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": "yesterday at noon"}, "timestamp"),
        ({"timestamp": "2026-02-01T10:00:00"}, "timezone"),  # no offset: ambiguous
        ({"timestamp": "2031-01-01T00:00:00Z"}, "in the future"),
        ({"timestamp": "1970-01-01T00:00:00Z"}, "before 2000"),
        ({"type": "purchase"}, "type"),
        ({"type": None}, "type"),
        ({"anonymousId": None}, "needs userId or anonymousId"),
        ({"event": None}, "track call needs an event name"),
        ({"properties": ["not", "an", "object"]}, "properties"),
        ({"context": {"device": {"type": "fridge"}}}, "context.device.type"),
        ({"type": "alias", "event": None}, "alias call needs previousId and userId"),
        ({"event": "Order Completed", "properties": {"order_id": "o1"}}, "products"),
        ({"event": "Order Completed", "properties": {"order_id": "o1", "products": [
            {"product_id": "p", "price": -3}]}}, "price"),
        ({"event": "Consent Updated", "properties": {"channel": "pigeon", "granted": True}},
         "channel"),
    ],
)  # fmt: skip
def test_contract_violations(over: dict[str, object], expected: str) -> None:
    got = reason(line(good(**over)))
    assert expected in got, got


@pytest.mark.parametrize("event", ["Product Viewed", "Order Completed"])
def test_numbers_beyond_double_range_are_valid_json_on_both_paths(event: str) -> None:
    raw = (
        b'{"messageId": "m", "type": "track", "event": "' + event.encode() + b'", "userId": "u",'
        b' "timestamp": "2026-02-01T10:00:00Z", "properties": {"v": 1e400, "order_id": "o",'
        b' "products": [{"product_id": "p", "price": 1}]}}'
    )
    assert parse_line(raw, LIMITS).message_id == "m"
    assert parse_line(raw, LIMITS, fast=False).message_id == "m"


def test_sql_looking_strings_are_plain_data() -> None:
    evil = "'; drop table raw.events; --"
    row = parse_line(line(good(anonymousId=evil, properties={"q": evil})), LIMITS)
    assert row.anonymous_id == evil


def test_nul_character_is_rejected_but_a_literal_backslash_u0000_is_not() -> None:
    assert "NUL" in reason(line(good(properties={"q": "a\x00b"})))
    assert "NUL" in reason(line(good(**{"traits": {"k\x00": 1}})))
    parse_line(line(good(properties={"q": "\\u0000 is how JSON spells NUL"})), LIMITS)


def test_size_and_depth_limits() -> None:
    huge = good(properties={"blob": "x" * 200_000})
    assert "over the limit" in reason(line(huge))
    deep: object = "bottom"
    for _ in range(40):
        deep = {"d": deep}
    assert "nested deeper than 32" in reason(line(good(properties=deep)))
    shallow: object = "bottom"
    for _ in range(20):
        shallow = {"d": shallow}
    parse_line(line(good(properties=shallow)), LIMITS)


def test_numeric_ids_are_coerced_to_strings() -> None:
    row = parse_line(line(good(userId=12345, anonymousId=None)), LIMITS)
    assert row.user_id == "12345"


def _mutations(rng: random.Random) -> list[dict[str, object]]:
    """Valid and invalid variants around the fast path's edges."""
    base = [
        good(),
        good(type="page", event=None, name="Home"),
        good(type="screen", event=None, name=None),
        good(type="identify", event=None, userId="u1", traits={"email": "a@example.com"}),
        good(timestamp="2026-02-01T10:00:00Z"),
        good(timestamp="2026-02-01T10:00:00.123456-05:30"),
    ]
    values: list[object] = [
        None, "", "x", 0, 1.5, True, [], {}, {"type": "web"}, {"type": "tv"}, "2026-02-01",
        "2026-02-01 10:00:00Z", "2026-02-01T10:00:00+0200", "2026-02-01T10:00:00.1234567Z",
        "a" * 300, {"id": 5}, {"token": 7}, {"device": "d"}, {"device": {"type": "android"}},
        {"timezone": 3}, {"page": "home"}, {"page": {"path": "/"}},
    ]  # fmt: skip
    keys = ["messageId", "type", "event", "name", "userId", "anonymousId", "timestamp",
            "properties", "traits", "context", "previousId", "sentAt"]  # fmt: skip
    out = []
    for _ in range(3000):
        ev = dict(rng.choice(base))
        for _ in range(rng.randint(1, 2)):
            key = rng.choice(keys)
            val = rng.choice(values)
            if key == "context" and isinstance(val, dict) and rng.random() < 0.5:
                val = {"device": val}
            ev[key] = val
        out.append(ev)
    return out


def test_fast_path_agrees_with_the_pydantic_contract() -> None:
    """Whatever the fast path accepts, the model accepts with the same values, and vice versa."""
    rng = random.Random(5)
    accepted = rejected = 0
    for ev in _mutations(rng):
        raw = line(ev)
        fast = _fast(raw, LIMITS)
        try:
            slow = parse_line(raw, LIMITS, fast=False)
        except Rejected:
            slow = None
        if fast is not None:
            fast = _bounded(fast, LIMITS) if slow is not None else fast
        assert fast is None or slow is not None, (
            f"fast path accepts what the contract refuses: {ev}"
        )
        if fast is not None and slow is not None:
            assert fast == slow, ev
            accepted += 1
        elif slow is None:
            rejected += 1
    assert accepted > 300 and rejected > 300  # both sides of the boundary were exercised


def test_model_matches_documented_example() -> None:
    ev = Event.model_validate(good())
    assert ev.context.device is not None and ev.context.device.type == "ios"
