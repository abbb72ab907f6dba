"""A local fake of the FCM HTTP v1 ``messages:send`` endpoint, so the real firebase-admin SDK
can be driven with no Google account (tests, ``make demo``, the delivery benchmark).

It speaks what FCM speaks: HTTP/2 over TLS (ALPN ``h2``), with a self-signed certificate made
at start (``ca_file``: give it to the sender as CRM_FCM_CA_FILE). ``tls=False`` serves plain
HTTP/1.1 instead. Behaviour, configurable per instance:
- tokens starting with ``unregistered`` -> 404 ``UNREGISTERED`` (the app was uninstalled);
  tokens starting with ``invalid`` -> 400 ``INVALID_ARGUMENT``;
- ``quota_rate`` / ``unavailable_rate``: that share of requests gets 429 ``QUOTA_EXCEEDED`` /
  503 ``UNAVAILABLE`` with a ``Retry-After`` header (a storm: ``storm`` requests in a row);
- ``latency_ms`` per request.
Accepted messages are kept in ``sent`` (with the message's ``data``) for tests to inspect, and
the HTTP version of each request in ``http_versions``; ``keep_requests`` keeps every request's
headers and body in ``received`` (to compare what two senders send).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
PATH_PREFIX, PATH_SUFFIX = "/v1/projects/", "/messages:send"


def error_body(status: int, grpc: str, fcm: str | None, message: str) -> dict[str, Any]:
    err: dict[str, Any] = {"code": status, "message": message, "status": grpc}
    if fcm:
        err["details"] = [{"@type": FCM_ERROR, "errorCode": fcm}]
    return {"error": err}


def self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(certificate, key) for ``host``, valid for a day; the certificate is its own CA."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop-crm fake FCM")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "fake-fcm.pem", folder / "fake-fcm.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A client that hangs up (a sender closing, a killed worker) is no error of the fake's."""
    import ssl

    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionError | asyncio.CancelledError):
        return
    if isinstance(exc, BaseExceptionGroup) and all(
        isinstance(e, ssl.SSLError | ConnectionError | asyncio.CancelledError | RuntimeError)
        for e in exc.exceptions
    ):
        return
    loop.default_exception_handler(context)


@dataclass
class FakeFcm:
    latency_ms: float = 0.0
    quota_rate: float = 0.0
    unavailable_rate: float = 0.0
    storm: int = 0  # after a throttled request, this many more in a row are throttled too
    retry_after: int = 1
    seed: int = 0
    tls: bool = True  # HTTP/2 over TLS, as FCM; False: plain HTTP/1.1
    sent: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    http_versions: Counter[str] = field(default_factory=Counter)
    clients: set[tuple[str, int]] = field(default_factory=set)  # (host, port) of connections
    keep_requests: bool = False
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    ca_file: str | None = None
    _storm_left: int = 0
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _shutdown: asyncio.Event | None = None
    _folder: tempfile.TemporaryDirectory[str] | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def respond(self, project: str, message: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body, headers) for one request: the fake's whole behaviour."""
        token = message.get("token", "")
        throttle = None
        if self._storm_left > 0:
            self._storm_left -= 1
            throttle = "quota"
        elif self._rng.random() < self.quota_rate:
            throttle, self._storm_left = "quota", self.storm
        elif self._rng.random() < self.unavailable_rate:
            throttle = "unavailable"
        retry = {"Retry-After": str(self.retry_after)}
        if throttle == "quota":
            return 429, error_body(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED",
                                   "quota exceeded"), retry  # fmt: skip
        if throttle == "unavailable":
            return 503, error_body(503, "UNAVAILABLE", "UNAVAILABLE", "try again"), retry
        if token.startswith("unregistered"):
            return 404, error_body(404, "NOT_FOUND", "UNREGISTERED",
                                   "Requested entity was not found."), {}  # fmt: skip
        if not token or token.startswith("invalid"):
            return 400, error_body(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                                   "invalid token"), {}  # fmt: skip
        self.sent.append(message)
        return 200, {"name": f"projects/{project}/messages/{len(self.sent)}"}, {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI application hypercorn serves."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        path: str = scope["path"]
        headers: dict[str, str]
        if scope["method"] != "POST" or not (
            path.startswith(PATH_PREFIX) and path.endswith(PATH_SUFFIX)
        ):
            status, body, headers = 404, error_body(404, "NOT_FOUND", None, "no such method"), {}
        else:
            self.requests += 1
            self.http_versions[scope["http_version"]] += 1
            if scope.get("client"):
                self.clients.add(tuple(scope["client"]))
            if self.latency_ms:
                await asyncio.sleep(self.latency_ms / 1000)
            if self.keep_requests:
                names = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                self.received.append((names, b"".join(chunks)))
            message = json.loads(b"".join(chunks) or b"{}").get("message", {})
            project = path[len(PATH_PREFIX) : -len(PATH_SUFFIX)]
            status, body, headers = self.respond(project, message)
        raw = json.dumps(body).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json; charset=UTF-8"),
                        *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": raw})

    def start(self) -> FakeFcm:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) it from here
        config.backlog = 1024
        config.accesslog = None
        config.errorlog = None
        config.h2_max_concurrent_streams = 1000
        config.keep_alive_max_requests = 1 << 62  # FCM keeps a connection for good
        if self.tls:
            self._folder = tempfile.TemporaryDirectory(prefix="fake-fcm-")
            cert, key = self_signed(Path(self._folder.name))
            config.certfile, config.keyfile = str(cert), str(key)
            config.alpn_protocols = ["h2", "http/1.1"]
            self.ca_file = str(cert)
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            loop.set_exception_handler(_quiet_disconnects)
            self._loop = loop
            self._shutdown = asyncio.Event()
            loop.call_soon(ready.set)
            try:
                loop.run_until_complete(
                    serve(self, config, shutdown_trigger=self._shutdown.wait)  # type: ignore[arg-type]
                )
            except BaseException as exc:  # surfaced by start()
                failed.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-fcm", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failed:
            raise failed[0]
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        import ssl
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    if self.tls:
                        ctx = ssl.create_default_context(cafile=self.ca_file)
                        with ctx.wrap_socket(conn, server_hostname="127.0.0.1"):
                            return
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the fake FCM did not start on port {self.port}")

    def stop(self) -> None:
        if self._loop and self._shutdown and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._shutdown.set)
        if self._thread:
            self._thread.join(10)
        if self._folder:
            self._folder.cleanup()
            self._folder = None

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
    ap.add_argument("--no-tls", action="store_true", help="plain HTTP/1.1 instead of HTTP/2+TLS")
    args = ap.parse_args()
    fake = FakeFcm(latency_ms=args.latency_ms, quota_rate=args.quota_rate,
                   unavailable_rate=args.unavailable_rate, port=args.port,
                   tls=not args.no_tls).start()  # fmt: skip
    print(f"fake FCM at {fake.endpoint} ca_file={fake.ca_file or ''}", flush=True)
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
