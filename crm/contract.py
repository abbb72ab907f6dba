"""The event contract: Segment Spec calls (track, page, screen, identify, alias, group), one per
line.

A shop points its existing Segment / RudderStack / PostHog tracking at shop-crm; what those
trackers emit is what we accept. ``docs/event-contract.md`` explains each field and
``docs/event.schema.json`` is generated from :class:`Event` (``crm contract schema``).

The pydantic model is the contract. The loader runs it on every line; the fast checks in
``crm.ingest.validate`` only guard what PostgreSQL itself would refuse (NUL, depth, size).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

EVENT_TYPES = ("track", "page", "screen", "identify", "alias", "group")

# E-commerce v2 spec names plus the push, e-mail and consent events shop-crm reads.
ECOMMERCE_EVENTS = (
    "Products Searched",
    "Product List Viewed",
    "Product Clicked",
    "Product Viewed",
    "Product Added",
    "Product Removed",
    "Cart Viewed",
    "Checkout Started",
    "Checkout Step Completed",
    "Payment Info Entered",
    "Order Completed",
    "Order Refunded",
    "Order Cancelled",
    "Coupon Applied",
    "Product Added to Wishlist",
)
ENGAGEMENT_EVENTS = (
    "Push Notification Received",
    "Push Notification Tapped",
    "Push Notification Bounced",
    "Email Delivered",
    "Email Opened",
    "Email Link Clicked",
    "Email Unsubscribed",
    "Consent Updated",
    "Signed Up",
    "Signed In",
    "Signed Out",
    "Application Opened",
    "Application Installed",
)
KNOWN_EVENTS = ECOMMERCE_EVENTS + ENGAGEMENT_EVENTS
CONSENT_CHANNELS = ("push", "email", "sms", "telegram", "slack", "webhook")

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC)


UtcTimestamp = Annotated[AwareDatetime, AfterValidator(_utc)]


class Device(BaseModel):
    """``context.device``: one physical device; ``token`` is its push token (FCM / APNs)."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: Literal["ios", "android", "web"] | None = Field(
        default=None, description="Platform the push token belongs to."
    )
    token: str | None = Field(default=None, description="FCM registration token.")


class Context(BaseModel):
    """``context``: where the call came from. Unknown keys are kept as they are."""

    model_config = ConfigDict(extra="allow")
    device: Device | None = None
    timezone: str | None = Field(default=None, description="IANA zone, e.g. Europe/Berlin.")
    locale: str | None = Field(default=None, description="BCP 47, e.g. de-DE.")
    page: dict[str, Any] | None = None
    os: dict[str, Any] | None = None
    app: dict[str, Any] | None = None
    ip: str | None = None
    userAgent: str | None = None


class OrderProduct(BaseModel):
    """One line of ``Order Completed.products[]``."""

    model_config = ConfigDict(extra="allow")
    product_id: Id
    price: float = Field(ge=0)
    quantity: int = Field(default=1, ge=1)


class OrderProperties(BaseModel):
    """``Order Completed`` properties: the fields the order marts rely on."""

    model_config = ConfigDict(extra="allow")
    order_id: Id
    products: list[OrderProduct] = Field(min_length=1)
    revenue: float | None = Field(default=None, ge=0)
    total: float | None = Field(default=None, ge=0)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "USD"


class ConsentProperties(BaseModel):
    """``Consent Updated``: the customer granted or withdrew consent for one channel."""

    model_config = ConfigDict(extra="allow")
    channel: Literal["push", "email", "sms", "telegram", "slack", "webhook"]
    granted: bool
    source: str | None = Field(default=None, description="e.g. app_settings, signup_form.")


class Event(BaseModel):
    """One Segment Spec call. Field names are Segment's (camelCase on the wire)."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    message_id: Id = Field(alias="messageId", description="Unique per call; the dedup key.")
    type: Literal["track", "page", "screen", "identify", "alias", "group"]
    event: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, description="Track event name (required for track)."
    )
    name: str | None = Field(default=None, description="Page or screen name.")
    user_id: Id | None = Field(default=None, alias="userId")
    anonymous_id: Id | None = Field(default=None, alias="anonymousId")
    previous_id: Id | None = Field(
        default=None, alias="previousId", description="alias: the id being merged into userId."
    )
    group_id: Id | None = Field(
        default=None, alias="groupId", description="group: the account or company the user joins."
    )
    timestamp: UtcTimestamp = Field(description="When it happened, ISO 8601 with an offset.")
    sent_at: UtcTimestamp | None = Field(default=None, alias="sentAt")
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: Context = Field(default_factory=Context)

    @model_validator(mode="after")
    def _by_type(self) -> Event:
        if self.user_id is None and self.anonymous_id is None:
            raise ValueError("needs userId or anonymousId")
        if self.type == "track" and self.event is None:
            raise ValueError("a track call needs an event name")
        if self.type == "alias" and (self.previous_id is None or self.user_id is None):
            raise ValueError("an alias call needs previousId and userId")
        if self.type == "group" and self.group_id is None:
            raise ValueError("a group call needs groupId")
        if self.type == "track" and self.event == "Order Completed":
            OrderProperties.model_validate(self.properties)
        elif self.type == "track" and self.event == "Consent Updated":
            ConsentProperties.model_validate(self.properties)
        return self


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one event line (by alias, as on the wire)."""
    schema = Event.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "shop-crm event (Segment Spec call)"
    schema.setdefault("$defs", {})
    for model in (OrderProperties, ConsentProperties):
        sub = model.model_json_schema(ref_template="#/$defs/{model}")
        schema["$defs"].update(sub.pop("$defs", {}))
        schema["$defs"][model.__name__] = sub
    return schema
