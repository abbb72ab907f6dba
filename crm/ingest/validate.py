"""Turn one raw line into a row for ``raw.events`` or a reason to quarantine it.

The contract is :class:`crm.contract.Event`. Most lines are plain and take a fast path that
accepts only what the model certainly accepts, with the same normalised values (a test holds
the two to that); every other line, and every event with a stricter sub-contract (orders,
consent), goes through the pydantic model, whose error message becomes the reason.
Before either, the checks PostgreSQL would otherwise fail a whole COPY on: size, UTF-8, JSON
syntax, NUL characters, nesting depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from crm.contract import Event

_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z")
_FAST_TYPES = frozenset(("track", "page", "screen", "identify"))
_STRICT_EVENTS = frozenset(("Order Completed", "Consent Updated"))
_CONTEXT_MODELLED = ("timezone", "locale", "ip", "userAgent")
_CONTEXT_DICTS = ("page", "os", "app")
_DEVICE_TYPES = frozenset(("ios", "android", "web"))
_NUL_ESCAPE = b"\\u0000"


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int
    max_depth: int
    min_ts: datetime
    max_ts: datetime


@dataclass(frozen=True, slots=True)
class Row:
    """An accepted event, ready for COPY."""

    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    previous_id: str | None
    event_at: datetime
    sent_at: datetime | None
    properties: Any
    traits: Any
    context: Any

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
        raise Rejected(_utf8_error(raw) or f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Rejected(f"line is a JSON {type(obj).__name__}, not an object")
    if (raw.count(b"{") + raw.count(b"[")) > limits.max_depth and _depth_exceeds(
        obj, limits.max_depth
    ):
        raise Rejected(f"JSON nested deeper than {limits.max_depth} levels (CRM_INGEST_MAX_DEPTH)")
    if _NUL_ESCAPE in raw and _has_nul(obj):
        raise Rejected("contains a NUL character (\\u0000), which PostgreSQL cannot store")
    return obj


def _id(v: Any) -> bool:
    return v is None or (type(v) is str and 0 < len(v) <= 256)


def _fast(obj: dict[str, Any]) -> Row | None:
    """The common case, or None when the pydantic model must decide."""
    typ = obj.get("type")
    ts = obj.get("timestamp")
    mid = obj.get("messageId")
    uid = obj.get("userId")
    aid = obj.get("anonymousId")
    if (
        type(typ) is not str
        or typ not in _FAST_TYPES
        or type(ts) is not str
        or type(mid) is not str
        or not 0 < len(mid) <= 256
        or not _id(uid)
        or not _id(aid)
        or (uid is None and aid is None)
        or "previousId" in obj
        or "sentAt" in obj
        or _TS.match(ts) is None
    ):
        return None
    event = obj.get("event")
    name = obj.get("name")
    if typ == "track":
        if type(event) is not str or not 0 < len(event) <= 256 or event in _STRICT_EVENTS:
            return None
    elif event is not None and (type(event) is not str or not 0 < len(event) <= 256):
        return None
    if name is not None and type(name) is not str:
        return None
    props = obj.get("properties", {})
    traits = obj.get("traits", {})
    ctx = obj.get("context", {})
    if type(props) is not dict or type(traits) is not dict or type(ctx) is not dict:
        return None
    for key in _CONTEXT_MODELLED:
        v = ctx.get(key)
        if v is not None and type(v) is not str:
            return None
    for key in _CONTEXT_DICTS:
        v = ctx.get(key)
        if v is not None and type(v) is not dict:
            return None
    device = ctx.get("device")
    if device is not None:
        if type(device) is not dict:
            return None
        dtype, did, token = device.get("type"), device.get("id"), device.get("token")
        if (
            (dtype is not None and (type(dtype) is not str or dtype not in _DEVICE_TYPES))
            or (did is not None and type(did) is not str)
            or (token is not None and type(token) is not str)
        ):
            return None
    try:
        event_at = datetime.fromisoformat(ts).astimezone(UTC)
    except ValueError:
        return None
    return Row(
        message_id=mid,
        type=typ,
        event=event if typ == "track" else (name if name is not None else event),
        user_id=uid,
        anonymous_id=aid,
        previous_id=None,
        event_at=event_at,
        sent_at=None,
        properties=props,
        traits=traits,
        context=ctx,
    )


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
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
        # The stored JSON is what arrived, not the model's re-serialisation.
        properties=obj.get("properties") or {},
        traits=obj.get("traits") or {},
        context=obj.get("context") or {},
    )


def to_row(obj: dict[str, Any], limits: Limits, *, fast: bool = True) -> Row:
    row = (_fast(obj) if fast else None) or _by_model(obj)
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
    return to_row(decode_json(raw, limits), limits, fast=fast)
