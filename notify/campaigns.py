"""Campaign files: YAML in ``campaigns/``, reviewed like code, validated with one clear error
per mistake.

A campaign names its audience with structured filters only (a whitelisted customer field, an
operator, a value that is always a bound parameter: never SQL), its messages per segment and
locale as Jinja templates (sandboxed; a missing field renders the template's ``default``), its
channels in order of preference, a schedule, the send-time mode, a holdout share, a cap per
customer and an end date.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2 import Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from crm.contract import KNOWN_EVENTS
from crm.errors import CrmError

LIFECYCLE = Literal["new", "active", "inactive", "lost", "buyer", "repeat_buyer"]
CHANNELS = Literal["push", "email", "telegram", "slack", "webhook"]
# customer fields an audience may filter on -> the table and column that hold them
FILTER_FIELDS: dict[str, tuple[str, str]] = {
    "recency_days": ("features", "recency_days"),
    "days_since_last_order": ("features", "days_since_last_order"),
    "frequency": ("features", "frequency"),
    "monetary": ("features", "monetary"),
    "average_order_value": ("features", "average_order_value"),
    "sessions_7d": ("features", "sessions_7d"),
    "sessions_30d": ("features", "sessions_30d"),
    "orders_30d": ("features", "orders_30d"),
    "orders_90d": ("features", "orders_90d"),
    "revenue_90d": ("features", "revenue_90d"),
    "top_category": ("features", "top_category"),
    "push_tap_rate": ("features", "push_tap_rate"),
    "churn_probability": ("churn", "churn_probability"),
    # predicted customer value (ml.customer_value); any other horizon: HORIZON_FIELD
    "p_alive": ("value", "p_alive"),
    "value_band": ("value", "value_band"),
    "orders_to_date": ("value", "orders_to_date"),
    "predicted_orders_90d": ("value", "predicted_orders_90d"),
    "predicted_value_90d": ("value", "predicted_value_90d"),
    "predicted_orders_365d": ("value", "predicted_orders_365d"),
    "predicted_value_365d": ("value", "predicted_value_365d"),
    "locale": ("customers", "locale"),
    "time_zone": ("customers", "time_zone"),
    "is_known": ("customers", "is_known"),
}
# predicted orders or value over any number of days: scoring computes every horizon the
# campaign files ask for (ml.customer_value_horizons)
HORIZON_FIELD = re.compile(r"^predicted_(orders|value)_([1-9][0-9]{0,3})d$")
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,62}$")]
_jinja = SandboxedEnvironment(autoescape=False)


class CampaignError(CrmError):
    """A campaign file is invalid; the message lists every mistake with where it is."""


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "between"]
    value: Any

    @field_validator("field")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FILTER_FIELDS and not HORIZON_FIELD.match(v):
            raise ValueError(
                f"unknown field {v!r}; choose from {sorted(FILTER_FIELDS)}, or "
                "predicted_orders_<days>d / predicted_value_<days>d for another horizon"
            )
        return v

    @model_validator(mode="after")
    def _value_fits_op(self) -> Filter:
        if self.op == "in" and not (isinstance(self.value, list) and self.value):
            raise ValueError("'in' needs a non-empty list")
        if self.op == "between" and not (isinstance(self.value, list) and len(self.value) == 2):
            raise ValueError("'between' needs [low, high]")
        if self.op not in ("in", "between") and isinstance(self.value, (list, dict)):
            raise ValueError(f"'{self.op}' needs a single value")
        return self


class Audience(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lifecycle: list[LIFECYCLE] = Field(default_factory=list)
    ai_segments: list[int] = Field(default_factory=list, description="ml.segment_catalog ids")
    churn_risk: list[Literal["low", "medium", "high"]] = Field(default_factory=list)
    filters: list[Filter] = Field(default_factory=list)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: str | None = Field(
        None, max_length=60, description="name in reports; default segment/locale"
    )
    segment: str = Field("*", description="lifecycle segment, AI segment id, or * for anyone")
    locale: str = Field("*", description="e.g. de-DE, de, or * for any")
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=2000)
    link: str | None = None
    default: dict[str, str] = Field(
        default_factory=dict, description="values for fields a customer lacks"
    )

    @field_validator("title", "body", "link")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                _jinja.parse(v)
            except TemplateSyntaxError as exc:
                raise ValueError(f"template error line {exc.lineno}: {exc.message}") from None
        return v

    @property
    def label(self) -> str:
        return self.variant or f"{self.segment}/{self.locale}"


class PropertyFilter(BaseModel):
    """A condition on the triggering event's properties; the value is always bound."""

    model_config = ConfigDict(extra="forbid")
    property: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "exists"]
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> PropertyFilter:
        if self.op == "in" and not (isinstance(self.value, list) and self.value):
            raise ValueError("'in' needs a non-empty list")
        if self.op == "exists" and self.value is not None:
            raise ValueError("'exists' takes no value")
        if self.op in ("gt", "gte", "lt", "lte") and (
            isinstance(self.value, bool) or not isinstance(self.value, (int, float))
        ):
            raise ValueError(f"'{self.op}' needs a number")
        if self.op in ("eq", "ne") and not isinstance(self.value, (str, int, float, bool)):
            raise ValueError(f"'{self.op}' needs a single value")
        return self


def _event_name(v: str) -> str:
    if v not in KNOWN_EVENTS:
        raise ValueError(f"unknown event {v!r}; choose from the contract's {sorted(KNOWN_EVENTS)}")
    return v


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["once", "recurring", "trigger"]
    at: datetime | None = Field(None, description="once: when (with a time zone)")
    cron: str | None = Field(None, description="recurring: five-field cron, UTC")
    trigger: Literal["abandoned_cart", "became_inactive"] | None = Field(
        None,
        description="trigger: a built-in rule. became_inactive is checked hourly on the built "
        "customer tables; abandoned_cart is an alias of the journey 'event: Product Added, "
        "exit_events: [Order Completed], wait_minutes: after_hours * 60'",
    )
    event: str | None = Field(
        None,
        description="trigger: the event (of the contract) a customer enters on, as it arrives",
    )
    where: list[PropertyFilter] = Field(
        default_factory=list, description="event trigger: conditions on the event's properties"
    )
    wait_minutes: int = Field(
        0, ge=0, le=60 * 24 * 30, description="event trigger: minutes from the event to the send"
    )
    exit_events: list[str] = Field(
        default_factory=list,
        description="event trigger: any of these by the customer between the event and the end "
        "of the wait cancels the message (judged by the events' own times)",
    )
    after_hours: int = Field(
        1, ge=0, le=72, description="abandoned_cart: hours from the cart add to the reminder"
    )
    max_late_hours: float = Field(
        24,
        gt=0,
        description="event trigger: a message this many hours past its due time (the journey "
        "was paused, or the event arrived that late) is not sent",
    )
    grace_hours: float | None = Field(
        None,
        gt=0,
        description="recurring: an occurrence is started only this many hours after its tick "
        "at most (a run later than that skips it and waits for the next tick); default a "
        "quarter of the time from the tick to the next one",
    )
    cooldown_days: int = Field(
        1,
        ge=0,
        description="a customer who had a delivery of this campaign (sent, held out or "
        "suppressed) joins another occurrence only after this many days",
    )

    @model_validator(mode="after")
    def _complete(self) -> Schedule:
        if self.kind == "trigger":
            if (self.trigger is None) == (self.event is None):
                raise ValueError("a 'trigger' schedule needs 'event' or a built-in 'trigger'")
        elif getattr(self, need := {"once": "at", "recurring": "cron"}[self.kind]) is None:
            raise ValueError(f"a '{self.kind}' schedule needs '{need}'")
        journey_only = self.where or self.exit_events or self.wait_minutes
        if self.event is None and (journey_only or "max_late_hours" in self.model_fields_set):
            raise ValueError(
                "'where', 'wait_minutes', 'exit_events' and 'max_late_hours' need an 'event'"
            )
        if self.trigger == "abandoned_cart" and self.event is None:
            # the built-in rule is now an alias of the journey it always meant: a cart add,
            # reminded after `after_hours` unless an order comes first
            self.event, self.exit_events = "Product Added", ["Order Completed"]
            self.wait_minutes, self.trigger = self.after_hours * 60, None
        if self.event is not None:
            for name in (self.event, *self.exit_events):
                _event_name(name)
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("'at' needs a time zone, e.g. 2026-03-01T09:00:00+01:00")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError("'cron' needs five fields (minute hour day month weekday)")
        if self.grace_hours is not None and self.kind != "recurring":
            raise ValueError("'grace_hours' is for recurring schedules only")
        return self


class SendTime(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["fixed", "best", "immediate"] = Field(
        "fixed",
        description="fixed: a local hour; best: the customer's best hour in the window; "
        "immediate: as soon as due (journeys), unless in quiet hours",
    )
    hour: int | None = Field(None, ge=0, le=23, description="fixed: local hour")
    window: tuple[int, int] = Field((9, 21), description="best: allowed local hours [from, to)")

    @model_validator(mode="after")
    def _complete(self) -> SendTime:
        if self.mode == "fixed" and self.hour is None:
            raise ValueError("a 'fixed' send time needs 'hour'")
        lo, hi = self.window
        if not (0 <= lo < hi <= 24):
            raise ValueError("'window' needs 0 <= from < to <= 24")
        return self


def _fallback(messages: list[Message]) -> None:
    if not any(m.segment == "*" and m.locale == "*" for m in messages):
        raise ValueError("messages need one fallback with segment '*' and locale '*'")


class FollowUp(BaseModel):
    """A later step of a journey: its own message, sent ``wait_minutes`` after the same
    trigger event unless an exit event came first (its own deliveries, the journey's holdout)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_]{0,19}$", description="the step's id suffix")
    wait_minutes: int = Field(
        gt=0, le=60 * 24 * 30, description="minutes from the trigger event to this step's send"
    )
    messages: list[Message] = Field(min_length=1)

    @model_validator(mode="after")
    def _fallback_message(self) -> FollowUp:
        _fallback(self.messages)
        return self


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Slug
    name: str = Field(min_length=1)
    description: str = ""
    audience: Audience
    messages: list[Message] = Field(min_length=1)
    channels: list[CHANNELS] = Field(min_length=1)
    schedule: Schedule
    send_time: SendTime = Field(default_factory=lambda: SendTime(hour=10, window=(9, 21)))
    holdout_percent: float = Field(10.0, ge=0, le=50)
    cap_per_customer: int = Field(1, ge=1, description="sends of this campaign per customer")
    end_date: date
    followups: list[FollowUp] = Field(
        default_factory=list,
        description="event trigger: later steps of the journey, each its own campaign "
        "'<id>-<name>' with its own deliveries and the journey's holdout",
    )
    _journey: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fallback_message(self) -> Campaign:
        _fallback(self.messages)
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels are listed twice")
        if self.followups:
            if self.schedule.event is None:
                raise ValueError("'followups' need an event trigger ('schedule.event')")
            names = [f.name for f in self.followups]
            if len(set(names)) != len(names):
                raise ValueError("followups: each step needs its own name")
            waits = [self.schedule.wait_minutes] + [f.wait_minutes for f in self.followups]
            if any(b <= a for a, b in pairwise(waits)):
                raise ValueError(
                    "followups: each step's wait_minutes must be longer than the step before"
                )
        return self

    @property
    def journey(self) -> str:
        """The journey a step belongs to (its own id for a campaign without steps)."""
        return self._journey or self.id

    def steps(self) -> list[Campaign]:
        """This campaign, then one campaign per follow-up step: the same trigger, exit events,
        audience, channels, caps and holdout (keyed by the journey, so a customer held out of
        the first step is held out of every step), its own wait and messages."""
        out = [self]
        for f in self.followups:
            step = self.model_copy(
                update={
                    "id": f"{self.id}-{f.name}",
                    "name": f"{self.name} ({f.name.replace('_', ' ')})",
                    "messages": f.messages,
                    "schedule": self.schedule.model_copy(update={"wait_minutes": f.wait_minutes}),
                    "followups": [],
                }
            )
            step._journey = self.id
            out.append(step)
        return out


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(file)"


def parse_campaign(data: Any, source: str = "<campaign>") -> Campaign:
    try:
        return Campaign.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise CampaignError("\n".join(problems)) from None


def load_campaign(path: Path) -> Campaign:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CampaignError(f"{path}: not valid YAML: {exc}") from None
    campaign = parse_campaign(data, str(path))
    if campaign.id != path.stem:
        raise CampaignError(f"{path}: id {campaign.id!r} must match the file name {path.stem!r}")
    return campaign


def load_campaigns(folder: Path) -> list[Campaign]:
    """Every ``*.yaml`` in ``folder``, a journey's follow-up steps after it; all errors of all
    files at once."""
    campaigns: list[Campaign] = []
    errors: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            campaigns += load_campaign(path).steps()
        except CampaignError as exc:
            errors.append(str(exc))
    seen: set[str] = set()
    for c in campaigns:
        if c.id in seen:
            errors.append(f"{folder}: campaign id {c.id!r} is used twice (a file and a step?)")
        seen.add(c.id)
    if errors:
        raise CampaignError("\n".join(errors))
    return campaigns


def value_horizons(campaigns: list[Campaign]) -> set[int]:
    """The horizons (days) of predicted orders or value the campaigns' audiences filter on."""
    return {int(m.group(2)) for c in campaigns for f in c.audience.filters
            if (m := HORIZON_FIELD.match(f.field))}  # fmt: skip


def find_campaign(folder: Path, campaign_id: str) -> Campaign:
    """One campaign of ``folder`` by id: a file's, or a journey step's (``<id>-<step>``)."""
    for c in load_campaigns(folder):
        if c.id == campaign_id:
            return c
    raise CampaignError(f"no campaign {campaign_id!r} in {folder}")


def pick_message(campaign: Campaign, segments: set[str], locale: str | None) -> Message:
    """The most specific message: segment and locale, then segment, then locale, then any."""
    lang = (locale or "").split("-")[0]

    def score(m: Message) -> tuple[int, int]:
        seg = 2 if m.segment in segments else (0 if m.segment == "*" else -99)
        loc = 2 if m.locale == locale else 1 if m.locale == lang else 0 if m.locale == "*" else -99
        return (seg, loc)

    return max(campaign.messages, key=score)


@lru_cache(maxsize=512)
def _template(text: str) -> Template:
    return _jinja.from_string(text)


def render(message: Message, fields: dict[str, Any]) -> dict[str, str]:
    """Title, body and link rendered for one customer; a field the customer lacks (None or
    missing) takes the message's ``default`` for it, else an empty string."""
    values = {**message.default, **{k: v for k, v in fields.items() if v is not None}}
    out = {}
    for part in ("title", "body", "link"):
        text = getattr(message, part)
        if text is not None:
            out[part] = _template(text).render(**values).strip()
    return out
