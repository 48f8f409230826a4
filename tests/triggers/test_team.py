"""A team's topology on one machine: Prefect on PostgreSQL, two process workers, two `runbook alerts` receivers.

The deployments are registered as a team does (a work pool `runbook` of type process, `runbook prefect-yaml`,
`prefect deploy --all`); `worker-a` is Prefect's `prefect worker start --pool runbook`, `worker-b` the
runbook's `python -m commands.worker --pool runbook` (the same ProcessWorker, draining on SIGTERM); both with
PREFECT_WORKER_QUERY_SECONDS=1 and RUNBOOK_CONFIG. Real servers throughout (tests/support/team.py).

What Prefect 3.9.1's own worker does on SIGTERM during a rollback (measured with the same topology, one
`prefect worker start`, the deploy held 6 s by the GitHub stand-in, SIGTERM to the worker's pid as Kubernetes
sends it, and again to its whole process group): it prints "Received SIGTERM. Sending SIGINT to the process
worker", exits 0 about 1.2 s later, its flow-run process is gone by then, and the run stays Running in the API
(still Running 46 s later: no Cancelled, no Crashed), though the workflow it had dispatched went on and deployed.
Hence `commands/worker.py`, whose drain the last test checks. The tests run in this file's order, on one team.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sandbox.alert_bodies import alertmanager_body
from sandbox.process import free_port
from sandbox.serving import ROOT
from sandbox.world import SERVICE
from tests.support.prefect_api import api
from tests.support.team import ALERT_TOKEN, Process, Team, team
from tests.support.waiting import wait_for

AUTH = {"Authorization": f"Bearer {ALERT_TOKEN}"}
ROLLBACK = {"service": SERVICE, "environment": "production"}
#: Each step of the GitHub stand-in's workflow run (two steps): the deploy lasts long enough to stop a worker in.
HELD_STEP_SECONDS = 1.0
#: The payload of the storm sent to both receivers, replayed to one that is stopping.
STORM: dict[str, Any] = {}
#: The run that storm started.
STORM_RUN: list[str] = []


@pytest.fixture(scope="module")
def the_team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    started = time.monotonic()
    with team(tmp_path_factory.mktemp("team")) as running:
        print(
            f"team up in {time.monotonic() - started:.1f} s: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in running.timings.items())
        )
        yield running


@pytest.fixture
def held_deploy(the_team: Team) -> Iterator[None]:
    """The rollback workflow takes 2 x HELD_STEP_SECONDS once dispatched (the GitHub stand-in's run steps)."""
    the_team.sandbox.github.run_step_seconds = HELD_STEP_SECONDS
    try:
        yield
    finally:
        the_team.sandbox.github.run_step_seconds = 0.05


def _deploying(the_team: Team, run_id: str, before: int) -> bool:
    """The run is Running and has dispatched the rollback workflow (its deploy is under way)."""
    return the_team.dispatches() > before and the_team.run(run_id)["state"]["type"] == "RUNNING"


def test_prefect_deploy_registered_a_person_s_fields_only_and_the_state_is_in_postgresql(the_team: Team) -> None:
    """`prefect deploy --all` from the generated prefect.yaml: the forms; the server keeps no SQLite on the side."""
    dep = api("GET", f"{the_team.api}/deployments/name/rollback/rollback", the_team.headers).json()
    assert dep["work_pool_name"] == "runbook"
    properties = dep["parameter_openapi_schema"]["properties"]
    # The flow's module reads no configuration at import: `prefect deploy` gets plain, described text fields
    # (`runbook serve` registers the configured names as choices: tests/triggers/test_ui.py).
    assert properties["service"]["type"] == "string" and "enum" not in properties["service"]
    assert "configured service" in properties["service"]["description"]
    # Only a person's fields: what alerts and rehearsals pass goes another way.
    assert set(properties) == {
        "service", "environment", "sha", "reason", "incident", "dry_run", "require_approval",
        "approval_timeout_seconds",
    }  # fmt: skip
    assert "last known good" in properties["sha"]["description"]
    for name in ("incident/incident", "release/release"):
        other = api("GET", f"{the_team.api}/deployments/name/{name}", the_team.headers).json()
        assert other["work_pool_name"] == "runbook" and "config_path" not in other["parameter_openapi_schema"]
    # The server's state is PostgreSQL's (read there directly), with no SQLite database beside it.
    assert _postgres_rows(the_team, "select count(*) from deployment where name = 'rollback'") == [(1,)]
    assert not (the_team.workdir / "server-home" / "prefect.db").exists()


def _postgres_rows(the_team: Team, sql: str) -> list[tuple[Any, ...]]:
    import asyncio

    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(the_team.postgres.dsn, timeout=10)
        try:
            return [tuple(row) for row in await connection.fetch(sql)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_one_storm_sent_to_both_receivers_at_once_starts_one_run(the_team: Team) -> None:
    the_team.break_again()
    before = the_team.dispatches()
    STORM.update(alertmanager_body(SERVICE, starts_at=datetime.now(UTC), fingerprint=uuid.uuid4().hex[:16]))
    barrier = threading.Barrier(len(the_team.receivers))

    def send(receiver: Process) -> httpx.Response:
        barrier.wait()  # Alertmanager's HA pair, or one behind a load balancer retrying: the same group at once
        return httpx.post(f"{the_team.alerts_url(receiver)}/alerts/alertmanager", json=STORM, headers=AUTH, timeout=30)

    with ThreadPoolExecutor(len(the_team.receivers)) as pool:
        answers = list(pool.map(send, the_team.receivers))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    run_ids = {a.json()["alerts"][0]["run_id"] for a in answers}
    assert len(run_ids) == 1, [a.json() for a in answers]
    [run_id] = run_ids
    STORM_RUN.append(run_id)
    alert_runs = api(
        "POST", f"{the_team.api}/flow_runs/filter", the_team.headers,
        json={"flow_runs": {"tags": {"all_": ["alert"]}}},
    ).json()  # fmt: skip
    assert [r["id"] for r in alert_runs] == [run_id], alert_runs
    run = the_team.wait_terminal(run_id)
    assert run["state"]["type"] == "COMPLETED", (run["state"], the_team.logs())
    assert the_team.dispatches() == before + 1
    # Two workers poll the pool: one ran it (a run created through the API: the killed-worker test below).
    assert len(the_team.ran_on(run_id)) == 1, the_team.ran_on(run_id)
    print(f"one storm, two receivers: answers {[a.json()['alerts'][0]['decision'] for a in answers]}, one run")


def _read_everything(port: int) -> bool:
    """A connection to `port` is open and its server side has read every byte sent so far (Linux /proc/net/tcp)."""
    established = [
        line.split()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "01"
    ]
    return bool(established) and all(fields[4].endswith(":00000000") for fields in established)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_to_a_receiver_answers_the_request_in_flight_then_exits_0(the_team: Team) -> None:
    receiver = the_team.receivers[-1]
    port = the_team.ports[receiver.name]
    body = httpx.Request("POST", "http://x", json=STORM).content
    first_part_sent, rest = threading.Event(), threading.Event()

    def slowly() -> Iterator[bytes]:
        yield body[:100]
        first_part_sent.set()
        rest.wait(timeout=30)
        yield body[100:]

    url = f"{the_team.alerts_url(receiver)}/alerts/alertmanager"
    headers = {**AUTH, "Content-Type": "application/json"}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, url, content=slowly(), headers=headers, timeout=30)
        first_part_sent.wait(timeout=10)
        wait_for(lambda: _read_everything(port), timeout=10, what="the receiver to read the first part")
        stopped = time.monotonic()
        receiver.process.send_signal(signal.SIGTERM)
        wait_for(lambda: _refused(port), timeout=10, what="the receiver to refuse new connections")
        refused = time.monotonic() - stopped
        assert receiver.process.poll() is None  # still answering the request in flight
        rest.set()
        response = answer.result(timeout=30)
    assert response.status_code == 200, response.text
    # The same storm as before: the launcher, asked after the SIGTERM, names that run (no new one).
    [outcome] = response.json()["alerts"]
    assert outcome["run_id"] == STORM_RUN[0], outcome
    assert receiver.process.wait(timeout=20) == 0, receiver.output()
    assert "alert endpoint stopped" in receiver.output()
    print(
        f"receiver SIGTERM: new connections refused after {refused:.2f} s, the request in flight answered"
        f" {response.status_code}, exit 0 {time.monotonic() - stopped:.1f} s after the signal"
    )


def test_sighup_reloads_a_receivers_configuration(the_team: Team) -> None:
    receiver = the_team.receivers[0]
    url = f"{the_team.alerts_url(receiver)}/alerts/alertmanager"
    resolved = alertmanager_body(SERVICE, starts_at=datetime.now(UTC), fingerprint=uuid.uuid4().hex[:16])
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"  # starts nothing
    data = yaml.safe_load(the_team.receiver_config.read_text())
    try:
        data["alerts"]["token"] = {"env": "RUNBOOK_ALERT_TOKEN_NEXT"}  # the token rotated
        the_team.receiver_config.write_text(yaml.safe_dump(data))
        receiver.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in receiver.output(), what="the reload")
        new = {"Authorization": f"Bearer {the_team.env['RUNBOOK_ALERT_TOKEN_NEXT']}"}
        assert httpx.post(url, json=resolved, headers=AUTH, timeout=10).status_code == 401
        answer = httpx.post(url, json=resolved, headers=new, timeout=10)
        assert answer.status_code == 200 and answer.json()["alerts"][0]["decision"] == "ignored", answer.text

        the_team.receiver_config.write_text("alerts: [")  # an invalid file changes nothing
        receiver.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, the previous configuration stays" in receiver.output(), what="the refusal")
        assert httpx.post(url, json=resolved, headers=new, timeout=10).status_code == 200
    finally:
        data["alerts"]["token"] = {"env": "RUNBOOK_ALERT_TOKEN"}
        the_team.receiver_config.write_text(yaml.safe_dump(data))


def test_a_worker_killed_mid_deploy_leaves_a_run_a_retry_completes_on_the_other_worker_deploying_once(
    the_team: Team, held_deploy: None
) -> None:
    victim, other = the_team.workers["worker-a"], the_team.workers["worker-b"]
    the_team.break_again()
    before = the_team.dispatches()
    os.kill(other.pid, signal.SIGSTOP)  # so that the victim is the one that takes the run
    try:
        run_id = the_team.create_run({**ROLLBACK, "reason": "machine dies"})
        wait_for(lambda: _deploying(the_team, run_id, before), timeout=30, what="the victim's run to dispatch")
    finally:
        os.kill(other.pid, signal.SIGCONT)
    assert the_team.ran_on(run_id) == {victim.name}
    killed = victim.kill_machine()  # the worker and its flow-run process (a session of its own): the machine died
    assert len(killed) >= 2, killed
    died = time.monotonic()

    # Nothing marks the run: it stays Running (Prefect 3.9.1 has no zombie detection unless an automation is set).
    assert the_team.run(run_id)["state"]["type"] == "RUNNING"
    retried = the_team.set_state(run_id, {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"})
    assert retried["status"] == "ACCEPT", retried
    run = the_team.wait_terminal(run_id)
    assert run["state"]["type"] == "COMPLETED", (run["state"], the_team.logs())
    assert other.name in the_team.ran_on(run_id)
    assert the_team.dispatches() == before + 1, "the retry dispatched the workflow again"
    assert the_team.sandbox.app.version == the_team.sandbox.commits.last_known_good
    assert run["run_count"] == 2, run["run_count"]
    print(
        f"worker SIGKILLed mid-deploy ({len(killed)} processes): run left Running; after the Retry it Completed on"
        f" {other.name} {time.monotonic() - died:.1f} s after the kill, {the_team.dispatches() - before} dispatch"
    )


def test_sigterm_to_the_runbook_worker_lets_its_rollback_finish_and_takes_no_new_run(
    the_team: Team, held_deploy: None
) -> None:
    worker = the_team.workers["worker-b"]  # the one left (the other died in the test before)
    the_team.break_again()
    before = the_team.dispatches()
    run_id = the_team.create_run({**ROLLBACK, "reason": "worker stopped"})
    wait_for(lambda: _deploying(the_team, run_id, before), timeout=30, what="the run to dispatch")
    stopped = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)  # to its pid, as Kubernetes does to a container's first process
    wait_for(lambda: "no new runs" in worker.output(), timeout=10, what="the worker to stop polling")
    later = the_team.create_run({**ROLLBACK, "reason": "created during the drain"})

    run = the_team.wait_terminal(run_id)
    finished = time.monotonic() - stopped
    assert run["state"]["type"] == "COMPLETED", (run["state"], worker.output()[-3000:])
    assert worker.process.wait(timeout=30) == 0, worker.output()[-3000:]
    exited = time.monotonic() - stopped
    assert the_team.dispatches() == before + 1
    assert [s["type"] for s in the_team.states(later)] == ["SCHEDULED"], "the draining worker took a new run"
    the_team.set_state(later, {"type": "CANCELLED", "name": "Cancelled", "message": "test: no worker left"})
    print(
        f"runbook worker SIGTERMed mid-deploy: its rollback Completed {finished:.1f} s after the signal, the worker"
        f" exited 0 after {exited:.1f} s; a run created during the drain stayed Scheduled"
    )


def _start_alerts(the_team: Team, config: Path, **env: str | None) -> tuple[int, str, float]:
    """`runbook alerts` as an operator starts it, expected to refuse: its exit code, its output, its seconds."""
    environment = {k: v for k, v in {**the_team.env, **env}.items() if v is not None}
    command = [sys.executable, "-m", "commands.cli", "alerts", "--config", str(config), "--port", str(free_port())]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_runbook_alerts_refuses_to_start_saying_what_is_missing(the_team: Team) -> None:
    """What needs the team's server (and a short token, cheap); a bad file, no token, no PREFECT_API_URL and an
    unreachable API were checked by hand (exit 2, one line each): seconds of Prefect imports this module cannot
    afford under its 60 s."""
    # Last: the `rollback` deployment is deleted here, as on a server nobody deployed to yet.
    deployment = the_team.deployment_id()
    assert api("DELETE", f"{the_team.api}/deployments/{deployment}", the_team.headers).status_code == 204
    cases: dict[str, tuple[dict[str, str | None], str]] = {
        "short token": ({"RUNBOOK_ALERT_TOKEN": "short"}, "shorter than 16 characters"),
        "wrong auth": ({"PREFECT_API_AUTH_STRING": "runbook:wrong"}, "HTTP 401"),
        "no deployment": ({}, "no deployment 'rollback/rollback'"),
    }

    def start(env: dict[str, str | None]) -> tuple[int, str, float]:
        return _start_alerts(the_team, the_team.receiver_config, **env)

    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(start, (env for env, _ in cases.values())), strict=True))
    for case, (code, output, _) in results.items():
        assert code == 2, (case, output)
        assert cases[case][1] in output, (case, output)
        assert "Traceback" not in output, (case, output)
    assert "PREFECT_API_AUTH_STRING" in results["wrong auth"][1]
    assert "prefect deploy --all" in results["no deployment"][1] and "runbook serve" in results["no deployment"][1]
    print("runbook alerts refused to start: " + ", ".join(f"{case} {r[2]:.1f} s" for case, r in results.items()))


def test_runbook_serve_on_the_team_s_server_drains_on_sigterm_and_leaves_the_rehearsals_scheduled(
    the_team: Team, held_deploy: None, tmp_path: Path
) -> None:
    """Last: `runbook serve` registers the deployments its way, over `prefect deploy`'s. On PostgreSQL, a stop
    (SIGTERM, as systemd or Kubernetes send it) waits for the rollback under way; the rehearsals stay scheduled."""
    from commands.warm import CLAIMED
    from sandbox.serving import runbook_serve

    the_team.break_again()
    data = the_team.sandbox.config_data()
    data["services"][SERVICE]["environments"]["production"]["rehearsal"] = {"cron": "0 10 * * 1"}
    config = the_team.sandbox.write_config(data, "serve.yaml")
    before = the_team.dispatches()
    with runbook_serve(the_team.server, config, tmp_path, port=free_port()) as serve:
        run_id = the_team.create_run({**ROLLBACK, "reason": "serve drain"})
        wait_for(lambda: the_team.dispatches() > before, timeout=30, what="the dispatch")  # the deploy under way
        serve.process.send_signal(signal.SIGTERM)
        code = serve.process.wait(timeout=60)
        run = the_team.run(run_id)  # ended before serve exited: no waiting here
    assert code == 0, serve.log.read_text()[-2000:]
    assert run["state"]["type"] == "COMPLETED", (run["state"], serve.log.read_text()[-2000:])
    states = api("GET", f"{the_team.api}/flow_run_states/?flow_run_id={run_id}", the_team.headers).json()
    assert any((s["message"] or "").startswith(CLAIMED) for s in states), states  # serve ran it, no worker
    assert the_team.dispatches() == before + 1
    rehearsal = api("GET", f"{the_team.api}/deployments/name/rehearsal/rehearsal-shop-production", the_team.headers)
    assert rehearsal.json()["paused"] is False and all(s["active"] for s in rehearsal.json()["schedules"])
