"""A local fake of the FCM HTTP v1 ``messages:send`` endpoint, so the real firebase-admin SDK
can be driven with no Google account (tests, ``make demo``, the delivery benchmark).

Behaviour, configurable per instance:
- tokens starting with ``unregistered`` -> 404 ``UNREGISTERED`` (the app was uninstalled);
  tokens starting with ``invalid`` -> 400 ``INVALID_ARGUMENT``;
- ``quota_rate`` / ``unavailable_rate``: that share of requests gets 429 ``QUOTA_EXCEEDED`` /
  503 ``UNAVAILABLE`` with a ``Retry-After`` header (a storm: ``storm`` requests in a row);
- ``latency_ms`` per request.
Accepted messages are kept in ``sent`` (with the message's ``data``) for tests to inspect.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def error_body(status: int, grpc: str, fcm: str | None, message: str) -> dict[str, Any]:
    err: dict[str, Any] = {"code": status, "message": message, "status": grpc}
    if fcm:
        err["details"] = [{"@type": FCM_ERROR, "errorCode": fcm}]
    return {"error": err}


@dataclass
class FakeFcm:
    latency_ms: float = 0.0
    quota_rate: float = 0.0
    unavailable_rate: float = 0.0
    storm: int = 0  # after a throttled request, this many more in a row are throttled too
    retry_after: int = 1
    seed: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    port: int = 0
    _storm_left: int = 0
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _send(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        body = await request.json()
        message = body.get("message", {})
        token = message.get("token", "")
        throttle = None
        if self._storm_left > 0:
            self._storm_left -= 1
            throttle = "quota"
        elif self._rng.random() < self.quota_rate:
            throttle, self._storm_left = "quota", self.storm
        elif self._rng.random() < self.unavailable_rate:
            throttle = "unavailable"
        headers = {"Retry-After": str(self.retry_after)}
        if throttle == "quota":
            return web.json_response(
                error_body(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "quota exceeded"),
                status=429, headers=headers,
            )  # fmt: skip
        if throttle == "unavailable":
            return web.json_response(
                error_body(503, "UNAVAILABLE", "UNAVAILABLE", "try again"),
                status=503, headers=headers,
            )  # fmt: skip
        if token.startswith("unregistered"):
            return web.json_response(
                error_body(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
                status=404,
            )  # fmt: skip
        if not token or token.startswith("invalid"):
            return web.json_response(
                error_body(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "invalid token"),
                status=400,
            )  # fmt: skip
        self.sent.append(message)
        project = request.match_info["project"]
        return web.json_response({"name": f"projects/{project}/messages/{len(self.sent)}"})

    def start(self) -> FakeFcm:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/v1/projects/{project}/messages:send", self._send)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-fcm", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> FakeFcm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Serve the fake on its own (own process, own CPU): ``python -m notify.fake_fcm``."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--quota-rate", type=float, default=0.0)
    ap.add_argument("--unavailable-rate", type=float, default=0.0)
    args = ap.parse_args()
    fake = FakeFcm(latency_ms=args.latency_ms, quota_rate=args.quota_rate,
                   unavailable_rate=args.unavailable_rate, port=args.port).start()  # fmt: skip
    print(f"fake FCM at {fake.endpoint}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            fake.sent.clear()  # keep memory flat when serving for long
    except KeyboardInterrupt:
        pass
    fake.stop()


if __name__ == "__main__":
    main()
