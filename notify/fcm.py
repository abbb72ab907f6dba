"""Push through Firebase Cloud Messaging with the real firebase-admin SDK (HTTP v1).

Android, web and iOS (through FCM's APNs config) messages are sent with the SDK's async batch
call, at most 500 per call. Each result is classified as FCM documents it:
- ``invalid_token``: UNREGISTERED, or INVALID_ARGUMENT on the token: deactivate the token,
  never retry;
- ``retry``: QUOTA_EXCEEDED, UNAVAILABLE, INTERNAL: retry later with exponential backoff,
  no sooner than the response's Retry-After;
- ``failed``: anything else: that delivery fails with its reason, the batch goes on.

The project, endpoint and credentials come from settings (CRM_FCM_PROJECT_ID,
CRM_FCM_ENDPOINT, CRM_FCM_CREDENTIALS_FILE); CRM_FCM_ENDPOINT points the SDK at the local fake
(notify.fake_fcm) in tests and the demo.

Two transports (CRM_FCM_TRANSPORT): ``curl`` (the default) moves the SDK's requests over
libcurl's multiplexed HTTP/2 (``notify.fcm_curl``): the SDK still builds, validates and encodes
every message, supplies and refreshes the credentials, and turns each error response into its
exception; ``sdk`` sends with the SDK's own async client (httpx), ~1 ms of CPU per message.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any, Literal

import firebase_admin
from firebase_admin import credentials, exceptions, messaging

from crm.settings import Settings, get_settings

MAX_BATCH = 500
_ENV_LOCK = threading.Lock()
Outcome = Literal["sent", "invalid_token", "retry", "failed"]
Transport = Literal["curl", "sdk"]


class StaticToken(credentials.Base):
    """An access token that never refreshes: for the local fake only (no Google account)."""

    def get_credential(self) -> Any:
        from google.oauth2.credentials import Credentials

        return Credentials(token="fake-fcm-token")


@dataclass(frozen=True)
class Push:
    key: str  # the caller's id for this send (e.g. the delivery id), echoed in data
    token: str
    platform: str  # android, ios, web
    title: str
    body: str
    link: str | None = None


@dataclass(frozen=True)
class Result:
    key: str
    outcome: Outcome
    message_id: str | None = None
    reason: str | None = None
    retry_after: float | None = None


def build(push: Push) -> messaging.Message:
    data = {"delivery_id": push.key, **({"link": push.link} if push.link else {})}
    note = messaging.Notification(title=push.title, body=push.body)
    kwargs: dict[str, Any] = {"token": push.token, "data": data}
    if push.platform == "ios":
        kwargs["apns"] = messaging.APNSConfig(
            headers={"apns-priority": "10"},
            payload=messaging.APNSPayload(
                aps=messaging.Aps(alert=messaging.ApsAlert(title=push.title, body=push.body),
                                  sound="default")
            ),
        )  # fmt: skip
    elif push.platform == "web":
        kwargs["webpush"] = messaging.WebpushConfig(
            notification=messaging.WebpushNotification(title=push.title, body=push.body),
            fcm_options=(
                messaging.WebpushFCMOptions(link=push.link)
                if push.link and push.link.startswith("https://")
                else None
            ),
        )  # fmt: skip
    else:
        kwargs["notification"] = note
        kwargs["android"] = messaging.AndroidConfig(priority="high")
    return messaging.Message(**kwargs)


def classify(key: str, response: messaging.SendResponse) -> Result:
    if response.success:
        return Result(key, "sent", message_id=response.message_id)
    exc = response.exception
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, messaging.UnregisteredError | exceptions.InvalidArgumentError):
        return Result(key, "invalid_token", reason=reason)
    if isinstance(exc, messaging.QuotaExceededError | exceptions.UnavailableError |
                  exceptions.InternalError | exceptions.ResourceExhaustedError):  # fmt: skip
        retry_after = None
        http = getattr(exc, "http_response", None)
        if http is not None and http.headers.get("Retry-After", "").isdigit():
            retry_after = float(http.headers["Retry-After"])
        return Result(key, "retry", reason=reason, retry_after=retry_after)
    return Result(key, "failed", reason=reason)


class FcmSender:
    def __init__(self, project_id: str, endpoint: str | None = None,
                 credentials_file: str | None = None, name: str = "shop-crm",
                 ca_file: str | None = None, transport: Transport = "curl",
                 streams: int = 100) -> None:  # fmt: skip
        if endpoint:
            # the SDK builds its URL from this class constant; point it at the fake
            messaging._MessagingService.FCM_URL = (
                endpoint.rstrip("/") + "/v1/projects/{0}/messages:send"
            )
        # without a service account, only an explicit endpoint (the local fake) makes sense:
        # a fake token sent to Google would fail every message
        self.configured = bool(credentials_file or endpoint)
        cred = credentials.Certificate(credentials_file) if credentials_file else StaticToken()
        # one loop for the sender's life: the SDK's async HTTP client is bound to it
        self._loop = asyncio.new_event_loop()
        try:
            self.app = firebase_admin.get_app(name)
        except ValueError:
            self.app = firebase_admin.initialize_app(cred, {"projectId": project_id}, name=name)
        self.service = self._service(ca_file)
        self.transport = transport
        self._curl = None
        if transport == "curl":
            from firebase_admin import _http_client

            from notify.fcm_curl import CurlTransport

            timeout = self.app.options.get("httpTimeout", _http_client.DEFAULT_TIMEOUT_SECONDS)
            self._curl = CurlTransport(self.service._fcm_url, timeout, ca_file, streams)
        elif transport != "sdk":
            raise ValueError(f"FCM transport must be 'curl' or 'sdk', not {transport!r}")

    def _service(self, ca_file: str | None) -> Any:
        """The SDK's messaging service, created now: its HTTP/2 client reads the certificates
        to trust when it is made (SSL_CERT_FILE), and a private CA (the local fake's, a TLS
        proxy's) must apply to this client only."""
        import os

        if not ca_file:
            return messaging._get_messaging_service(self.app)
        with _ENV_LOCK:
            before = os.environ.get("SSL_CERT_FILE")
            os.environ["SSL_CERT_FILE"] = ca_file
            try:
                return messaging._get_messaging_service(self.app)
            finally:
                if before is None:
                    os.environ.pop("SSL_CERT_FILE", None)
                else:
                    os.environ["SSL_CERT_FILE"] = before

    @classmethod
    def from_settings(cls, settings: Settings | None = None, name: str = "shop-crm") -> FcmSender:
        settings = settings or get_settings()
        creds = str(settings.fcm_credentials_file) if settings.fcm_credentials_file else None
        ca = str(settings.fcm_ca_file) if settings.fcm_ca_file else None
        return cls(settings.fcm_project_id, settings.fcm_endpoint, creds, name, ca_file=ca,
                   transport=settings.fcm_transport)  # fmt: skip

    def headers(self, refresh: bool = False) -> list[str]:
        """The headers the SDK sends with each message: its own, its metrics header, the JSON
        content type and the credential's (refreshed first when ``refresh``)."""
        from firebase_admin import _http_client
        from google.auth.transport import requests as google_requests

        credential = self.service._credential
        if refresh:
            credential.refresh(google_requests.Request())
        headers = {**self.service._fcm_headers, **_http_client.METRICS_HEADERS,
                   "Content-Type": "application/json"}  # fmt: skip
        credential.before_request(google_requests.Request(), "POST", self.service._fcm_url,
                                  headers)  # fmt: skip
        return [f"{k}: {v}" for k, v in headers.items()]

    def body(self, push: Push, dry_run: bool = False) -> bytes:
        """The request body the SDK sends for ``push`` (its encoder, httpx's JSON)."""
        data = self.service._message_data(build(push), dry_run)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()  # fmt: skip

    def _response(self, reply: Any) -> messaging.SendResponse:
        """A curl reply as the SDK's SendResponse: its exception for an error response."""
        import httpx

        if 200 <= reply.status < 300:
            return messaging.SendResponse(json.loads(reply.body), None)
        request = httpx.Request("POST", self.service._fcm_url)
        if reply.status == 0:  # no response: as the SDK maps httpx's timeouts and failures
            if reply.timed_out:
                exc: exceptions.FirebaseError = exceptions.DeadlineExceededError(
                    f"Timed out while making an API call: {reply.error}"
                )
            else:
                exc = exceptions.UnavailableError(
                    f"Failed to establish a connection: {reply.error}"
                )
            return messaging.SendResponse(None, exc)
        response = httpx.Response(reply.status, headers=reply.headers, content=reply.body,
                                  request=request)  # fmt: skip
        error = httpx.HTTPStatusError(f"HTTP {reply.status}", request=request, response=response)
        return messaging.SendResponse(None, self.service._handle_fcm_httpx_error(error))

    def _send_curl(self, pushes: list[Push], dry_run: bool) -> list[Result]:
        from notify.fcm_curl import exchange_with_retries

        assert self._curl is not None
        bodies = [self.body(p, dry_run) for p in pushes]
        replies = exchange_with_retries(self._curl, bodies, self.headers)
        return [classify(p.key, self._response(r)) for p, r in zip(pushes, replies, strict=True)]

    async def send_async(self, pushes: list[Push], dry_run: bool = False) -> list[Result]:
        if self._curl is not None:
            return self._send_curl(pushes, dry_run)
        results: list[Result] = []
        for start in range(0, len(pushes), MAX_BATCH):
            chunk = pushes[start : start + MAX_BATCH]
            batch = await messaging.send_each_async(
                [build(p) for p in chunk], dry_run=dry_run, app=self.app
            )
            results += [classify(p.key, r) for p, r in zip(chunk, batch.responses, strict=True)]
        return results

    def send(self, pushes: list[Push], dry_run: bool = False) -> list[Result]:
        if self._curl is not None:
            return self._send_curl(pushes, dry_run)
        return self._loop.run_until_complete(self.send_async(pushes, dry_run))

    def close(self) -> None:
        if self._curl is not None:
            self._curl.close()
        # close the async client on the loop it lives on, before the SDK tries another loop
        service = messaging._get_messaging_service(self.app)
        self._loop.run_until_complete(service._async_client.aclose())
        firebase_admin.delete_app(self.app)
        self._loop.close()
