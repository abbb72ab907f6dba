"""Turn one raw line into a row for ``raw.events`` or a reason to quarantine it.

The contract is :class:`crm.contract.Event`. Most lines take a fast path: msgspec decodes
the line straight into typed structs (C speed, without building the nested objects), and the
line is accepted only when the pydantic model certainly accepts it too, with the same values; a
test holds the two to that. Every other line, and every event with a stricter sub-contract
(orders, consent), goes the slow way: orjson, the checks PostgreSQL would otherwise fail a whole
COPY on (size, UTF-8, NUL characters, nesting depth), then the pydantic model, whose error
message becomes the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
import orjson
from pydantic import ValidationError

from crm.contract import Event

_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z")
_STRICT_EVENTS = frozenset(("Order Completed", "Consent Updated"))
_NUL_ESCAPE = b"\\u0000"


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int
    max_depth: int
    min_ts: datetime
    max_ts: datetime
    advertising_id: str = "drop"  # context.device.advertisingId: "drop" or "hash" (minimise)


class Row(NamedTuple):
    """An accepted event, ready for COPY (a tuple: millions are made per load)."""

    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    event_at: datetime
    sent_at: datetime | None

    @property
    def event_date(self) -> date:
        return self.event_at.date()


class Rejected(Exception):
    """The line breaks the contract; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _depth_exceeds(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False


def _has_nul(obj: Any) -> bool:
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _utf8_error(raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _beyond_double(raw: bytes, exc: orjson.JSONDecodeError) -> Any:
    """orjson refuses numbers beyond a double's range, which are valid JSON (and PostgreSQL
    stores them exactly); the standard library decodes them. Anything else is a rejection."""
    if "number is infinity" not in str(exc):
        raise Rejected(_utf8_error(raw) or f"invalid JSON: {exc}")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc2:
        raise Rejected(_utf8_error(raw) or f"invalid JSON: {exc2}") from None


def decode_json(raw: bytes, limits: Limits) -> dict[str, Any]:
    """Checks that need no contract: size, encoding, syntax, object, depth, NUL."""
    if len(raw) > limits.max_line_bytes:
        raise Rejected(
            f"line is {len(raw):,} bytes, over the limit of {limits.max_line_bytes:,} "
            "(CRM_INGEST_MAX_LINE_BYTES)"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        obj = _beyond_double(raw, exc)
    if not isinstance(obj, dict):
        raise Rejected(f"line is a JSON {type(obj).__name__}, not an object")
    if (raw.count(b"{") + raw.count(b"[")) > limits.max_depth and _depth_exceeds(
        obj, limits.max_depth
    ):
        raise Rejected(f"JSON nested deeper than {limits.max_depth} levels (CRM_INGEST_MAX_DEPTH)")
    if _NUL_ESCAPE in raw and _has_nul(obj):
        raise Rejected("contains a NUL character (\\u0000), which PostgreSQL cannot store")
    return obj


class _Device(msgspec.Struct):
    id: str | None = None
    type: Literal["ios", "android", "web"] | None = None
    token: str | None = None


class _Context(msgspec.Struct):
    device: _Device | None = None
    timezone: str | None = None
    locale: str | None = None
    page: dict[str, Any] | None = None
    os: dict[str, Any] | None = None
    app: dict[str, Any] | None = None
    ip: str | None = None
    userAgent: str | None = None


_FastId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_EMPTY = msgspec.Raw(b"{}")
_ABSENT = msgspec.Raw(b"")  # marks a field the fast path leaves to the slow one


class _Call(msgspec.Struct):
    """What the fast path decodes; unknown fields are skipped, nested objects left as raw JSON."""

    messageId: _FastId
    type: Literal["track", "page", "screen", "identify"]
    timestamp: str
    event: _FastId | None = None
    name: str | None = None
    userId: _FastId | None = None
    anonymousId: _FastId | None = None
    properties: msgspec.Raw = _EMPTY
    traits: msgspec.Raw = _EMPTY
    context: _Context = msgspec.field(default_factory=_Context)
    previousId: msgspec.Raw = _ABSENT
    sentAt: msgspec.Raw = _ABSENT


_decode_call = msgspec.json.Decoder(_Call).decode


def _is_object(raw: msgspec.Raw) -> bool:
    return raw is _EMPTY or memoryview(raw)[:1] == b"{"


def _fast(raw: bytes, limits: Limits) -> Row | None:
    """The common case, or None when the slow path must decide."""
    if (
        len(raw) > limits.max_line_bytes
        or _NUL_ESCAPE in raw
        or raw.count(b"{") + raw.count(b"[") > limits.max_depth
    ):
        return None
    try:
        call = _decode_call(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    ts = call.timestamp
    if (
        (call.userId is None and call.anonymousId is None)
        or (call.type == "track" and (call.event is None or call.event in _STRICT_EVENTS))
        or not _is_object(call.properties)
        or not _is_object(call.traits)
        or _TS.match(ts) is None
        or call.previousId is not _ABSENT
        or call.sentAt is not _ABSENT
    ):
        return None
    try:
        event_at = datetime.fromisoformat(ts).astimezone(UTC)
    except ValueError:
        return None
    return Row(
        message_id=call.messageId,
        type=call.type,
        event=call.event if call.type == "track" or call.name is None else call.name,
        user_id=call.userId,
        anonymous_id=call.anonymousId,
        previous_id=None,
        event_at=event_at,
        sent_at=None,
    )


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        # a rule of the whole call (ids, track needs event, alias needs previousId) has no field
        loc = ".".join(str(p) for p in err["loc"]) or "call"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "contract: " + "; ".join(parts)


def _by_model(obj: dict[str, Any]) -> Row:
    try:
        ev = Event.model_validate(obj)
    except ValidationError as exc:
        raise Rejected(_format_errors(exc)) from None
    except ValueError as exc:  # pragma: no cover - pydantic wraps these
        raise Rejected(f"contract: {exc}") from None
    return Row(
        message_id=ev.message_id,
        type=ev.type,
        event=ev.event if ev.type == "track" else (ev.name if ev.name is not None else ev.event),
        user_id=ev.user_id,
        anonymous_id=ev.anonymous_id,
        previous_id=ev.previous_id,
        event_at=ev.timestamp,
        sent_at=ev.sent_at,
    )


def to_row(obj: dict[str, Any], limits: Limits) -> Row:
    """The slow path's verdict on a decoded line: the pydantic model, then the time bounds."""
    return _bounded(_by_model(obj), limits)


def _bounded(row: Row, limits: Limits) -> Row:
    if row.event_at < limits.min_ts:
        raise Rejected(
            f"timestamp {row.event_at.isoformat()} is before {limits.min_ts.isoformat()} "
            "(CRM_INGEST_MIN_TIMESTAMP)"
        )
    if row.event_at > limits.max_ts:
        raise Rejected(
            f"timestamp {row.event_at.isoformat()} is in the future (later than "
            f"{limits.max_ts.isoformat()}, CRM_INGEST_MAX_FUTURE_SECONDS)"
        )
    return row


def parse_line(raw: bytes, limits: Limits, *, fast: bool = True) -> Row:
    """One line in, one Row out, or Rejected with the reason."""
    row = _fast(raw, limits) if fast else None
    if row is not None:
        return _bounded(row, limits)
    return to_row(decode_json(raw, limits), limits)
