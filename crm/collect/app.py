"""Segment's HTTP Tracking API, served by FastAPI (Starlette under uvicorn).

``POST /v1/{track,identify,page,screen,alias,group,batch,import}`` and the short paths
analytics.js posts to (``/v1/t``, ``/p``, ``/i``, ``/a``, ``/g``, ``/s``, ``/b``). A request
authenticates with HTTP Basic (the write key as user name, empty password) or ``writeKey`` in
the JSON body (analytics.js sends ``text/plain`` bodies that way). The answer is 200
``{"success": true}`` only once the calls are fsynced in the spool (``crm.collect.spool``);
the loader then moves them into ``raw.events``, where the contract decides each call (a call
that breaks it is quarantined with its reason, as from a file).

What the collector adds to each call, as Segment's API does: ``type`` (single-call paths),
``messageId`` when absent (a random one: such a call cannot be deduplicated on retries),
``receivedAt``, ``timestamp`` (``originalTimestamp``, else the time received) when absent,
``context.ip`` from the connection when absent (the loader truncates it), and the batch's
``context`` and ``integrations`` under each call's own. ``writeKey`` is never stored.

Whole requests are refused with a status and a reason: 401 (no, unknown or revoked key), 403
(origin not allowed for the source), 400 (not JSON, not an object, no calls, a call that is
not an object), 413 (body or call too large, also after gzip), 408 (body too slow), 415
(unknown content encoding), 429 with ``Retry-After`` (the source is over its rate limit),
503 (spool full or failing: nothing was accepted, retry).

Rate limits count calls per source in Redis, so every replica of the collector shares them,
over a sliding window of one second (this second's count plus the previous second's, weighted
by how much of it the window still covers: no burst of twice the limit across a second's
boundary). A request is refused whole when its calls would take the source past its limit (a
request alone in its window always passes, so no batch is refused for ever); a request that
was counted and then not accepted (spool full or failing) is taken off the count. When Redis
cannot be reached or does not answer within ``RateLimiter.timeout`` the collector accepts
without counting, and skips Redis for ``RateLimiter.pause`` seconds: limits protect the
pipeline, and a lost call or a stalled collector would be worse than an uncounted call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
import time
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from crm.collect.sources import Key, KeyRing
from crm.collect.spool import Spool, SpoolFull
from crm.settings import Settings

log = logging.getLogger(__name__)

TYPES = {
    "track": "track",
    "t": "track",
    "identify": "identify",
    "i": "identify",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "alias": "alias",
    "a": "alias",
    "group": "group",
    "g": "group",
    "batch": None,
    "b": None,
    "import": None,
}
SUCCESS = b'{"success":true}'
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class _Batch(msgspec.Struct):
    """What the fast path reads of a batch: its calls stay the bytes they came as."""

    batch: list[msgspec.Raw]
    context: Any = msgspec.UNSET
    integrations: Any = msgspec.UNSET
    writeKey: Any = None


class _Call(msgspec.Struct):
    """The fields of a call the collector fills in when absent (the rest passes through)."""

    messageId: Any = msgspec.UNSET
    timestamp: Any = msgspec.UNSET
    originalTimestamp: Any = None
    receivedAt: Any = msgspec.UNSET
    writeKey: Any = msgspec.UNSET
    context: msgspec.Raw = msgspec.Raw()


class _Context(msgspec.Struct):
    ip: Any = msgspec.UNSET


_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_call = msgspec.json.Decoder(_Call).decode
_decode_context = msgspec.json.Decoder(_Context).decode


class Refused(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


# Adds a request's calls to its source's count for this second unless the window's count
# (this second's, plus the previous second's weighted by ARGV[3], the share of it still in
# the window) would pass the limit; a request alone in its window always passes. Returns the
# new count of this second, or -1: refused.
_RATE = """
local n = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local weight = tonumber(ARGV[3])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local used = current + previous * weight
if used > 0 and used + n > limit then return -1 end
local count = redis.call('INCRBY', KEYS[1], n)
if count == n then redis.call('EXPIRE', KEYS[1], 3) end
return count
"""


class RateLimiter:
    """Calls per source over a sliding second, counted in Redis (shared by every replica)."""

    timeout = 0.25  # seconds Redis may take to answer before a request goes uncounted
    pause = 5.0  # seconds Redis is left alone after it failed to answer

    def __init__(self, client: Any, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self._script = client.register_script(_RATE)
        self._warned = 0.0
        self._down_until = 0.0

    def _key(self, source: str, second: int) -> str:
        return f"{self.prefix}:collect:rate:{source}:{second}"

    async def admit(
        self, source: str, calls: int, limit: int, now: float | None = None
    ) -> tuple[float | None, str | None]:
        """(None, the key counted under) when admitted, (None, None) when admitted uncounted
        (Redis down), else (the seconds to wait, None)."""
        now = time.time() if now is None else now
        if now < self._down_until:
            return None, None
        second = int(now)
        keys = [self._key(source, second), self._key(source, second - 1)]
        try:
            async with asyncio.timeout(self.timeout):
                count = await self._script(keys=keys, args=[calls, limit, 1 - (now - second)])
        except Exception as exc:  # Redis down or stalled: accept uncounted (module's note)
            self._down_until = now + self.pause
            if now - self._warned > 60:
                self._warned = now
                log.warning(
                    "rate limits not enforced for %.0f s: Redis did not answer (%s)",
                    self.pause,
                    type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                )
            return None, None
        if int(count) < 0:
            return second + 1 - now, None
        return None, keys[0]

    async def refund(self, counted: str | None, calls: int) -> None:
        """Take calls that were counted but not accepted off the count (best effort)."""
        if counted is None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.decrby(counted, calls)
        except Exception as exc:
            log.debug("rate count not refunded: %s", exc)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Collector:
    """What the routes share: settings, the spool and the key ring."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        keys: KeyRing,
        url: str,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings, self.spool, self.keys, self.url = settings, spool, keys, url
        self.limiter = limiter
        self.calls = 0  # accepted since start
        self._refreshed = 0.0
        self._refreshing = asyncio.Lock()
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, name="crm-keys", daemon=True)

    def start(self) -> None:
        try:
            self.keys.refresh(self.url)
        except Exception as exc:
            log.warning("cannot read the sources (%s); using the keys kept in the spool", exc)
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        self.spool.close()

    def _refresh(self) -> None:
        while not self._stop.wait(5.0):
            try:
                self.keys.refresh(self.url)
            except Exception as exc:  # PostgreSQL down: keep the keys we have
                log.debug("sources not refreshed: %s", exc)

    async def body(self, request: Request) -> bytes:
        limit = self.settings.collect_max_request_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise Refused(413, f"body of {int(length):,} bytes, over the limit of {limit:,}")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.collect_body_timeout_seconds):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise Refused(413, f"body over the limit of {limit:,} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(408, "request body not received in time") from None
        data = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            d = zlib.decompressobj(wbits=31)
            try:
                out = d.decompress(data, limit + 1)
            except zlib.error as exc:
                raise Refused(400, f"invalid gzip body: {exc}") from None
            if len(out) > limit or d.unconsumed_tail:
                raise Refused(413, f"body over the limit of {limit:,} bytes once decompressed")
            return out
        if encoding not in ("identity", ""):
            raise Refused(415, f"content encoding {encoding!r} not supported (gzip is)")
        return data

    async def lookup(self, key: str) -> Key | str:
        """A key added since the last refresh is found at once: an unknown key re-reads the
        sources (at most once a second; requests arriving meanwhile wait for that read)."""
        found = self.keys.lookup(key)
        if found != "unknown write key":
            return found
        asked = time.monotonic()
        async with self._refreshing:
            if self._refreshed < asked - 1.0:
                self._refreshed = time.monotonic()
                try:
                    await asyncio.to_thread(self.keys.refresh, self.url)
                except Exception as exc:
                    log.debug("sources not refreshed: %s", exc)
        return self.keys.lookup(key)

    async def authenticate(self, request: Request, body_key: object) -> Key:
        """The request's source, from Basic auth or else ``body_key`` (the body's writeKey)."""
        key = None
        auth = request.headers.get("authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                key = base64.b64decode(auth[6:].strip(), validate=True).decode().split(":", 1)[0]
            except (binascii.Error, UnicodeDecodeError):
                raise Refused(401, "malformed Basic authorization") from None
        if not key:
            key = body_key if isinstance(body_key, str) else None
        if not key:
            raise Refused(401, "no write key (HTTP Basic user name, or writeKey in the body)")
        found = await self.lookup(key)
        if isinstance(found, str):
            raise Refused(401, found)
        origin = request.headers.get("origin")
        if origin and found.origins and origin not in found.origins:
            raise Refused(403, f"origin {origin} is not allowed for source {found.source}")
        return found

    async def admit(self, key: Key, calls: int) -> str | None:
        """Count the request against its source's limit (the key it is counted under, for a
        refund), or refuse it with 429."""
        limit = self.settings.collect_rate_limit if key.rate_limit is None else key.rate_limit
        if not limit or self.limiter is None:
            return None
        wait, counted = await self.limiter.admit(key.source, calls, limit)
        if wait is not None:
            raise Refused(
                429,
                f"source {key.source} is over its limit of {limit:,} calls a second",
                {"Retry-After": str(max(1, round(wait)))},
            )
        return counted

    def batch_lines(self, batch: _Batch, ip: str | None) -> bytes | None:
        """The spool lines of a batch whose calls need only fields added at their start (and
        ``context.ip``): each call's bytes are kept as they came, with those fields spliced
        in, instead of decoding every call into objects and encoding it again (that was most
        of the collector's CPU per call). None: some call needs ``lines``."""
        if batch.context is not msgspec.UNSET or batch.integrations is not msgspec.UNSET:
            return None
        if not batch.batch:
            return None
        received = _encode(_now())
        ip_json = _encode(ip) if ip else None
        limit = self.settings.collect_max_call_bytes
        out: list[bytes] = []
        for n, raw in enumerate(batch.batch):
            text = bytes(raw)
            if b"\n" in text:  # pretty-printed: JSON Lines needs it on one line
                return None
            try:
                call = _decode_call(text)
            except msgspec.ValidationError:  # not an object: lines() says why
                return None
            if (
                call.writeKey is not msgspec.UNSET
                or call.receivedAt is not msgspec.UNSET
                or (call.messageId is not msgspec.UNSET and not call.messageId)
            ):
                return None
            head = [b'{"receivedAt":', received]
            if call.messageId is msgspec.UNSET:
                head += [b',"messageId":', _encode(f"collector-{uuid.uuid4()}")]
            if call.timestamp is msgspec.UNSET:
                first = call.originalTimestamp
                head += [b',"timestamp":', _encode(first) if first else received]
            context = bytes(call.context)
            if not context:
                head += [b',"context":{', b'"ip":' + ip_json if ip_json else b"", b"}"]
            elif context[:1] != b"{":
                return None
            elif ip_json and _decode_context(context).ip is msgspec.UNSET:
                if text.count(context) != 1:  # the same bytes elsewhere too: not sure where
                    return None
                empty = context[1:].lstrip()[:1] == b"}"
                ctx = b'{"ip":' + ip_json + (b"}" if empty else b"," + context[1:])
                text = text.replace(context, ctx, 1)
            rest = text[1:].lstrip()
            line = b"".join(head) + (b"," + rest if rest[:1] != b"}" else rest)
            if len(line) > limit:
                raise Refused(413, f"call {n} is {len(line):,} bytes, over the limit of {limit:,}")
            out.append(line)
        out.append(b"")
        return b"\n".join(out)

    def lines(self, kind: str | None, body: dict[str, Any], ip: str | None) -> bytes:
        if kind is None:
            calls = body.get("batch")
            if not isinstance(calls, list):
                raise Refused(400, "a batch needs a 'batch' array of calls")
            if not calls:
                raise Refused(400, "the batch holds no calls")
        else:
            calls = [body]
        received = _now()
        shared_context = body.get("context") if kind is None else None
        shared_integrations = body.get("integrations") if kind is None else None
        limit = self.settings.collect_max_call_bytes
        out: list[bytes] = []
        for n, call in enumerate(calls):
            if not isinstance(call, dict):
                raise Refused(400, f"call {n} is a JSON {type(call).__name__}, not an object")
            call.pop("writeKey", None)
            if kind is not None:
                call["type"] = kind
            if not call.get("messageId"):
                call["messageId"] = f"collector-{uuid.uuid4()}"
            call["receivedAt"] = received
            if "timestamp" not in call:
                call["timestamp"] = call.get("originalTimestamp") or received
            context = call.get("context")
            if context is None:
                context = call["context"] = {}
            if isinstance(context, dict):
                if isinstance(shared_context, dict):
                    for k, v in shared_context.items():
                        context.setdefault(k, v)
                if ip and "ip" not in context:
                    context["ip"] = ip
            if isinstance(shared_integrations, dict) and "integrations" not in call:
                call["integrations"] = shared_integrations
            line = _encode(call)
            if len(line) > limit:
                raise Refused(413, f"call {n} is {len(line):,} bytes, over the limit of {limit:,}")
            out.append(line)
        out.append(b"")
        return b"\n".join(out)

    async def receive(self, request: Request, kind: str | None) -> Response:
        try:
            if self.spool.full:
                raise Refused(503, "the spool is full; retry later")
            raw = await self.body(request)
            ip = request.client.host if request.client else None
            data: bytes | None = None
            key: Key | None = None
            if kind is None:
                try:
                    batch = _decode_batch(raw)
                except msgspec.DecodeError:  # not JSON, or not a batch: read as below
                    pass
                else:
                    key = await self.authenticate(request, batch.writeKey)
                    data = self.batch_lines(batch, ip)
            if data is None:
                try:
                    body = _decode(raw)
                except msgspec.DecodeError as exc:
                    raise Refused(400, f"invalid JSON: {exc}") from None
                if not isinstance(body, dict):
                    raise Refused(400, f"the body is a JSON {type(body).__name__}, not an object")
                if key is None:
                    key = await self.authenticate(request, body.get("writeKey"))
                data = self.lines(kind, body, ip)
            assert key is not None
            calls = data.count(b"\n")
            counted = await self.admit(key, calls)
            try:
                await asyncio.wrap_future(self.spool.append(key.source, data))
            except (SpoolFull, OSError) as exc:
                if self.limiter is not None:  # not accepted: not counted either
                    await self.limiter.refund(counted, calls)
                if isinstance(exc, SpoolFull):
                    raise Refused(503, f"{exc}; retry later") from None
                raise Refused(503, f"the spool cannot be written ({exc}); retry later") from None
            self.calls += calls
            return Response(SUCCESS, media_type="application/json", headers=self.cors(request))
        except Refused as exc:
            return JSONResponse(
                {"success": False, "error": exc.reason},
                status_code=exc.status,
                headers={**self.cors(request), **exc.headers},
            )

    def cors(self, request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if not origin:
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def create_app(collector: Collector) -> FastAPI:
    app = FastAPI(
        title="shop-crm collector",
        description="Segment-compatible HTTP Tracking API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/health")
    async def health() -> Response:
        problem = collector.spool.error or ("the spool is full" if collector.spool.full else None)
        if problem:
            return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok", "calls_accepted": collector.calls})

    @app.get("/v1/projects/{write_key}/settings")
    async def project_settings(write_key: str, request: Request) -> Response:
        """What analytics.js fetches from its CDN before it sends anything: the Segment.io
        integration pointed back at this collector."""
        found = await collector.lookup(write_key)
        if isinstance(found, str):
            return JSONResponse({"error": found}, status_code=404)
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        return JSONResponse(
            {
                "integrations": {
                    "Segment.io": {
                        "apiKey": write_key,
                        "apiHost": f"{host}/v1",
                        "protocol": request.url.scheme,
                        "unbundledIntegrations": [],
                        "addBundledMetadata": False,
                    }
                },
                "plan": {"track": {"__default": {"enabled": True}}},
                "edgeFunction": {},
                "analyticsNextEnabled": True,
                "middlewareSettings": {},
                "enabledMiddleware": {},
                "metrics": {"sampleRate": 0},
                "legacyVideoPluginsEnabled": False,
                "remotePlugins": [],
            },
            headers={"Access-Control-Allow-Origin": "*", "Cache-Control": "max-age=60"},
        )

    async def route(request: Request) -> Response:
        name = request.path_params["kind"]
        if name not in TYPES:
            return JSONResponse({"success": False, "error": f"no such path /v1/{name}"}, 404)
        return await collector.receive(request, TYPES[name])

    async def preflight(request: Request) -> Response:
        origin = request.headers.get("origin", "")
        if not origin or not collector.keys.allows_origin(origin):
            return Response(status_code=403)
        return Response(
            status_code=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "access-control-request-headers", "authorization, content-type"
                ),
                "Access-Control-Max-Age": "86400",
                "Vary": "Origin",
            },
        )

    # plain Starlette routes: these take the Request as it is, no FastAPI parameter solving
    app.add_route("/v1/{kind}", route, methods=["POST"], include_in_schema=False)
    app.add_route("/v1/{kind}", preflight, methods=["OPTIONS"], include_in_schema=False)
    return app
