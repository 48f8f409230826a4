"""`runbook alerts`: the alert endpoint as its own process, for a team whose rollbacks run on workers.

No runner and no state inside: each alert that calls for a rollback becomes a SCHEDULED run of the `rollback`
deployment (`PrefectLauncher()` without `hand_to`), picked up by whichever process serves that deployment: a
worker of its work pool (`prefect worker start --pool runbook`), or `runbook serve`, whose watcher claims due
SCHEDULED rollback runs. Several replicas behind one address are safe: the same alert group (group key, each
alert's fingerprint and start) carries the same idempotency key, so a storm sent to two replicas at once lands on
one run (tests/triggers/test_team.py).

At start, before answering anything, it checks what it needs and stops (exit 2) with the reason otherwise: the
configuration (an `alerts` section, a readable token of at least 16 characters), the alert port, and the Prefect
API (`PREFECT_API_URL`, its auth string, the `rollback/rollback` and `incident/incident` deployments). An alert
group naming several services starts one run of `incident` (flows/incident.py), as in `runbook serve`. SIGHUP
re-reads the configuration (services, environments, labels, token, body limit) for the next requests; an invalid
file changes nothing. SIGTERM or Ctrl-C: no new connection is accepted, the requests in flight are answered, then
it exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from commands.serve import KEEP_ALIVE, bind_alert_port
from runbook.alerts.decision import alert_settings
from runbook.config import CONFIG_ENV_VAR, check_alert_token, load_config
from runbook.errors import RunbookError

#: The deployment the alerts start runs of (`prefect deploy --all` from `runbook prefect-yaml`, or `runbook serve`).
DEPLOYMENT = "rollback/rollback"
#: The one a group naming several services starts instead (flows/incident.py), as in `runbook serve`.
INCIDENT_DEPLOYMENT = "incident/incident"
#: How long the start-up check of the Prefect API may take.
API_CHECK_SECONDS = 20.0
_NO_DEPLOYMENT_HINT = (
    "register the deployments first: `runbook prefect-yaml --config runbook.yaml > prefect.yaml` then `prefect "
    "deploy --all` (workers), or start `runbook serve` (it registers them), against this PREFECT_API_URL"
)


def serve_alerts(config_path: Path, *, host: str = "127.0.0.1", port: int = 8787) -> None:
    """Answer alert webhooks on host:port until SIGTERM/Ctrl-C (then exit normally); SIGHUP reloads the config.

    RunbookError, before anything is served, for a bad configuration or token, a taken port, or a Prefect API
    that cannot be reached or lacks the `rollback` or `incident` deployment.
    """
    config_path = config_path.resolve()
    os.environ[CONFIG_ENV_VAR] = str(config_path)
    config = load_config(config_path)  # a bad file stops here, with its message
    settings = alert_settings(config)  # no `alerts` section: said now
    if settings.token.env is not None:  # read from the environment: checked before any network
        check_alert_token(settings.token.reveal().get_secret_value(), settings.token.describe())
    try:
        sock = bind_alert_port(host, port)  # a taken port: said before the API is asked anything
    except RunbookError as exc:  # serve's words name its option: say this command's
        raise RunbookError(exc.message, hint=exc.hint.replace("--alerts-port", "--port")) from None
    try:
        _stop_quietly()
        api = check_prefect_api(DEPLOYMENT, INCIDENT_DEPLOYMENT)
        import uvicorn

        from commands.alert_endpoint import create_app
        from runbook.alerts.launcher import IncidentLauncher, PrefectLauncher
        from runbook.prefect_calls import hear_busy_soon

        hear_busy_soon()
        # No `hand_to`: each run is created SCHEDULED, for a worker (or `runbook serve`) to pick up.
        launcher, incidents = PrefectLauncher(DEPLOYMENT), IncidentLauncher(INCIDENT_DEPLOYMENT)
        app = create_app(config, launcher, incidents=incidents)  # a token in a Prefect Secret block is read here
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE)
        )
        _on_sighup(config_path, app)
        print(f"alert endpoint: http://{host}:{port}/alerts/alertmanager (and /alerts/grafana)")
        print(f"Prefect API: {api}; runs of {DEPLOYMENT} are created SCHEDULED for its workers")
        print(f"reload the configuration: kill -HUP {os.getpid()}; stop: kill -TERM {os.getpid()}", flush=True)
        server.run(sockets=[sock])  # SIGTERM/SIGINT: stops accepting, answers what is in flight, returns
    except _Stopped:
        pass
    finally:
        sock.close()
    print("alert endpoint stopped", flush=True)


def check_prefect_api(*deployments: str) -> str:
    """The Prefect API URL, once it answered with each of `deployments`; RunbookError saying what to do otherwise."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:  # Prefect's client would start a temporary server of its own: never what a receiver wants
        raise RunbookError(
            "PREFECT_API_URL is not set",
            hint="set it to the team's Prefect server (http(s)://HOST/api) and PREFECT_API_AUTH_STRING to its auth "
            "string; `runbook alerts` starts no Prefect server",
        )
    try:
        asyncio.run(_read_deployments(deployments, API_CHECK_SECONDS))
    except RunbookError:
        raise
    except TimeoutError:
        raise RunbookError(
            f"the Prefect API at {api} did not answer within {API_CHECK_SECONDS:g} s",
            hint="check PREFECT_API_URL and that the server runs",
        ) from None
    except Exception as exc:  # httpx's and Prefect's errors: the API cannot be used from here
        raise RunbookError(f"the Prefect API at {api} cannot be used: {_describe(exc)}", hint=_api_hint(exc)) from None
    return str(api)


async def _read_deployments(deployments: tuple[str, ...], timeout: float) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    # One attempt: an unreachable API is said now, not after Prefect's client has retried for a minute.
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        async with asyncio.timeout(timeout), get_client() as client:
            for deployment in deployments:
                try:
                    await client.read_deployment_by_name(deployment)
                except ObjectNotFound:
                    raise RunbookError(
                        f"the Prefect API has no deployment {deployment!r}", hint=_NO_DEPLOYMENT_HINT
                    ) from None


def _describe(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None) is not None:
        return f"HTTP {response.status_code}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _api_hint(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) == 401:
        return "the server wants an auth string: set PREFECT_API_AUTH_STRING to the server's"
    return "check PREFECT_API_URL and that the server runs (`prefect server start`, or `runbook serve`)"


def _on_sighup(config_path: Path, app: Any) -> None:
    """SIGHUP: read the configuration again, in a thread, and answer the next requests with it."""
    lock = threading.Lock()

    def reload() -> None:
        from commands.alert_endpoint import reconfigure

        with lock:
            try:
                config = load_config(config_path)
                reconfigure(app, config)  # no `alerts` section or a bad token: a ConfigError, nothing changed
            except Exception as exc:  # whatever failed, the endpoint goes on with what it had
                print(f"reload failed, the previous configuration stays: {exc}", file=sys.stderr, flush=True)
                return
            print(f"configuration reloaded: services {', '.join(sorted(config.services))}", flush=True)

    def on_sighup(signum: int, frame: object) -> None:
        threading.Thread(target=reload, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_sighup)


class _Stopped(BaseException):
    """SIGTERM or SIGINT before the endpoint served, or re-raised by uvicorn once it stopped serving.

    A BaseException, as KeyboardInterrupt is: no `except Exception` on the way (the start-up checks) takes it for
    an error."""


def _stop_quietly() -> None:
    """SIGTERM/SIGINT end the command normally (exit 0).

    uvicorn handles both while it serves (a graceful stop) and, once stopped, raises the signal again for the
    handler found before it: this one, so the process exits 0 rather than dying of the signal (143).
    """

    def stopped(signum: int, frame: object) -> None:
        raise _Stopped

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopped)
