"""docs/event-contract.md states every rule the loader applies: one bad line per documented
reason goes through the real loader's line check and must be rejected with that reason, and
every length limit of the contract's model must be in the table."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from crm.contract import json_schema
from crm.ingest.validate import Limits, Rejected, parse_line
from crm.settings import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "event-contract.md"
NOW = datetime(2026, 3, 1, tzinfo=UTC)
LIMITS = Limits(max_line_bytes=1 << 20, max_depth=32, min_ts=datetime(2000, 1, 1, tzinfo=UTC),
                max_ts=NOW + timedelta(days=1))  # fmt: skip


def good(**change: object) -> dict[str, object]:
    call: dict[str, object] = {
        "messageId": "m-1", "type": "track", "event": "Product Viewed", "anonymousId": "a-1",
        "timestamp": "2026-02-01T10:00:00+02:00", "properties": {"product_id": "p1"},
    }  # fmt: skip
    call.update(change)
    return {k: v for k, v in call.items() if v is not None}


def order(**change: object) -> dict[str, object]:
    props: dict[str, object] = {"order_id": "o-1", "products": [{"product_id": "p1", "price": 5}]}
    props.update(change)
    return good(event="Order Completed", properties={k: v for k, v in props.items() if v != "-"})


def consent(**change: object) -> dict[str, object]:
    props: dict[str, object] = {"channel": "push", "granted": True}
    props.update(change)
    return good(event="Consent Updated", properties={k: v for k, v in props.items() if v != "-"})


# One line breaking one rule, keyed by the reason the documentation gives for it.
EXAMPLES: dict[str, bytes | dict[str, object]] = {
    "invalid JSON": b'{"messageId": "m-1", "type": NaN}',
    "invalid UTF-8 at byte": b'{"messageId": "\xff"}',
    "line is a JSON list, not an object": b"[1, 2]",
    "line is": b'{"a": "' + b"x" * (1 << 20) + b'"}',
    "JSON nested deeper than": b'{"a":' * 40 + b"1" + b"}" * 40,
    "contains a NUL character": good(event="Product\u0000Viewed"),
    "contract: messageId: Field required": good(messageId=None),
    "contract: messageId: String should have at least 1 character": good(messageId=""),
    "contract: messageId: String should have at most 256 characters": good(messageId="m" * 257),
    "contract: type: Input should be": good(type="purchase"),
    "contract: call: needs userId or anonymousId": good(anonymousId=None),
    "contract: userId: String should have at most 256 characters": good(userId="u" * 257),
    "contract: anonymousId: String should have at most 256 characters": good(anonymousId="a" * 257),
    "contract: previousId: String should have at most 256 characters": good(
        type="alias", userId="u", previousId="p" * 257
    ),
    "contract: call: a track call needs an event name": good(event=None),
    "contract: event: String should have at most 256 characters": good(event="e" * 257),
    "contract: call: an alias call needs previousId and userId": good(type="alias", userId="u"),
    "contract: groupId: String should have at most 256 characters": good(
        type="group", groupId="g" * 257
    ),
    "contract: call: a group call needs groupId": good(type="group"),
    "contract: timestamp: Field required": good(timestamp=None),
    "contract: timestamp: Input should have timezone info": good(timestamp="2026-02-01T10:00:00"),
    "contract: timestamp: Input should be a valid datetime": good(timestamp="yesterday"),
    "contract: sentAt: Input should have timezone info": good(sentAt="2026-02-01T10:00:00"),
    "timestamp ... is before": good(timestamp="1999-12-31T23:00:00Z"),
    "timestamp ... is in the future": good(timestamp="2026-03-05T00:00:00Z"),
    "contract: properties: Input should be a valid dictionary": good(properties=[1]),
    "contract: traits: Input should be a valid dictionary": good(traits="vip"),
    "contract: context: Input should be a valid dictionary": good(context="web"),
    "contract: context.device.type: Input should be": good(context={"device": {"type": "tv"}}),
    "contract: order_id: Field required": order(order_id="-"),
    "contract: products: List should have at least 1 item": order(products=[]),
    "contract: products.0.product_id: Field required": order(products=[{"price": 1}]),
    "contract: products.0.price: Input should be greater than or equal to 0": order(
        products=[{"product_id": "p", "price": -1}]
    ),
    "contract: products.0.quantity: Input should be greater than or equal to 1": order(
        products=[{"product_id": "p", "price": 1, "quantity": 0}]
    ),
    "contract: revenue: Input should be greater than or equal to 0": order(revenue=-1),
    "contract: total: Input should be greater than or equal to 0": order(total=-1),
    "contract: currency: String should match pattern": order(currency="usd"),
    "contract: channel: Input should be": consent(channel="fax"),
    "contract: granted: Field required": consent(granted="-"),
    "contract: granted: Input should be a valid boolean": consent(granted="maybe"),
}


def documented_reasons() -> list[str]:
    """The code spans of the rules table's second column."""
    text = DOC.read_text()
    table = text[text.index("| rule | reason recorded") :].split("\n\n")[0]
    reasons = []
    for row in table.splitlines()[2:]:
        cells = row.split(" | ")
        reasons += re.findall(r"`([^`]+)`", cells[-1])
    return reasons


def _rejected(line: bytes | dict[str, object]) -> str:
    raw = line if isinstance(line, bytes) else orjson.dumps(line)
    with pytest.raises(Rejected) as exc:
        parse_line(raw, LIMITS)
    return exc.value.reason


@pytest.mark.parametrize("documented", documented_reasons())
def test_each_documented_reason_is_what_the_loader_records(documented: str) -> None:
    assert documented in EXAMPLES, f"no example line for the documented reason {documented!r}"
    got = _rejected(EXAMPLES[documented])
    head, _, tail = documented.partition(" ... ")
    assert got.startswith(head) and tail in got, (documented, got)


def test_every_example_is_documented_and_every_length_limit_has_its_rule() -> None:
    documented = set(documented_reasons())
    assert set(EXAMPLES) <= documented, set(EXAMPLES) - documented
    schema = json_schema()
    limited = [
        (name, spec)
        for name, prop in schema["properties"].items()
        for spec in prop.get("anyOf", [prop])
        if "maxLength" in spec
    ]
    assert {name for name, _ in limited} >= {"messageId", "userId", "anonymousId", "event"}
    for name, spec in limited:
        rule = f"contract: {name}: String should have at most {spec['maxLength']} characters"
        assert rule in documented, f"{name}'s limit of {spec['maxLength']} is not documented"
