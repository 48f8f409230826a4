"""The hold after an automatic rollback, decided directly: plain data in, held or not out."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import TypeAdapter

from runbook import messages
from runbook.config import RunbookConfig, parse_config
from runbook.errors import ConfigError
from runbook.hold import (
    RUN_LIMIT,
    LastRollback,
    group_id,
    hold_reason,
    is_recent,
    variable_name,
    with_end,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

DEPLOYED = datetime(2026, 8, 20, 10, 15, tzinfo=UTC)
ENDED = DEPLOYED + timedelta(minutes=2)
HOLD = timedelta(minutes=30)
SHA = "3f2a1bc" + "0" * 33
LAST = LastRollback("shop", "production", "run-1", "http://ui/runs/flow-run/run-1", SHA, DEPLOYED, ENDED, "C1", "1.2")


def test_an_alert_that_started_before_the_rollback_ended_is_held() -> None:
    reason = hold_reason(LAST, ENDED - timedelta(minutes=5), ENDED + timedelta(hours=6), HOLD)

    assert reason is not None
    assert "before the automatic rollback of shop/production to 3f2a1bc ended" in reason


def test_an_alert_that_started_within_the_hold_is_held_and_one_after_is_not() -> None:
    now = ENDED + timedelta(hours=1)

    within = hold_reason(LAST, ENDED + timedelta(minutes=29), now, HOLD)
    after = hold_reason(LAST, ENDED + timedelta(minutes=31), now, HOLD)
    no_hold = hold_reason(LAST, ENDED + timedelta(seconds=1), now, timedelta(0))

    assert within is not None and "within the 30-minute hold" in within
    assert after is None and no_hold is None


def test_no_record_or_its_own_record_holds_nothing() -> None:
    assert hold_reason(None, ENDED, ENDED, HOLD) is None
    assert hold_reason(LAST, ENDED, ENDED, HOLD, run_id="run-1") is None  # a Retry of the rollback itself
    assert hold_reason(LAST, ENDED, ENDED, HOLD, run_id="run-2") is not None


def test_a_rollback_without_an_end_holds_while_it_may_run_then_up_to_the_flow_time_limit() -> None:
    running = LastRollback("shop", "production", "run-1", None, SHA, DEPLOYED)
    soon = DEPLOYED + timedelta(minutes=1)
    crashed_long_ago = DEPLOYED + timedelta(days=1)

    assert hold_reason(running, soon, soon, HOLD) is not None
    assert hold_reason(running, DEPLOYED + RUN_LIMIT + HOLD, crashed_long_ago, HOLD) is not None
    assert hold_reason(running, DEPLOYED + RUN_LIMIT + HOLD + timedelta(seconds=1), crashed_long_ago, HOLD) is None


def test_a_rollback_is_recent_until_its_end_plus_the_hold() -> None:
    assert is_recent(LAST, ENDED + timedelta(minutes=30), HOLD)
    assert not is_recent(LAST, ENDED + timedelta(minutes=31), HOLD)
    assert not is_recent(None, ENDED, HOLD)


def test_the_record_round_trips_and_belongs_to_one_target() -> None:
    told = LAST.told("g1").told("g1").told("g2")
    value = told.to_value()

    assert LastRollback.from_value(value, "shop", "production") == replace(told, ended_at=None)  # see with_end
    assert told.held_groups == ("g1", "g2")
    # `shop-production` + `x` and `shop` + `production-x` would share a Variable name: the record says whose.
    assert LastRollback.from_value(value, "shop", "production-x") is None
    assert LastRollback.from_value({"service": "shop"}, "shop", "production") is None
    assert LastRollback.from_value("garbage", "shop", "production") is None
    many = LAST
    for index in range(80):
        many = many.told(f"g{index}")
    assert many.held_groups[-1] == "g79" and len(many.held_groups) == 50  # bounded: a Variable is small


def test_the_end_is_the_flow_runs_once_it_is_final() -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed, Crashed, Running

    stored = replace(LAST, ended_at=None)

    def run(state: State) -> FlowRun:
        return FlowRun(flow_id=uuid.uuid4(), state=state, end_time=ENDED if state.is_final() else None)

    assert with_end(stored, run(Completed())).ended_at == ENDED
    assert with_end(stored, run(Crashed())).ended_at == ENDED
    assert with_end(LAST, run(Running())).ended_at is None  # retried: running again


def test_hold_minutes_defaults_to_30_and_is_bounded() -> None:
    services = {"shop": {"repository": "acme/shop", "image": "ghcr.io/acme/shop", "environments": {"production": {
        "deploy": {"type": "webhook", "url": "https://deploy.example.com"},
        "health": {"probes": [{"url": "https://shop.example.com/health"}]},
    }}}}  # fmt: skip

    def parse(**alerts: Any) -> RunbookConfig:
        return parse_config({"alerts": {"token": {"env": "T"}, **alerts}, "services": services}, source="runbook.yaml")

    settings = parse().alerts
    assert settings is not None and settings.hold_minutes == 30
    for wrong, problem in ((-1, "greater than or equal to 0"), (1441, "less than or equal to 1440")):
        with pytest.raises(ConfigError, match=f"alerts.hold_minutes: Input should be {problem}"):
            parse(hold_minutes=wrong)


def test_variable_name_follows_prefect_rules() -> None:
    from prefect.types.names import VariableName

    name = variable_name("shop", "production")

    assert name == "last-automatic-rollback-shop-production"
    assert TypeAdapter(VariableName).validate_python(name) == name


def test_group_id_is_the_group_key_else_the_fingerprints_in_any_order() -> None:
    assert group_id('{}:{service="shop"}', ["b", "a"]) == group_id('{}:{service="shop"}', ["c"])
    assert group_id("", ["b", "a"]) == group_id("", ["a", "b"]) != group_id("", ["a"])
    assert len(group_id("", [])) == 16


def test_held_reply_and_previous_rollback_line_in_both_languages() -> None:
    fr = messages.held_message("fr", SHA, "http://ui/run-1", "HighLatency", "http://ui/deployments/deployment/d/run")
    en = messages.held_message("en", SHA, None, None, "http://ui/deployments/deployment/d/run")
    line = messages.previous_rollback_line("en", SHA, ENDED, "http://ui/run-1")

    assert fr.startswith(":warning: Toujours en alerte après le rollback vers `3f2a1bc` : une personne décide.")
    assert "Alerte : HighLatency" in fr and "require_approval" in fr and "http://ui/run-1" in fr
    assert en.startswith(":warning: Still alerting after the rollback to `3f2a1bc`: a person decides.")
    assert "Roll back by hand from the Prefect UI: http://ui/deployments/deployment/d/run" in en
    assert (
        line
        == ":information_source: An automatic rollback just happened: to `3f2a1bc` at 2026-08-20 10:17 UTC (http://ui/run-1)"
    )
