"""The alert endpoint of `runbook serve`: a taken port, a storm of services on SQLite, a configuration reload.

Real parts: `runbook serve` processes, a real `prefect server start` on SQLite (the package's `prefect_api`), the
in-process app with the real `PrefectLauncher` where no `serve` process is needed.
"""

from __future__ import annotations

import copy
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from commands.alert_endpoint import create_app
from commands.serve import LocalServer
from runbook.alerts.launcher import PrefectLauncher
from runbook.config import parse_config
from sandbox.alert_bodies import alertmanager_body
from sandbox.serving import ROOT, server_env
from sandbox.world import SERVICE, Sandbox
from tests.support.prefect_api import api
from tests.support.served import ALERT_TOKEN, serving

AUTH = {"Authorization": f"Bearer {ALERT_TOKEN}"}


def alert_body(service: str, *, environment_label: str = "environment") -> dict[str, Any]:
    """An Alertmanager webhook of one firing alert for `service` in production, as the default match wants."""
    return alertmanager_body(
        service, starts_at=datetime.now(UTC), fingerprint=uuid.uuid4().hex[:16], environment_label=environment_label
    )


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_taken_alert_port_stops_serve_with_the_reason_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        # A Prefect API nobody answers: `serve` must stop before it needs one.
        env = server_env(
            str(tmp_path / "home"), PREFECT_API_URL="http://127.0.0.1:9/api", RUNBOOK_ALERT_TOKEN=ALERT_TOKEN
        )
        config = ROOT / "runbook.example.yaml"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "commands.cli", "serve", "--config", str(config), "--alerts-port", str(port)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started

    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"the alert endpoint cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "--alerts-port" in done.stderr
    assert "alert endpoint:" not in done.stdout and "Prefect API" not in done.stdout
    assert "Traceback" not in done.stderr
    print(f"serve with a taken alert port: exit {done.returncode} after {elapsed:.1f} s")


# --- 20 services alerting at once, Prefect on SQLite -------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_settings(prefect_api: LocalServer) -> Iterator[None]:
    """This process's Prefect client pointed at the package's real server, with its auth string."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api.api_url, PREFECT_API_AUTH_STRING: prefect_api.auth_string}):
        yield


def test_twenty_services_alerted_at_once_all_get_their_run_at_the_first_attempt(
    prefect_api: LocalServer, prefect_settings: None, record_property: Callable[[str, object], None]
) -> None:
    from deployments.spec import with_choices
    from flows.rollback import rollback
    from tests.support.alert_app import Served

    names = [f"storm-{index:02d}" for index in range(1, 21)]
    environment = {
        "deploy": {"type": "webhook", "url": "http://127.0.0.1:9/deploy"},
        "health": {"probes": [{"url": "http://127.0.0.1:9/health"}]},
    }
    service = {
        "repository": "acme/shop",
        "image": "127.0.0.1:5000/acme/shop",
        "environments": {"production": environment},
    }
    config = parse_config(
        {"alerts": {"token": {"env": "UNUSED"}}, "services": {name: copy.deepcopy(service) for name in names}}
    )
    deployment = with_choices(rollback.to_deployment(name="alert-storm"), config)
    deployment.apply()
    app = create_app(config, PrefectLauncher("rollback/alert-storm"), token=ALERT_TOKEN)
    answers: dict[str, tuple[int, float, dict[str, Any]]] = {}
    barrier = threading.Barrier(len(names))

    def alert(url: str, name: str) -> None:
        body = alert_body(name)
        barrier.wait()  # all at once, as Alertmanager sends one webhook per alert group
        started = time.monotonic()
        response = httpx.post(url, json=body, headers=AUTH, timeout=60)
        answers[name] = (response.status_code, time.monotonic() - started, response.json())

    with Served(app) as served:
        threads = [threading.Thread(target=alert, args=(f"{served.url}/alerts/alertmanager", n)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)

    first_attempt = sum(status == 200 for status, _, _ in answers.values())
    slowest = max(seconds for _, seconds, _ in answers.values())
    record_property("services_started_at_first_attempt", first_attempt)
    print(f"20 services alerted at once: {first_attempt}/20 answered 200 at the first attempt, slowest {slowest:.2f} s")
    assert {name: status for name, (status, _, _) in answers.items()} == dict.fromkeys(names, 200), answers
    assert slowest < 8.0  # a launch has 8 s (then a 503 the sender retries): never a 15 s wait
    query = {"deployments": {"name": {"any_": ["alert-storm"]}}, "limit": 200}
    found = api("POST", f"{prefect_api.api_url}/flow_runs/filter", prefect_api.headers, json=query).json()
    runs = {r["parameters"]["service"]: r["id"] for r in found}
    assert sorted(runs) == names
    assert {name: answer["alerts"][0]["run_id"] for name, (_, _, answer) in answers.items()} == runs


# --- reloading the configuration -----------------------------------------------------------------------------


def test_sighup_reloads_the_configuration_for_the_form_and_the_alerts(
    prefect_api: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("reload")
    with (
        Sandbox(workdir / "sandbox", run_step_seconds=0.05) as sandbox,
        serving(prefect_api, sandbox, workdir) as served,
    ):
        url = f"{served.alerts_url}/alerts/alertmanager"
        deployment = f"{prefect_api.api_url}/deployments/name/rollback/rollback"

        # `billing` is not configured yet: the alert is ignored, and serve's output says why.
        before = httpx.post(url, json=alert_body("billing"), headers=AUTH, timeout=30)
        assert before.status_code == 200
        assert before.json()["alerts"][0]["reason"] == "unknown service 'billing' (known: shop)"
        wait_until(
            lambda: "1 of 1 alert(s) started nothing: unknown service 'billing'" in served.log.read_text(),
            "the ignored alert in serve's output",
        )

        # Someone adds it to the file and reloads.
        data = sandbox.config_data()
        data["services"]["billing"] = copy.deepcopy(data["services"][SERVICE])
        data["alerts"] = {"token": {"env": "RUNBOOK_ALERT_TOKEN"}}
        sandbox.write_config(data, "served.yaml")
        served.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in served.log.read_text(), "the reload")

        schema = api("GET", deployment, prefect_api.headers).json()["parameter_openapi_schema"]
        assert schema["properties"]["service"]["enum"] == ["billing", SERVICE]
        after = httpx.post(url, json=alert_body("billing"), headers=AUTH, timeout=30)
        assert after.status_code == 200, after.text
        [outcome] = after.json()["alerts"]
        assert outcome["decision"] == "started", outcome
        run = api("GET", f"{prefect_api.api_url}/flow_runs/{outcome['run_id']}", prefect_api.headers).json()
        assert run["parameters"]["service"] == "billing"

        # An invalid file changes nothing: serve says so and goes on with what it had.
        (sandbox.workdir / "served.yaml").write_text("services: [")
        served.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed, the previous configuration stays" in served.log.read_text(), "the refusal")
        assert served.process.poll() is None
        assert httpx.get(f"{served.alerts_url}/healthz", timeout=5).status_code == 200
