"""The HTTP collector (crm collect): Segment's own client libraries deliver every call exactly
once into raw.events; a kill -9 loses nothing acknowledged; hostile requests get their status
and reason while everyone else is served."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from crm.collect import app as collect_app
from crm.collect.sources import KeyRing
from crm.collect.spool import Spool
from crm.settings import PROJECT_ROOT, Settings

JS = PROJECT_ROOT / "tests" / "js"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _crm(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "crm.cli", *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def _count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _wait_for(url: str, query: str, expected: int, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while True:
        got = _count(url, query)
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@dataclass
class Collector:
    env: dict[str, str]
    port: int
    key: str
    db_url: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> None:
        Path(self.env["CRM_HOME"]).mkdir(parents=True, exist_ok=True)
        log = open(Path(self.env["CRM_HOME"]) / "collect.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crm.cli", "collect", "--port", str(self.port), *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (
                Path(self.env["CRM_HOME"]) / "collect.log"
            ).read_text()
            time.sleep(0.2)
        raise AssertionError("the collector did not become healthy")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)  # the server and its loader process
            self.proc.wait(30)
        self.proc = None


@pytest.fixture
def collector(tmp_path: Path, db_url: str) -> Iterator[Collector]:
    env = {
        **os.environ,
        "CRM_DATABASE_URL": db_url,
        "CRM_HOME": str(tmp_path / "home"),
        "CRM_COLLECT_FLUSH_SECONDS": "0.2",
        "CRM_COLLECT_BODY_TIMEOUT_SECONDS": "2",
    }
    out = _crm(env, "sources", "add", "web", "--origin", "http://shop.example")
    key = out.strip().splitlines()[-1]
    c = Collector(env, _free_port(), key, db_url)
    c.start()
    yield c
    c.kill()


def _track(i: int, prefix: str) -> dict[str, object]:
    return {
        "type": "track",
        "messageId": f"{prefix}-{i}",
        "userId": f"u{i % 9}",
        "event": "Product Viewed",
        "properties": {"product_id": f"p{i % 30}"},
        "timestamp": "2026-12-01T10:00:00Z",
    }


def test_batches_kept_as_sent_read_as_if_decoded_and_encoded_again(tmp_path: Path) -> None:
    """The collector splices receivedAt, a missing messageId / timestamp and context.ip into
    a batch's calls as sent; what the loader then reads is what decoding each call, filling
    it in and encoding it again gives. Calls it cannot splice safely take that slow path."""
    spool = Spool(tmp_path / "spool", 1 << 20, 1.0)
    c = collect_app.Collector(Settings(), spool, KeyRing(tmp_path / "keys.json"), "")
    try:
        base = {"type": "track", "event": "Product Viewed", "userId": "u1",
                "messageId": "m1", "timestamp": "2026-12-01T10:00:00Z"}  # fmt: skip
        ctx = {"library": {"name": "analytics-python"}, "locale": "de-DE"}
        spliced = [
            {**base, "context": ctx},
            {**base, "context": {**ctx, "ip": "198.51.100.7"}},
            {k: v for k, v in base.items() if k != "messageId"},
            {**{k: v for k, v in base.items() if k != "timestamp"}, "originalTimestamp": "x"},
            {k: v for k, v in base.items() if k != "timestamp"},
            {**base, "context": {}, "properties": {"name": 'Café \u00e9 "q" }'}},
            {},
        ]
        slow = [
            {**base, "context": ctx, "properties": ctx},  # the context's bytes twice
            {**base, "context": {}, "properties": {"name": "{}"}},
            {**base, "receivedAt": "2020-01-01T00:00:00Z"},
            {**base, "writeKey": "secret"},
            {**base, "messageId": None},
            {**base, "context": None},
        ]

        def both(body: bytes) -> tuple[bytes | None, list[dict[str, object]]]:
            fast = c.batch_lines(collect_app._decode_batch(body), "203.0.113.9")
            full = c.lines(None, json.loads(body), "203.0.113.9")
            return fast, [json.loads(line) for line in full.splitlines()]

        def same(fast: bytes, full: list[dict[str, object]]) -> None:
            got = [json.loads(line) for line in fast.splitlines()]
            assert len(got) == len(full)
            for a, b in zip(got, full, strict=True):
                if a.get("timestamp") == a["receivedAt"]:  # both the time received
                    assert b["timestamp"] == b["receivedAt"]
                    a["timestamp"] = b["timestamp"]
                a["receivedAt"] = b["receivedAt"]  # the two paths ran a millisecond apart
                if str(b["messageId"]).startswith("collector-"):
                    assert str(a["messageId"]).startswith("collector-")
                    a["messageId"] = b["messageId"]
                assert a == b

        for call in spliced:
            for body in (json.dumps({"batch": [call, base]}).encode(),
                         json.dumps({"batch": [call]}, indent=None, separators=(",", ":"),
                                    ensure_ascii=False).encode()):  # fmt: skip
                fast, full = both(body)
                assert fast is not None, call
                same(fast, full)
        for call in slow:
            fast, _ = both(json.dumps({"batch": [base, call]}).encode())
            assert fast is None, call
        pretty = json.dumps({"batch": [base]}, indent=2).encode()
        assert both(pretty)[0] is None
        shared = json.dumps({"batch": [base], "context": {"ip": "1.2.3.4"}}).encode()
        assert both(shared)[0] is None
        fast, full = both(json.dumps({"batch": [{**base, "context": {}}]}).encode())
        assert full[0]["context"] == {"ip": "203.0.113.9"} and fast is not None
        same(fast, full)
    finally:
        spool.close()


def test_python_client_delivers_every_call_once(collector: Collector) -> None:
    from segment.analytics import Client  # segment-analytics-python, as shops run it

    errors: list[object] = []
    client = Client(collector.key, host=collector.base, on_error=lambda e, _: errors.append(e),
                    upload_size=50, sync_mode=False)  # fmt: skip
    device = {"advertisingId": "6D92078A-8246-4BA4-AE5B-76104861E7DC", "type": "ios"}

    def send() -> None:
        for i in range(300):
            client.track(user_id=f"u{i % 7}", event="Product Viewed", message_id=f"py-{i}",
                         properties={"product_id": f"p{i}"},
                         context={"ip": "203.0.113.77", "device": device})  # fmt: skip
        client.identify("u1", {"email": "ada@example.com", "plan": "gold"}, message_id="py-id")
        client.group("u1", "acme", {"industry": "retail"}, message_id="py-group")
        client.alias("u1", "u-old", message_id="py-alias")
        client.page("u1", "Shop", "Home", message_id="py-page")
        client.screen("u1", "App", "Cart", message_id="py-screen")
        client.flush()

    send()
    send()  # the same calls again, as a client retrying after a lost answer does
    client.join()
    assert errors == []
    url = collector.db_url
    ids = "message_id like 'py-%'"
    assert _wait_for(url, f"select count(*) from raw.events where {ids}", 305) == 305
    time.sleep(1)  # the second send's segments are loaded too, and add nothing
    assert _count(url, f"select count(*) from raw.events where {ids}") == 305
    assert _count(url, f"select count(distinct message_id) from raw.events where {ids}") == 305
    assert _count(url, "select count(*) from raw.events where type = 'group'") == 1
    # the source is recorded with every call, through its load
    assert _count(url, "select count(*) from raw.events e join raw.load_audit a using (load_id)"
                       f" where {ids} and a.source <> 'collector:web'") == 0  # fmt: skip
    with psycopg.connect(url) as conn:
        [(payload,)] = conn.execute(
            "select payload from raw.events where message_id = 'py-0'"
        ).fetchall()
        [(traits,)] = conn.execute(
            "select traits from pii.contact_traits where message_id = 'py-id'"
        ).fetchall()
    assert payload["context"]["ip"] == "203.0.113.0"  # truncated, as from files
    assert "advertisingId" not in payload["context"]["device"]
    assert payload["context"]["library"]["name"] == "analytics-python"
    assert "receivedAt" in payload and "writeKey" not in payload
    assert traits == {"email": "ada@example.com"}


def test_a_source_over_its_rate_limit_gets_429_and_the_client_retries(
    collector: Collector,
) -> None:
    """A source's limit counts calls a second in Redis: a request that would pass it is refused
    whole with 429 and Retry-After; Segment's client retries and every call lands once."""
    from segment.analytics import Client

    key = _crm(collector.env, "sources", "add", "slow", "--rate-limit", "30").split()[-1]
    listed = _crm({**collector.env, "COLUMNS": "200"}, "sources", "list")
    assert "│ 30 " in listed and "│ 5,000 (default) " in listed
    statuses = []
    for n in range(3):  # back to back: at most two can fall in separate seconds
        r = _post(collector.base, key, [_track(i, f"burst{n}") for i in range(20)])
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert "over its limit of 30 calls a second" in r.json()["error"]
    assert 429 in statuses and 200 in statuses
    # the other source is not limited by this one
    assert _post(collector.base, collector.key, [_track(i, "free") for i in range(40)]).is_success
    errors: list[object] = []
    client = Client(key, host=collector.base, on_error=lambda e, _: errors.append(e),
                    upload_size=25, sync_mode=False)  # fmt: skip
    for i in range(150):
        client.track(user_id=f"u{i % 5}", event="Product Viewed", message_id=f"limited-{i}",
                     properties={"product_id": f"p{i}"})  # fmt: skip
    client.flush()
    client.join()
    assert errors == []
    query = "select count(*) from raw.events where message_id like 'limited-%'"
    assert _wait_for(collector.db_url, query, 150) == 150
    time.sleep(0.5)
    assert _count(collector.db_url, query) == 150
    accepted = "select count(*) from raw.events where message_id like 'burst%'"
    assert _wait_for(collector.db_url, accepted, 20 * statuses.count(200)) == 20 * statuses.count(
        200
    )
    # the limit changes while the collector runs; 0 lifts it
    _crm(collector.env, "sources", "limit", "slow", "0")
    deadline = time.monotonic() + 15
    while True:
        codes = {
            _post(collector.base, key, [_track(i, f"lifted{n}") for i in range(20)]).status_code
            for n in range(3)
        }
        if codes == {200} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert codes == {200}


def test_the_rate_window_slides_refunds_and_never_waits_on_a_stalled_redis(
    tmp_path: Path,
) -> None:
    """The limit holds across a second's boundary (a fixed window would let twice the limit
    through), calls refused by a full spool are taken off the count, and a Redis that accepts
    connections but never answers costs a request at most the limiter's timeout."""
    import asyncio

    import redis.asyncio

    from crm.cache import async_redis_client
    from crm.collect.app import RateLimiter
    from crm.settings import Settings

    settings = Settings(_env_file=None, home=tmp_path / "home")

    async def counted() -> None:
        limiter = RateLimiter(async_redis_client(settings), f"t{os.getpid()}")
        t = float(int(time.time()) + 10)  # keys of seconds no other test uses
        assert await limiter.admit("shop", 25, 30, now=t + 0.9) == (
            None,
            limiter._key("shop", int(t)),
        )
        # 0.1 s later, in the next second: 95% of the previous second is still in the window
        wait, key = await limiter.admit("shop", 25, 30, now=t + 1.05)
        assert key is None and wait is not None and 0 < wait <= 1
        # near the end of that second the previous one has slid out of the window
        ok, key = await limiter.admit("shop", 25, 30, now=t + 1.95)
        assert ok is None and key == limiter._key("shop", int(t) + 1)
        # refunded calls leave room for others in the same second
        await limiter.refund(key, 25)
        assert (await limiter.admit("shop", 25, 30, now=t + 1.96))[0] is None
        # a request alone in its window passes whatever its size
        assert (await limiter.admit("bulk", 500, 30, now=t + 0.5))[0] is None
        await limiter.client.aclose()

    asyncio.run(counted())

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers

    async def stalled() -> float:
        client = redis.asyncio.Redis(port=silent.getsockname()[1])
        limiter = RateLimiter(client, "stalled")
        started = time.monotonic()
        assert await limiter.admit("shop", 10, 30) == (None, None)
        first = time.monotonic() - started
        # after a failure Redis is left alone: the next requests do not wait at all
        started = time.monotonic()
        for _ in range(20):
            assert await limiter.admit("shop", 10, 30) == (None, None)
        assert time.monotonic() - started < 0.05
        await client.aclose(close_connection_pool=True)
        return first

    try:
        assert asyncio.run(asyncio.wait_for(stalled(), 5)) <= RateLimiter.timeout + 0.2
    finally:
        silent.close()


def test_node_client_delivers_every_call_once(collector: Collector) -> None:
    node = shutil.which("node")
    assert node, "node is needed (make node-deps)"
    assert (JS / "node_modules" / "@segment" / "analytics-node").exists(), "run make node-deps"
    done = subprocess.run(
        [node, str(JS / "send_node.js"), collector.base, collector.key, "200", "node"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sent = done.stdout.split()
    assert len(sent) == 201
    query = "select count(distinct message_id) from raw.events where message_id like 'node-%'"
    assert _wait_for(collector.db_url, query, 201) == 201
    assert (
        _count(collector.db_url, "select count(*) from raw.events where message_id like 'node-%'")
        == 201
    )


def _post(base: str, key: str, calls: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(f"{base}/v1/batch", json={"batch": calls}, auth=(key, ""), timeout=10)


def test_a_killed_collector_loses_nothing_it_acknowledged(collector: Collector) -> None:
    acked: list[str] = []
    sent = 0
    killed = False
    while sent < 6000:
        calls = [_track(sent + i, "k9") for i in range(50)]
        try:
            r = _post(collector.base, collector.key, calls)
            if r.status_code == 200:
                acked += [str(c["messageId"]) for c in calls]
        except httpx.HTTPError:
            pass
        sent += 50
        if sent == 3000 and not killed:
            collector.kill(signal.SIGKILL)  # mid-stream, loader and all
            killed = True
            collector.start()
    # clients retry what got no answer, and some of what did
    for start in range(0, 6000, 50):
        r = _post(collector.base, collector.key, [_track(start + i, "k9") for i in range(50)])
        assert r.status_code == 200
    assert len(acked) >= 5000
    query = "select count(*) from raw.events where message_id like 'k9-%'"
    assert _wait_for(collector.db_url, query, 6000) == 6000
    assert _count(collector.db_url, "select count(distinct message_id) from raw.events"
                                    " where message_id like 'k9-%'") == 6000  # fmt: skip


def _raw_request(port: int, data: bytes, pause: float = 0.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if pause:
            head, body = data.split(b"\r\n\r\n", 1)
            s.sendall(head + b"\r\n\r\n" + body[:5])
            time.sleep(pause)
            with contextlib.suppress(OSError):
                s.sendall(body[5:])
        else:
            s.sendall(data)
        try:
            return s.recv(65536)
        except OSError:
            return b""


def test_hostile_requests_get_a_status_and_a_reason(collector: Collector) -> None:
    base, key = collector.base, collector.key
    one = {"batch": [_track(0, "ok")]}

    def post(body: bytes | None = None, auth: tuple[str, str] | None = (key, ""),
             path: str = "/v1/batch", headers: dict[str, str] | None = None,
             ) -> httpx.Response:  # fmt: skip
        return httpx.post(f"{base}{path}", content=body if body is not None else json.dumps(one),
                          auth=auth, headers=headers, timeout=10)  # fmt: skip

    def refused(r: httpx.Response, status: int, words: str) -> None:
        assert r.status_code == status, r.text
        assert words in r.json()["error"], r.text

    refused(post(auth=None), 401, "no write key")
    refused(post(auth=("nope", "")), 401, "unknown write key")
    refused(post(b"{not json"), 400, "invalid JSON")
    refused(post(b"[1, 2]"), 400, "not an object")
    refused(post(b'{"batch": [1]}'), 400, "call 0")
    refused(post(b'{"batch": []}'), 400, "no calls")
    big_call = {"batch": [{**_track(1, "big"), "properties": {"x": "a" * 40_000}}]}
    refused(post(json.dumps(big_call).encode()), 413, "call 0")
    refused(post(b'{"batch": [' + b",".join([json.dumps(_track(1, "b")).encode()] * 5000) + b"]}"),
            413, "limit")  # fmt: skip
    bomb = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}")
    refused(post(bomb, headers={"Content-Encoding": "gzip"}), 413, "decompressed")
    refused(post(b"{}", headers={"Content-Encoding": "br"}), 415, "not supported")
    refused(post(path="/v1/track", headers={"Origin": "http://evil.example"}), 403, "origin")
    # the hostile corpus the file tests use, posted as batches: accepted, then quarantined
    corpus: list[dict[str, object]] = [
              {"type": "track", "messageId": "h-1", "timestamp": "2026-12-01T10:00:00Z",
               "event": "Product Viewed"},  # no userId or anonymousId
              {"type": "teleport", "messageId": "h-2", "userId": "u"},
              {"type": "track", "messageId": "h-3", "userId": "u", "event": "Order Completed",
               "timestamp": "2026-12-01T10:00:00Z", "properties": {"order_id": "o"}},
              {"type": "track", "messageId": "h-4", "userId": "u\u0000", "event": "X",
               "timestamp": "2026-12-01T10:00:00Z"}]  # fmt: skip
    assert _post(base, key, corpus).status_code == 200
    assert httpx.get(f"{base}/v1/track", timeout=5).status_code == 405
    assert httpx.put(f"{base}/v1/batch", timeout=5).status_code == 405
    # a body sent very slowly, and a huge header: refused, nobody else waits on them
    body = json.dumps(one).encode()
    slow = (f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Basic {base64.b64encode(f'{key}:'.encode()).decode()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    assert b" 408 " in _raw_request(collector.port, slow, pause=4)[:20]
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = _raw_request(collector.port, huge)
    assert answer == b"" or answer[9:10] == b"4", answer[:60]
    # a revoked key is refused at once
    other = _crm(collector.env, "sources", "add", "old").strip().splitlines()[-1]
    assert _post(base, other, [_track(1, "old")]).status_code == 200
    _crm(collector.env, "sources", "revoke", "old")
    time.sleep(5.5)  # running collectors re-read the sources every 5 s
    refused(_post(base, other, [_track(2, "old")]), 401, "revoked")
    # and everyone else is still served
    assert post().status_code == 200
    assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    url = collector.db_url
    assert _wait_for(url, "select count(*) from raw.rejected_events", 4) == 4
    assert _wait_for(url, "select count(*) from raw.events where message_id = 'ok-0'", 1) == 1
    assert _count(url, "select count(*) from raw.events where message_id like 'h-%'") == 0


def test_cors_preflight_and_settings_for_browsers(collector: Collector) -> None:
    base = collector.base
    r = httpx.options(f"{base}/v1/t", headers={
        "Origin": "http://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"}, timeout=5)  # fmt: skip
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://shop.example"
    r = httpx.options(f"{base}/v1/t", headers={"Origin": "http://evil.example"}, timeout=5)
    assert r.status_code == 403
    # analytics.js posts text/plain with the key in the body
    call = {**_track(0, "browser"), "writeKey": collector.key}
    r = httpx.post(f"{base}/v1/t", content=json.dumps(call),
                   headers={"Content-Type": "text/plain", "Origin": "http://shop.example"},
                   timeout=5)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "http://shop.example"
    settings = httpx.get(f"{base}/v1/projects/{collector.key}/settings", timeout=5).json()
    assert settings["integrations"]["Segment.io"]["apiHost"] == f"127.0.0.1:{collector.port}/v1"
    assert httpx.get(f"{base}/v1/projects/nope/settings", timeout=5).status_code == 404
    query = "select count(*) from raw.events where message_id = 'browser-0'"
    assert _wait_for(collector.db_url, query, 1) == 1


def test_a_full_spool_answers_503_and_keeps_what_it_acknowledged(
    tmp_path: Path, db_url: str
) -> None:
    env = {**os.environ, "CRM_DATABASE_URL": db_url, "CRM_HOME": str(tmp_path / "home"),
           "CRM_COLLECT_SPOOL_MAX_BYTES": "20000"}  # fmt: skip
    key = _crm(env, "sources", "add", "app").strip().splitlines()[-1]
    c = Collector(env, _free_port(), key, db_url)
    c.start("--no-loader")
    try:
        statuses = []
        for n in range(20):
            statuses.append(_post(c.base, key, [_track(n * 10 + i, "full") for i in range(10)]))
        codes = [r.status_code for r in statuses]
        assert 503 in codes and codes[0] == 200
        assert "spool" in statuses[codes.index(503)].json()["error"]
        acked = 10 * codes.count(200)
    finally:
        c.kill()
    # what was acknowledged is in the spool, and loads once a loader runs
    loader = subprocess.Popen([sys.executable, "-m", "crm.cli", "collect-load"], env=env,
                              start_new_session=True)  # fmt: skip
    try:
        query = "select count(*) from raw.events where message_id like 'full-%'"
        assert _wait_for(db_url, query, acked) == acked
    finally:
        os.killpg(loader.pid, signal.SIGTERM)
        loader.wait(30)


def test_tail_shows_each_call_accepted_or_rejected_with_its_reason(collector: Collector) -> None:
    env = {**collector.env, "COLUMNS": "300"}
    tail = subprocess.Popen([sys.executable, "-m", "crm.cli", "tail", "--source", "web"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        assert tail.stdout is not None
        assert b"following" in tail.stdout.readline()
        bad: dict[str, object] = {**_track(1, "tail-bad"), "userId": None}
        assert _post(collector.base, collector.key, [_track(0, "tail"), bad]).status_code == 200
        lines = [tail.stdout.readline().decode(), tail.stdout.readline().decode()]
    finally:
        os.killpg(tail.pid, signal.SIGTERM)
        tail.wait(10)
    accepted = next(line for line in lines if "accepted" in line)
    rejected = next(line for line in lines if "rejected" in line)
    assert "collector:web" in accepted and "Product Viewed" in accepted and "tail-0" in accepted
    assert "needs userId or anonymousId" in rejected and "tail-bad-1" in rejected


def test_the_live_views_show_calls_to_the_dashboards_role_without_payloads(
    collector: Collector,
) -> None:
    """crm.live_call_minutes / crm.live_calls / crm.live_freshness (the Live dashboard) as the
    dashboards' role reads them: calls per minute by source, type and outcome counted as each
    load commits (a file's load as well as the collector's), the rejection reason, the newest
    calls, received-to-loaded delays; never raw itself."""
    from crm import db
    from crm.ingest.load import ingest_paths
    from crm.settings import Settings

    bad: dict[str, object] = {**_track(1, "live-bad"), "userId": None}
    nul: dict[str, object] = {**_track(10, "live-nul"), "userId": "u\u0000"}  # no jsonb for it
    calls = [_track(i, "live") for i in range(5)] + [
        bad,
        nul,
        {**_track(9, "live"), "type": "page"},
    ]
    assert _post(collector.base, collector.key, calls).status_code == 200
    loaded = "select count(*) from raw.events where message_id like 'live-%'"
    assert _wait_for(collector.db_url, loaded, 6) == 6
    # a file's calls are counted under 'files'; its duplicate of a collected call is not
    daily = Path(collector.env["CRM_HOME"]) / "live-file.jsonl"
    daily.write_text("\n".join(json.dumps(c) for c in [*calls[:2], _track(20, "live-file")]) + "\n")
    url = collector.db_url
    [res] = ingest_paths([daily], url=url, settings=Settings(_env_file=None, database_url=url))
    assert (res.loaded, res.duplicates) == (1, 2)
    reader = db.ensure_reader(collector.db_url, "crm_live_test", "reader-Pw-1")
    with psycopg.connect(reader) as conn:
        minutes = conn.execute(
            "select source, type, outcome, reason, sum(calls)::int from crm.live_call_minutes"
            " group by 1, 2, 3, 4 order by 1, 2, 3, 4"
        ).fetchall()
        newest = conn.execute(
            "select source, type, outcome, reason, count(*) from crm.live_calls"
            " where message_id like 'live-%' group by 1, 2, 3, 4 order by 1, 2, 3, 4"
        ).fetchall()
        fresh = conn.execute(
            "select seconds_since_last_load, collected_last_minute, received_to_loaded_p50_s,"
            " received_to_loaded_p95_s from crm.live_freshness"
        ).fetchone()
        columns = {
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns"
                " where table_schema = 'crm' and table_name like 'live_%'"
            )
        }
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select 1 from raw.events limit 1")
    reasons = sorted(r[3] for r in newest if r[2] == "rejected")
    assert len(reasons) == 2
    assert "NUL character" in reasons[0] and "needs userId or anonymousId" in reasons[1]
    expected = [
        ("files", "track", "accepted", None, 1),
        ("web", "page", "accepted", None, 1),
        ("web", "track", "accepted", None, 5),
        ("web", "track", "rejected", reasons[0], 1),
        ("web", "track", "rejected", reasons[1], 1),
    ]
    assert minutes == expected
    assert newest == expected
    assert fresh is not None
    since, recent, p50, p95 = fresh
    assert 0 <= since < 60 and recent >= 6
    assert 0 <= p50 <= p95 < 30  # flushed every 0.2 s here
    assert not columns & {"payload", "properties", "traits", "context", "line_text"}


def test_postgres_down_for_30_s_loses_nothing(tmp_path: Path) -> None:
    """A PostgreSQL of its own, stopped for 30 s while a client sends: every call is
    acknowledged meanwhile (spooled), and the backlog loads when the server is back."""
    import pgserver

    from crm import db

    pgdata = tmp_path / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    try:
        url = db.fresh_database(server.get_uri(), "crm_down")
        env = {**os.environ, "CRM_DATABASE_URL": url, "CRM_HOME": str(tmp_path / "home"),
               "CRM_COLLECT_FLUSH_SECONDS": "0.5"}  # fmt: skip
        key = _crm(env, "sources", "add", "app").strip().splitlines()[-1]
        c = Collector(env, _free_port(), key, url)
        c.start()
        sent = 0

        def send_for(seconds: float) -> None:
            nonlocal sent
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                r = _post(c.base, key, [_track(sent + i, "down") for i in range(20)])
                assert r.status_code == 200, r.text
                sent += 20
                time.sleep(0.05)

        try:
            send_for(3)
            pid = int((pgdata / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # fast shutdown
            while (pgdata / "postmaster.pid").exists():
                time.sleep(0.1)
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(url, connect_timeout=2).close()
            send_for(30)  # PostgreSQL down: still accepted
            down_at = sent
            server.ensure_postgres_running()  # back
            send_for(2)
            query = "select count(*) from raw.events where message_id like 'down-%'"
            assert _wait_for(url, query, sent, seconds=120) == sent
            assert down_at > 1000
            assert _count(url, "select count(distinct message_id) from raw.events") == sent
        finally:
            c.kill()
    finally:
        server.cleanup()


def test_analytics_js_in_a_browser_sends_across_origins(
    collector: Collector, tmp_path: Path
) -> None:
    """Segment's analytics.js (@segment/analytics-next) on a shop's page in headless Chromium,
    loaded with only cdnURL pointed at the collector: it fetches the settings there, then its
    page, identify and track calls cross origins into raw.events."""
    import functools
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(chromium).exists(), "Debian's chromium is needed (apt-get install chromium)"
    umd = JS / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
    assert umd.exists(), "run make node-deps"
    site = tmp_path / "site"
    shutil.copytree(umd, site / "ajs")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    shop = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=shop.serve_forever, daemon=True).start()
    origin = f"http://localhost:{shop.server_address[1]}"
    key = _crm(collector.env, "sources", "add", "browser", "--origin", origin).split()[-1]
    (site / "index.html").write_text(f"""<!doctype html><html><head>
<script src="/ajs/index.js"></script>
<script>
  window.analytics = AnalyticsNext.AnalyticsBrowser.load(
    {{ writeKey: {json.dumps(key)}, cdnURL: {json.dumps(collector.base)} }});
  analytics.page('Home', {{ path: '/' }});
  analytics.identify('browser-u1', {{ plan: 'gold', email: 'ada@example.com' }});
  analytics.track('Product Viewed', {{ product_id: 'p1' }});
</script></head><body>shop</body></html>""")
    posted: list[tuple[int, str]] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium,
                                         args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
            page = browser.new_page()
            page.on("response", lambda r: posted.append((r.status, r.url))
                    if r.request.method == "POST" else None)  # fmt: skip
            page.goto(f"{origin}/index.html")
            deadline = time.monotonic() + 30
            while len(posted) < 3 and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            browser.close()
    finally:
        shop.shutdown()
    assert sorted(posted) == [(200, f"{collector.base}/v1/{p}") for p in ("i", "p", "t")]
    url = collector.db_url
    query = ("select count(*) from raw.events e join raw.load_audit a using (load_id)"
             " where a.source = 'collector:browser'")  # fmt: skip
    assert _wait_for(url, query, 3) == 3
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select type, coalesce(event, ''), payload #>> '{context,library,name}'"
            " from raw.events where anonymous_id is not null order by type"
        ).fetchall()
    assert rows == [("identify", "", "analytics.js"), ("page", "Home", "analytics.js"),
                    ("track", "Product Viewed", "analytics.js")]  # fmt: skip
