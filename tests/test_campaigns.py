"""Campaign files: the examples are valid, every kind of mistake is reported with where it is;
audiences come from structured filters with bound values; holdout is deterministic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from crm.settings import PROJECT_ROOT
from notify.audience import in_holdout, select_audience, snapshot_audience
from notify.campaigns import (
    CampaignError,
    load_campaign,
    load_campaigns,
    parse_campaign,
    pick_message,
    render,
)
from tests.conftest import member_url, scalar

EXAMPLES = PROJECT_ROOT / "campaigns"


def example(name: str = "winback_inactive") -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def test_the_playbook_examples_are_valid() -> None:
    ids = {c.id for c in load_campaigns(EXAMPLES)}
    assert ids == {"welcome_new_users", "active_recommendations", "buyer_offers",
                   "winback_inactive", "cart_reminder", "cart_reminder-offer",
                   "browse_abandonment", "post_purchase", "winback_first_order"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["audience"].update(filters=[{"field": "email", "op": "eq", "value": 1}]),
         "audience.filters.0.field: Value error, unknown field 'email'"),
        (lambda d: d["audience"].update(filters=[{"field": "frequency", "op": "in", "value": 3}]),
         "'in' needs a non-empty list"),
        (lambda d: d.update(messages=[{**d["messages"][1]}]),
         "one fallback with segment '*' and locale '*'"),
        (lambda d: d["messages"][0].update(body="Hi {{ name"), "messages.0.body"),
        (lambda d: d.update(send_time={"mode": "fixed"}), "a 'fixed' send time needs 'hour'"),
        (lambda d: d.update(schedule={"kind": "once", "at": "2026-03-01T09:00:00"}),
         "'at' needs a time zone"),
        (lambda d: d.update(schedule={"kind": "recurring"}), "needs 'cron'"),
        (lambda d: d.update(channels=["push", "fax"]), "channels.1"),
        (lambda d: d.update(holdout_percent=80), "holdout_percent"),
        (lambda d: d.update(colour="red"), "colour: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_each_mistake_is_reported_with_its_place(change, expected: str) -> None:
    data = example()
    change(data)
    with pytest.raises(CampaignError) as err:
        parse_campaign(data, "campaigns/winback_inactive.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("campaigns/winback_inactive.yaml: ")


def test_all_files_errors_at_once_and_ids_match_file_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("id: a\nname: [unclosed")
    bad = example()
    bad["id"] = "something_else"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad, allow_unicode=True))
    with pytest.raises(CampaignError) as err:
        load_campaigns(tmp_path)
    text = str(err.value)
    assert "a.yaml: not valid YAML" in text
    assert "b.yaml: id 'something_else' must match the file name 'b'" in text


def test_most_specific_message_and_template_fallbacks() -> None:
    c = load_campaign(EXAMPLES / "buyer_offers.yaml")
    assert pick_message(c, {"repeat_buyer"}, "de-DE").title.startswith("A thank-you")
    assert pick_message(c, {"buyer"}, "de-DE").title.startswith("Back in stock")
    w = load_campaign(EXAMPLES / "winback_inactive.yaml")
    fr = pick_message(w, {"inactive"}, "fr-FR")
    assert fr.title == "Vous nous manquez"
    assert "toute la boutique" in render(fr, {"top_category": None})["body"]
    assert "garden" in render(fr, {"top_category": "garden"})["body"]


def test_holdout_is_deterministic_and_close_to_its_share() -> None:
    ids = [f"u{i}" for i in range(20_000)]
    held = [in_holdout("winback_inactive", c, 20) for c in ids]
    assert held == [in_holdout("winback_inactive", c, 20) for c in ids]
    assert 0.19 < sum(held) / len(ids) < 0.21
    # another campaign holds out other people
    other = [in_holdout("buyer_offers", c, 20) for c in ids]
    assert sum(a and b for a, b in zip(held, other, strict=True)) < 0.06 * len(ids)


def test_audience_filters_are_bound_values_not_sql(ml_shop: tuple[str, Path]) -> None:
    from crm import db

    db.upgrade(ml_shop[0])
    data = example("active_recommendations")
    with psycopg.connect(ml_shop[0]) as conn:
        base = select_audience(conn, parse_campaign(data))
        assert len(base) > 50
        assert set(base.lifecycle_segment) <= {"active", "buyer", "repeat_buyer"}
        evil = dict(data)
        evil["audience"] = {"filters": [
            {"field": "top_category", "op": "eq", "value": "x'; drop table marts.dim_customers; --"}
        ]}  # fmt: skip
        assert len(select_audience(conn, parse_campaign(evil))) == 0
        assert scalar(conn, "select count(*) from marts.dim_customers") > 0
        # churn bands come from ml.churn_scores
        conn.execute("delete from ml.churn_scores")
        conn.execute(
            "insert into ml.churn_scores select customer_id, 0.9, 'high', 'test', now()"
            " from marts.dim_customers where lifecycle_segment = 'inactive' limit 7"
        )
        winback = select_audience(conn, load_campaign(EXAMPLES / "winback_inactive.yaml"))
        assert len(winback) == 7
        conn.rollback()


def test_audience_snapshot_is_taken_once(ml_shop: tuple[str, Path]) -> None:
    from crm import db

    db.upgrade(ml_shop[0])
    campaign = load_campaign(EXAMPLES / "welcome_new_users.yaml")
    hour = datetime(2026, 2, 27, 6, tzinfo=UTC)
    with psycopg.connect(ml_shop[0]) as conn:
        with conn.transaction():
            first = snapshot_audience(conn, campaign, hour)
        assert first[0] > 0 and 0 < first[1] < first[0]
        # new customers since would not join: the recorded snapshot stands
        with conn.transaction():
            assert snapshot_audience(conn, campaign, hour) == first
        # the next occurrence is its own snapshot, with the same people held out
        with conn.transaction():
            only = ["nobody", *(row[0] for row in conn.execute(
                "select customer_id from crm.campaign_audiences where campaign_id = %s"
                " order by customer_id limit 20", (campaign.id,)))]  # fmt: skip
            nxt = snapshot_audience(conn, campaign, hour + timedelta(hours=1), only)
            same = scalar(
                conn,
                "select count(*) from crm.campaign_audiences a join crm.campaign_audiences b"
                " using (campaign_id, customer_id) where a.occurrence = %s and b.occurrence = %s"
                " and a.held_out = b.held_out",
                (hour, hour + timedelta(hours=1)),
            )
        assert nxt[0] == 20 and same == 20
        conn.execute("delete from crm.campaign_audiences where campaign_id = %s", (campaign.id,))
        conn.commit()


def test_an_audience_of_valuable_customers_at_risk_of_leaving(shop: str) -> None:
    """Filters on predicted value and P(alive), from the value model's scores; a horizon no
    scoring run wrote is a clear error until scoring writes it."""
    from ml import publish
    from ml.data import load_snapshot
    from ml.value import CustomerValue

    snap = load_snapshot(shop)
    model = CustomerValue().fit(snap, snap.end - timedelta(days=28))
    data = example("active_recommendations")
    data["audience"] = {"filters": [
        {"field": "predicted_value_365d", "op": "gte", "value": 200},
        {"field": "p_alive", "op": "lt", "value": 0.9},
        {"field": "predicted_orders_180d", "op": "gt", "value": 0.5},
    ]}  # fmt: skip
    campaign = parse_campaign(data)

    def publish_scores(horizons: tuple[int, ...]) -> tuple:
        values, long = model.score(snap, horizons)
        frames = {"customer_value": values, "customer_value_horizons": long}
        versions = {t: ("value", "crm_value", "1") for t in frames}
        publish.replace_tables(frames, versions, datetime.now(UTC), shop)
        return values.set_index("customer_id"), long

    publish_scores(())
    with psycopg.connect(shop) as conn, pytest.raises(CampaignError, match=r"\[180\] days"):
        select_audience(conn, campaign)
    values, long = publish_scores((180,))
    h180 = long[long.horizon_days == 180].set_index("customer_id").predicted_orders
    expected = values[(values.predicted_value_365d >= 200) & (values.p_alive < 0.9)
                      & (h180.reindex(values.index) > 0.5)].index  # fmt: skip
    with psycopg.connect(member_url(shop, "crm_sender")) as conn:  # as the sender's role
        got = select_audience(conn, campaign)
    assert 10 < len(got) < len(values) / 2
    assert sorted(got.customer_id) == sorted(expected)
    assert (got.predicted_value_365d >= 200).all() and (got.p_alive < 0.9).all()
    with pytest.raises(CampaignError, match="predicted_orders_<days>d"):
        parse_campaign({**data, "audience": {"filters": [
            {"field": "predicted_spend_365d", "op": "gt", "value": 1}]}})  # fmt: skip
