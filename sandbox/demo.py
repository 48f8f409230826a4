"""The sandbox demo: a real rollback, end to end, of a broken local service, printed step by step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from runbook.config import using_config
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox


def _say(text: str = "") -> None:
    print(text, flush=True)


def _slack_echo(line: str) -> None:
    print(f"  slack | {line}", flush=True)


def say_thread(messages: list[Any]) -> None:
    """The Slack thread as it reads now: the root (after its updates), then each reply."""
    _say("== Slack thread in #incidents-prod ==")
    for message in messages:
        prefix = "  " if message.thread_ts is None else "    └ "
        broadcast = " (also sent to the channel)" if message.reply_broadcast else ""
        if message.updates:
            broadcast = f" (as it reads now, after {len(message.updates)} updates)"
        for index, line in enumerate(message.current_text.splitlines()):
            _say((prefix if index == 0 else " " * len(prefix)) + line + (broadcast if index == 0 else ""))


def run_demo(workdir: Path, prefect_home: Path) -> bool:
    """Run the demo; True when the service recovered."""
    _say("== rollback-runbook sandbox demo ==")
    _say("Starting the sandbox: Distribution registry, GitHub and Slack stand-ins, the 'shop' app ...")
    with Sandbox(workdir, echo=_slack_echo) as sandbox:
        broken, good = sandbox.commits.broken, sandbox.commits.last_known_good
        health = httpx.get(f"{sandbox.app.url}/health", timeout=5)
        _say(f"  registry  {sandbox.registry.base_url} (real docker-registry), images tagged by commit SHA")
        _say(f"  github    {sandbox.github.base_url} (stand-in), repository acme/shop, 4 commits on main")
        _say(f"  slack     {sandbox.slack.base_url} (stand-in), channel #incidents-prod")
        _say(f"  app       {sandbox.app.url} runs {broken[:7]} 'New payment provider': /health -> {health.status_code}")
        _say(f"  config    {sandbox.config_path}")
        _say()
        from commands.ready_keeper import ReadyKeeper
        from flows.rollback import RollbackSummary, rollback
        from runbook.config import load_config

        _say("Preparing the ready rollback target, as `runbook serve` keeps it for each service ahead of an incident")
        _say("(the full resolution's checks made now: an alert then only checks the running version and deploys) ...")
        with using_config(sandbox.config_path):
            ReadyKeeper(say=lambda line: _say(f"  {line}")).refresh(load_config(), SERVICE, ENVIRONMENT)
        _say()
        _say(f"Running the Prefect flow `rollback` for {SERVICE}/{ENVIRONMENT} (no SHA given: last known good) ...")
        _say()

        started = time.perf_counter()
        with using_config(sandbox.config_path):  # the flow reads $RUNBOOK_CONFIG, as under `runbook serve`
            state = rollback(
                service=SERVICE,
                environment=ENVIRONMENT,
                reason="5xx spike after the deploy of 'New payment provider'",
                incident="INC-42",
                return_state=True,
            )
        wall = time.perf_counter() - started
        flow_run_id = state.state_details.flow_run_id
        summary = state.result(raise_on_failure=False)
        health = httpx.get(f"{sandbox.app.url}/health", timeout=5)
        thread = sandbox.slack.messages

        _say()
        say_thread(thread)
        _say()
        _say("== Result ==")
        _say(f"  flow run state    {state.type.value} ({state.name})")
        if isinstance(summary, RollbackSummary):
            _say(f"  rolled back from  {summary.from_sha}  (broken)")
            _say(f"  rolled back to    {summary.to_sha}  (last known good: {good == summary.to_sha})")
            _say(f"  image digest      {summary.digest}")
            _say(f"  time to recovery  {summary.time_to_recovery:.2f} s (flow wall time {wall:.2f} s)")
            path = next((line for line in summary.postmortem.splitlines() if "path: " in line), "")
            _say(f"  path taken        {path.split('path: ', 1)[-1] or '?'}")
        else:
            _say(f"  failure           {summary}")
        _say(f"  app now           {health.json().get('version', '?')[:7]}: /health -> {health.status_code}")
        _say(f"  GitHub dispatches {len(sandbox.github.dispatches())}")
        _say()
        if isinstance(summary, RollbackSummary):
            _say("== Post-mortem (artifact 'rollback-shop-production') ==")
            for line in summary.postmortem.splitlines():
                _say(f"  | {line}")
            _say()
        _say("== Where to see the run and its post-mortem ==")
        _say(f"  kept in {prefect_home / 'prefect.db'} (Prefect's database); from a shell, read from it:")
        _say(f"  PREFECT_HOME={prefect_home} .venv/bin/runbook status --config {sandbox.config_path}")
        _say(f"  PREFECT_HOME={prefect_home} .venv/bin/runbook history --config {sandbox.config_path}")
        _say("  in the Prefect UI:")
        _say(f"  PREFECT_HOME={prefect_home} .venv/bin/prefect server start")
        _say(f"  then open http://127.0.0.1:4200/runs/flow-run/{flow_run_id}")
        _say("  Artifacts tab: 'rollback-shop-production' (post-mortem),")
        _say("                 'rollback-shop-production-timings' (step timings)")
        return bool(state.is_completed() and health.status_code == 200)


def run_incident_demo(workdir: Path, prefect_home: Path) -> bool:
    """The demo of one incident of three services (`shop`, `api`, `web` after `api`); True when all recovered."""
    from flows.incident import IncidentSummary, incident
    from sandbox.many_services import ManyServicesSandbox

    _say("== rollback-runbook sandbox demo: one incident, three services ==")
    _say("Starting the sandbox: registry, GitHub and Slack stand-ins, and three broken apps (shop, api, web) ...")
    with ManyServicesSandbox(workdir, services=["api", "web"], echo=_slack_echo) as world:
        data = world.config_data()
        data["services"]["web"]["roll_back_after"] = ["api"]  # the front end goes back once the API is healthy
        config = world.write_config(data, "incident.yaml")
        for name in (SERVICE, "api", "web"):
            app = world.service(name).app
            _say(
                f"  {name:<5} {app.url} runs {app.version[:7]}: /health -> {httpx.get(app.url + '/health').status_code}"
            )
        _say(f"  config {config} (web: roll_back_after [api])")
        _say()
        _say(f"Running the Prefect flow `incident` for shop, api and web in {ENVIRONMENT} ...")
        _say()
        started = time.perf_counter()
        with using_config(config):
            state = incident(
                services=[{"service": name, "environment": ENVIRONMENT} for name in (SERVICE, "api", "web")],
                reason="5xx on every service after the 14:02 deploy train",
                incident="INC-43",
                return_state=True,
            )
        wall = time.perf_counter() - started
        summary = state.result(raise_on_failure=False)
        _say()
        say_thread(world.slack.messages)
        _say()
        _say("== Result ==")
        _say(f"  flow run state    {state.type.value} ({state.name}), wall time {wall:.2f} s")
        healthy = all(world.healthy(name) for name in (SERVICE, "api", "web"))
        if isinstance(summary, IncidentSummary):
            _say(f"  services          {summary.services}")
            ttr = summary.time_to_recovery
            _say(f"  time to recovery  {f'{ttr:.2f} s (the last service healthy)' if ttr else 'not recovered'}")
            _say()
            _say("== Incident post-mortem (artifact 'incident-shop-production-api-production-web-production') ==")
            for line in summary.postmortem.splitlines():
                _say(f"  | {line}")
        else:
            _say(f"  failure           {summary}")
        _say()
        _say("== Where to see the run, its three rollback subflows and the post-mortems ==")
        _say(f"  PREFECT_HOME={prefect_home} .venv/bin/runbook history --config {config}")
        _say(f"  PREFECT_HOME={prefect_home} .venv/bin/prefect server start")
        _say(f"  then open http://127.0.0.1:4200/runs/flow-run/{state.state_details.flow_run_id}")
        return bool(state.is_completed() and healthy)
