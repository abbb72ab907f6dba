"""The real firebase-admin SDK against the local fake FCM: platforms, batches of 500, and each
error class handled as FCM documents it; with both transports (the SDK's requests over libcurl,
and the SDK's own httpx client), and the same requests from each."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from notify.fake_fcm import FakeFcm
from notify.fcm import FcmSender, Push

TRANSPORTS = ["curl", "sdk"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sender(fake: FakeFcm, transport: str) -> Iterator[FcmSender]:
    s = FcmSender("test-project", endpoint=fake.endpoint, name=f"test-{uuid.uuid4().hex[:8]}",
                  ca_file=fake.ca_file, transport=transport)  # type: ignore[arg-type]  # fmt: skip
    yield s
    s.close()


def push(i: int, token: str | None = None, platform: str = "android") -> Push:
    return Push(str(i), token or f"tok-{i}", platform, "Hello", "World", "https://shop.example/p")


def test_each_platform_gets_its_own_config(fake: FakeFcm, sender: FcmSender) -> None:
    res = sender.send(
        [push(1, platform="android"), push(2, platform="ios"), push(3, platform="web")]
    )
    assert [r.outcome for r in res] == ["sent"] * 3
    by_key = {m["data"]["delivery_id"]: m for m in fake.sent}
    assert by_key["1"]["android"]["priority"] == "high"
    assert by_key["2"]["apns"]["payload"]["aps"]["alert"]["title"] == "Hello"
    assert by_key["3"]["webpush"]["fcm_options"]["link"] == "https://shop.example/p"


def test_more_than_500_go_in_several_calls_and_bad_tokens_do_not_fail_the_batch(
    fake: FakeFcm, sender: FcmSender
) -> None:
    pushes = [push(i, "unregistered-x" if i % 100 == 0 else None) for i in range(1200)]
    pushes.append(push(5000, "invalid-token"))
    res = sender.send(pushes)
    outcome = Counter(r.outcome for r in res)
    assert outcome == {"sent": 1188, "invalid_token": 13}
    assert len(fake.sent) == 1188
    assert [r.key for r in res] == [p.key for p in pushes]  # results in input order
    bad = next(r for r in res if r.key == "0")
    assert "UnregisteredError" in (bad.reason or "")


def test_quota_errors_are_retryable_with_retry_after(transport: str) -> None:
    with FakeFcm(quota_rate=1.0, retry_after=7) as fake:
        s = FcmSender("test-project", endpoint=fake.endpoint, name="quota", ca_file=fake.ca_file,
                      transport=transport)  # type: ignore[arg-type]  # fmt: skip
        try:
            res = s.send([push(1), push(2)])
        finally:
            s.close()
    assert [r.outcome for r in res] == ["retry", "retry"]
    assert res[0].retry_after == 7.0
    assert "QuotaExceeded" in (res[0].reason or "")
    assert not fake.sent
    assert fake.requests == 2  # 429 is not retried in the call: the delivery retries later


def test_unavailable_is_retried_with_the_sdks_backoff_then_reported() -> None:
    from notify.fcm_curl import exchange_with_retries

    slept: list[float] = []
    with FakeFcm(unavailable_rate=1.0) as fake:
        s = FcmSender("test-project", endpoint=fake.endpoint, name="unavailable",
                      ca_file=fake.ca_file)  # fmt: skip
        try:
            assert s._curl is not None
            replies = exchange_with_retries(s._curl, [s.body(push(1))], s.headers, slept.append)
            res = s._response(replies[0])
        finally:
            s.close()
    assert fake.requests == 5 and slept == [0.0, 1.0, 2.0, 4.0]  # 4 retries, as the SDK's
    assert replies[0].status == 503 and replies[0].headers["retry-after"] == "1"
    assert type(res.exception).__name__ == "UnavailableError"


def test_the_curl_transport_sends_what_the_sdk_sends(fake: FakeFcm) -> None:
    """The same message: the same JSON body and headers (but the client's user agent)."""
    fake.keep_requests = True
    pushes = [push(1, platform="android"), push(2, platform="ios"), push(3, platform="web"),
              Push("4", "tok-4", "android", "Grüße 🎁", 'say "hi"\n', None)]  # fmt: skip
    received = {}
    for transport in TRANSPORTS:
        s = FcmSender("test-project", endpoint=fake.endpoint, name=f"same-{transport}",
                      ca_file=fake.ca_file, transport=transport)  # type: ignore[arg-type]  # fmt: skip
        try:
            assert {r.outcome for r in s.send(pushes)} == {"sent"}
        finally:
            s.close()
        received[transport] = sorted(fake.received, key=lambda r: r[1])
        fake.received.clear()
    for (curl_headers, curl_body), (sdk_headers, sdk_body) in zip(*received.values(), strict=True):
        assert curl_body == sdk_body
        curl_headers.pop("user-agent"), sdk_headers.pop("user-agent")
        assert curl_headers == sdk_headers
    assert fake.http_versions == {"2": 8}


def test_sender_from_settings_reaches_the_configured_endpoint(
    fake: FakeFcm, transport: str
) -> None:
    from crm.settings import Settings

    settings = Settings(_env_file=None, fcm_project_id="p1", fcm_endpoint=fake.endpoint,
                        fcm_ca_file=fake.ca_file, fcm_transport=transport)  # fmt: skip
    s = FcmSender.from_settings(settings)
    assert s.transport == transport
    try:
        assert [r.outcome for r in s.send([push(1)])] == ["sent"]
    finally:
        s.close()
    assert fake.sent[0]["token"] == "tok-1"


def test_the_sdk_talks_http2_over_tls_to_the_fake_as_to_fcm(
    fake: FakeFcm, sender: FcmSender
) -> None:
    assert fake.endpoint.startswith("https://")
    res = sender.send([push(i) for i in range(1, 30)])
    assert {r.outcome for r in res} == {"sent"}
    assert fake.http_versions == {"2": 29}  # multiplexed on one connection, as FCM serves it


def test_an_untrusted_certificate_is_refused(fake: FakeFcm, transport: str) -> None:
    s = FcmSender("test-project", endpoint=fake.endpoint, name="no-ca",
                  transport=transport)  # type: ignore[arg-type]  # public CAs only  # fmt: skip
    try:
        res = s.send([push(1)])
    finally:
        s.close()
    # a transport error: retried later with backoff (and failed after CRM_SEND_MAX_ATTEMPTS)
    assert res[0].outcome == "retry" and not fake.sent
    reason = res[0].reason or ""
    assert "CERTIFICATE_VERIFY_FAILED" in reason or "self-signed certificate" in reason, reason


def test_plain_http_mode_serves_http1(transport: str) -> None:
    with FakeFcm(tls=False) as fake:
        s = FcmSender("test-project", endpoint=fake.endpoint, name="plain",
                      transport=transport)  # type: ignore[arg-type]  # fmt: skip
        try:
            assert [r.outcome for r in s.send([push(1)])] == ["sent"]
        finally:
            s.close()
    assert fake.http_versions == {"1.1": 1}
