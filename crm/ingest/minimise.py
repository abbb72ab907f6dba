"""Data minimisation at the door: what a call carries about a person is cut down before it is
stored in ``raw.events`` (which dbt, and so every analytics table, reads).

- **IP addresses** (``context.ip``, or an ``ip`` key anywhere in the call) are truncated: IPv4
  to its /24 (``203.0.113.77`` becomes ``203.0.113.0``), IPv6 to its /48. Anything that is not
  an IP address becomes ``null``. Enough for a country or a network, not for a household.
- **Personal traits** (:data:`PERSONAL_TRAITS`: e-mail, phone, names, address, birthday,
  username) in ``traits`` and ``context.traits`` leave the payload. The payload keeps
  ``email_sha256`` and ``phone_sha256`` (SHA-256 of the trimmed, lower-cased value: analysts
  can still count and join distinct addresses). The values themselves go to
  ``pii.contact_traits`` with the call's message id: the ``pii`` schema only the privacy
  officer, the transformer (for ``pii.customer_pii``) and the sender can read.
- **Advertising ids** (``context.device.advertisingId``: Apple's IDFA, Google's AAID), which
  follow a person across apps, are dropped; with ``CRM_INGEST_ADVERTISING_ID=hash`` they are
  kept as their SHA-256 (``advertisingId_sha256``), enough to count devices.

The same rules, written in SQL (``raw.minimise_payload`` and ``raw.personal_traits``,
migration 0013), minimised the rows stored before; a test holds the two to the same result.
Quarantined lines (``raw.rejected_events``) keep their exact bytes so they can be repaired:
they are readable only by the loader and the privacy officer and go with the retention.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson

PERSONAL_TRAITS = (
    "email",
    "phone",
    "name",
    "first_name",
    "last_name",
    "firstName",
    "lastName",
    "address",
    "birthday",
    "username",
)
HASHED = ("email", "phone")  # kept in the payload as <trait>_sha256

_IP_VALUE = re.compile(rb'("ip"\s*:\s*)"([^"\\]{0,64})"')
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"((?:{_OCTET}\.){{2}}{_OCTET})\.{_OCTET}")


@lru_cache(maxsize=1 << 16)
def truncate_ip(value: str) -> str | None:
    """The network an address belongs to (/24 for IPv4, /48 for IPv6); None if not an IP."""
    m = _IPV4.fullmatch(value)
    if m:
        return m.group(1) + ".0"
    if ":" not in value or any(c in value for c in "/% \t\n"):
        return None
    try:
        addr = ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return str(ipaddress.IPv6Network(f"{addr}/48", strict=False).network_address)


def digest(value: Any) -> str:
    """SHA-256 (hex) of the trimmed, lower-cased value, as migration 0013 computes it."""
    return hashlib.sha256(str(value).strip().lower().encode()).hexdigest()


@lru_cache(maxsize=1 << 16)
def _ip_json(value: bytes) -> bytes:
    """The JSON that replaces the string ``"value"``."""
    net = truncate_ip(value.decode("utf-8", "replace"))
    return b'"' + net.encode() + b'"' if net else b"null"


def _ip_bytes(m: re.Match[bytes]) -> bytes:
    return m.group(1) + _ip_json(m.group(2))


def _walk_ips(node: Any) -> None:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for k, v in cur.items():
                if k == "ip":
                    cur[k] = truncate_ip(v) if isinstance(v, str) else None
                elif isinstance(v, dict | list):
                    stack.append(v)
        elif isinstance(cur, list):
            stack.extend(v for v in cur if isinstance(v, dict | list))


def _move_traits(traits: Any, personal: dict[str, Any]) -> None:
    if not isinstance(traits, dict):
        return
    for key in PERSONAL_TRAITS:
        if key in traits:
            value = traits.pop(key)
            if value is None or value == "":
                continue
            personal[key] = value
            if key in HASHED:
                traits[f"{key}_sha256"] = digest(value)


def _drop_advertising_id(call: dict[str, Any], keep_hash: bool) -> None:
    context = call.get("context")
    device = context.get("device") if isinstance(context, dict) else None
    if isinstance(device, dict) and "advertisingId" in device:
        value = device.pop("advertisingId")
        if keep_hash and value not in (None, ""):
            device["advertisingId_sha256"] = digest(value)


def minimise(raw: bytes, advertising_id: str = "drop") -> tuple[bytes, dict[str, Any] | None]:
    """(the line as it may be stored, the personal traits taken out of it or None).

    Most lines carry an IP and no traits: a byte-level substitution, no re-encoding. A line
    with traits (identify calls), an advertising id, or an IP the substitution cannot read,
    is decoded, fixed and encoded again. ``advertising_id``: "drop" or "hash"."""
    if b'"traits"' not in raw and b'"advertisingId"' not in raw:
        at = raw.find(b'"ip"')
        if at < 0:
            return raw, None
        m = _IP_VALUE.match(raw, at)
        if m and raw.find(b'"ip"', m.end()) < 0:  # the usual: one context.ip
            return raw[: m.start()] + _ip_bytes(m) + raw[m.end() :], None
        out, n = _IP_VALUE.subn(_ip_bytes, raw)
        if n == raw.count(b'"ip"'):
            return out, None
    dumps: Callable[[Any], bytes]
    try:
        call = orjson.loads(raw)
        dumps = orjson.dumps
    except orjson.JSONDecodeError:  # numbers beyond a double (valid JSON): kept as written
        call = json.loads(raw, parse_float=_Number)
        dumps = _exact_dumps
    personal: dict[str, Any] = {}
    _move_traits(call.get("traits"), personal)
    context = call.get("context")
    if isinstance(context, dict):
        _move_traits(context.get("traits"), personal)
    _drop_advertising_id(call, keep_hash=advertising_id == "hash")
    _walk_ips(call)
    try:
        return dumps(call), personal or None
    except TypeError:  # an integer beyond 64 bits
        return _exact_dumps(call), personal or None


class _Number(str):
    """A JSON number kept as its text (orjson and float cannot hold 1e400)."""


def _exact_dumps(obj: Any) -> bytes:
    numbers: list[str] = []

    def swap(node: Any) -> Any:
        if isinstance(node, _Number):
            numbers.append(str(node))
            return f"\x00{len(numbers) - 1}\x00"  # NUL never survives validation
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = json.dumps(swap(obj), ensure_ascii=False, separators=(",", ":"))
    for i, number in enumerate(numbers):
        text = text.replace(f'"\\u0000{i}\\u0000"', number, 1)
    return text.encode()
