"""E-mail, Telegram, Slack and webhooks through apprise URLs.

Each channel has one apprise URL template in settings (``CRM_APPRISE_URLS``, JSON), with
``{address}`` where the customer's address goes, URL-quoted. For example::

    {"email":    "mailtos://shop:secret@smtp.example.com?from=news@example.com&to={address}",
     "telegram": "tgram://BOT_TOKEN/{address}",
     "slack":    "slack://{address}",
     "webhook":  "json://hooks.example.com/crm/{address}"}

The address is the customer's e-mail (``pii.customer_pii``) or the one they registered for the
channel (``crm.channel_addresses``). A channel without a template is not available: its
deliveries fail with that reason and nothing is sent.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import apprise

from crm.settings import Settings, get_settings

log = logging.getLogger(__name__)
APPRISE_CHANNELS = ("email", "telegram", "slack", "webhook")


@dataclass(frozen=True)
class Note:
    key: str  # the delivery id
    channel: str
    address: str
    title: str
    body: str
    link: str | None = None


class AppriseSender:
    def __init__(self, urls: dict[str, str], workers: int = 8) -> None:
        unknown = set(urls) - set(APPRISE_CHANNELS)
        if unknown:
            raise ValueError(f"no apprise channel {sorted(unknown)}; use {APPRISE_CHANNELS}")
        self.urls, self.workers = urls, workers

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> AppriseSender:
        return cls((settings or get_settings()).apprise_urls)

    def available(self, channel: str) -> bool:
        return channel in self.urls

    def _one(self, note: Note) -> tuple[str, str | None]:
        template = self.urls.get(note.channel)
        if template is None:
            return note.key, f"channel {note.channel} has no apprise URL (CRM_APPRISE_URLS)"
        target = apprise.Apprise()
        if not target.add(template.replace("{address}", quote(note.address, safe="@"))):
            return note.key, f"the apprise URL for {note.channel} is not valid"
        body = f"{note.body}\n\n{note.link}" if note.link else note.body
        try:
            result = target.notify(title=note.title, body=body)
        except Exception as exc:  # a plugin's own error: that delivery fails, not the batch
            return note.key, self._masked(f"{type(exc).__name__}: {exc}", note.address)
        if result:
            return note.key, None
        said = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR")]
        reason = "; ".join(said[-2:]) or f"{note.channel} service refused the message"
        return note.key, self._masked(reason, note.address)

    @staticmethod
    def _masked(reason: str, address: str) -> str:
        """Reasons are kept in crm.deliveries: never with the customer's address in them."""
        return reason.replace(address, "<address>").replace(quote(address, safe=""), "<address>")

    def send(self, notes: list[Note]) -> dict[str, str | None]:
        """Delivery id -> None when sent, else the reason it failed."""
        if not notes:
            return {}
        with ThreadPoolExecutor(self.workers) as pool:
            return dict(pool.map(self._one, notes))
