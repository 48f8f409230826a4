"""`runbook serve`: every deployment and the alert endpoint, served from this machine.

The Prefect API is the one in the usual settings (`PREFECT_API_URL`, and `PREFECT_API_AUTH_STRING` when that
server wants one); with none, a local Prefect server (SQLite, in PREFECT_HOME) is started and stopped with this
command, UI included. Whoever can create a flow run can start a rollback, so that server wants an auth string
(HTTP Basic, Prefect's `PREFECT_SERVER_API_AUTH_STRING`): the one in the environment, else the one kept in
`$PREFECT_HOME/runbook-api-auth-string` (made on first start, mode 0600; `.runbook/prefect/` by default). This
process, its runner's flow-run processes and the alert endpoint use it; the UI asks for it at login.

The runner polls every second (Prefect's default is 10 s) so a run created from the UI, an alert or the API
starts within about a second.

The alert port is bound first, before any server starts or anything is printed: a taken port ends the command
(exit 2, naming the port). The deployments are registered before the endpoint answers. SIGHUP re-reads the
configuration file, registers the deployments from it (new services and environments in the run form and
accepted by the API, new rehearsals served), then answers alerts with it; an invalid file changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from commands.warm import WarmRuns
from runbook.config import CONFIG_ENV_VAR, RunbookConfig, load_config
from runbook.errors import RunbookError
from runbook.http import without_userinfo
from runbook.prefect_calls import BUSY_RETRIES, hear_busy_soon
from runbook.processes import stop_process

POLL_SETTINGS = {
    # Whole seconds; 1 is the minimum. Created run -> Running: 7.2 s median at 10, 1.5 s at 1 (PREFECT-NOTES).
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    # Busy answers (SQLite's lock) retried within 0.1-2 s, more often: runbook.prefect_calls.hear_busy_soon.
    "PREFECT_CLIENT_MAX_RETRIES": str(BUSY_RETRIES),
}
#: Seconds an idle connection to the alert endpoint is kept open (uvicorn's `timeout_keep_alive`).
KEEP_ALIVE = 5
#: Seconds a stopping `serve` waits for the rollbacks in progress to finish.
DRAIN_SECONDS = 600
#: Connections the alert port queues while the endpoint is starting (bound before the runner starts).
ALERT_BACKLOG = 128

#: PREFECT_HOME of `runbook serve` when it starts its own server (unless PREFECT_HOME is set).
SERVE_HOME = ".runbook/prefect"
#: In PREFECT_HOME: the auth string of the local server, when the environment gives none.
AUTH_FILE = "runbook-api-auth-string"
#: In PREFECT_HOME, while `runbook serve` runs its own Prefect server: where it answers, for the commands here.
SERVER_FILE = "runbook-server.json"
#: The port of the Prefect server `runbook serve` starts when PREFECT_API_URL is not set (`--prefect-port`).
PREFECT_PORT = 4200
#: Where the server reads the auth string it wants; where Prefect's clients read the one they send.
SERVER_AUTH_SETTING = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_AUTH_SETTING = "PREFECT_API_AUTH_STRING"


@dataclass(frozen=True)
class LocalServer:
    """A Prefect server started by `local_prefect_server`: where its API is and the auth string it wants."""

    api_url: str
    auth_string: str = field(repr=False)
    #: The file the auth string is kept in; None when it came from the environment.
    auth_file: Path | None = None

    @property
    def headers(self) -> dict[str, str]:
        """What Prefect's clients send for the auth string: HTTP Basic credentials of the whole string."""
        return {"Authorization": "Basic " + base64.b64encode(self.auth_string.encode()).decode()}

    def client_env(self) -> dict[str, str]:
        """The settings a Prefect client process needs to use this server."""
        return {"PREFECT_API_URL": self.api_url, CLIENT_AUTH_SETTING: self.auth_string}


def server_auth_string(env: Mapping[str, str]) -> tuple[str, Path | None]:
    """The auth string a local server wants, and the file it is kept in (None: from the environment).

    `PREFECT_SERVER_API_AUTH_STRING`, else `PREFECT_API_AUTH_STRING`, else `$PREFECT_HOME/runbook-api-auth-string`,
    made on first use (random, `runbook:<43 characters>`, mode 0600) and read afterwards.
    """
    for name in (SERVER_AUTH_SETTING, CLIENT_AUTH_SETTING):
        if env.get(name, "").strip():
            return env[name], None
    file = private_home(env) / AUTH_FILE
    return read_auth_file(file, create=True), file


def private_home(env: Mapping[str, str]) -> Path:
    """The server's PREFECT_HOME, for its owner only (0700): its database holds the Secret blocks and their key."""
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.chmod(0o700)
    return home


def local_auth_string(env: Mapping[str, str]) -> str | None:
    """For a client of the server `runbook serve` started on this machine: the auth string kept in its home.

    Only when PREFECT_API_URL is on loopback and the environment sets no auth string; never made here.
    """
    url = env.get("PREFECT_API_URL", "")
    if not url or env.get(CLIENT_AUTH_SETTING) or urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    file = Path(env.get("PREFECT_HOME") or SERVE_HOME).expanduser() / AUTH_FILE
    return read_auth_file(file) if file.is_file() else None


def use_local_auth_string() -> None:
    """A client on this machine of the server `runbook serve` started here: its auth string, from its home.

    Before Prefect is imported (its settings are read then); nothing when `local_auth_string` finds none.
    """
    auth_string = local_auth_string(os.environ)
    if auth_string:
        os.environ[CLIENT_AUTH_SETTING] = auth_string


@dataclass(frozen=True)
class PrefectHere:
    """The Prefect API a command run on this machine (`rollback`, `release`, `status`, `history`) talks to."""

    #: None: no server is named or running; Prefect starts a temporary one over `home`'s database for the command.
    api_url: str | None
    #: PREFECT_HOME: where that temporary server keeps the runs (the home `runbook serve` shows them from).
    home: Path
    #: Where the runs and their post-mortems are kept, said to the person.
    described: str


def prefect_here(env: Mapping[str, str]) -> PrefectHere:
    """PREFECT_API_URL when set; else the server a `runbook serve` of this home runs now; else a temporary one.

    Without either, Prefect starts a temporary server for the command (several seconds more) over `$PREFECT_HOME`,
    by default `.runbook/prefect/`, the home `runbook serve` starts its own server on: the runs are kept there,
    and `runbook serve` then shows them in its UI.
    """
    home = Path(env.get("PREFECT_HOME") or SERVE_HOME).expanduser()
    configured = env.get("PREFECT_API_URL")
    if configured:
        return PrefectHere(
            configured, home, f"the Prefect server at {without_userinfo(configured).removesuffix('/api')}"
        )
    running = _served_from(home / SERVER_FILE)
    if running is not None:
        return PrefectHere(running, home, f"the Prefect server of `runbook serve` at {running.removesuffix('/api')}")
    return PrefectHere(
        None,
        home,
        f"{home / 'prefect.db'} (a temporary Prefect server for this command; `runbook serve` shows them in its UI)",
    )


def use_prefect_here() -> PrefectHere:
    """`prefect_here` applied to this process, before Prefect is imported (its settings are read then)."""
    here = prefect_here(os.environ)
    if here.api_url is not None:
        os.environ["PREFECT_API_URL"] = here.api_url
        use_local_auth_string()
    else:
        os.environ["PREFECT_HOME"] = str(here.home.resolve())
    return here


def _served_from(file: Path) -> str | None:
    """The API URL a running `runbook serve` wrote in `file`, if its process is alive and the API answers."""
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        os.kill(int(record["pid"]), 0)
        api = str(record["api_url"])
        if httpx.get(f"{api}/health", timeout=1).status_code == 200:
            return api
    except (OSError, ValueError, KeyError, TypeError, httpx.HTTPError):
        pass
    return None


@contextmanager
def server_announced(home: Path, api_url: str) -> Iterator[Path]:
    """While `runbook serve` runs its own server: `home`/runbook-server.json says where (the commands here use it)."""
    file = home / SERVER_FILE
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"api_url": api_url, "pid": os.getpid()}, out)
    try:
        yield file
    finally:
        file.unlink(missing_ok=True)


def read_auth_file(file: Path, *, create: bool = False) -> str:
    """The auth string kept in `file` (made, mode 0600, when `create` and missing); refused if others can read it."""
    if create:
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            value = f"runbook:{secrets.token_urlsafe(32)}"
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                os.fchmod(out.fileno(), 0o600)  # whatever the umask
                out.write(value + "\n")
            return value
    mode = stat.S_IMODE(file.stat().st_mode)
    if mode & 0o077:
        raise RunbookError(
            f"{file} holds the Prefect API's auth string and others can read it (mode {mode:o})",
            hint=f"chmod 600 {file}, or delete it: a new one is made at the next start",
        )
    value = file.read_text(encoding="utf-8").strip()
    if not value:
        raise RunbookError(f"{file} is empty", hint="delete it: a new auth string is made at the next start")
    return value


@contextmanager
def local_prefect_server(
    host: str = "127.0.0.1", port: int = 4200, timeout: float = 60, env: dict[str, str] | None = None
) -> Iterator[LocalServer]:
    """Start `prefect server start` (SQLite in PREFECT_HOME) wanting an auth string; stop it afterwards.

    The auth string is `server_auth_string(env)`'s; `/api/health` answers without it (for load balancers).
    """
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise RunbookError(
                f"port {port} on {host} is taken, and PREFECT_API_URL is not set",
                hint=f"set PREFECT_API_URL=http://{host}:{port}/api if a Prefect server runs there, or free the port",
            )
    api = f"http://{host}:{port}/api"
    env = dict(env if env is not None else os.environ)
    private_home(env)
    auth_string, auth_file = server_auth_string(env)
    # The UI asks the server where the API is; the server does not derive that from --port.
    env.update({"PREFECT_UI_API_URL": api, SERVER_AUTH_SETTING: auth_string})
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    # Read its stderr all along, keeping the end: unread, the pipe fills (64 KiB: a few dozen "database is
    # locked" tracebacks under a storm of runs on SQLite) and the server blocks writing to it, API and all.
    tail: deque[bytes] = deque(maxlen=40)
    drain = threading.Thread(target=tail.extend, args=(process.stderr,), name="prefect-server-stderr", daemon=True)
    drain.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                drain.join(timeout=2)
                raise RunbookError(
                    "the local Prefect server exited at start",
                    hint=b"".join(tail).decode(errors="replace")[-800:],
                )
            if own_server_answers(api, auth_string, host, port):
                break
            if time.monotonic() > deadline:
                raise RunbookError(f"the local Prefect server did not answer within {timeout:.0f} s")
            time.sleep(0.3)
        yield LocalServer(api, auth_string, auth_file)
    finally:
        stop_process(process)
        drain.join(timeout=5)  # the end of its stderr: the process has exited
        if process.stderr:
            process.stderr.close()


def own_server_answers(api: str, auth_string: str, host: str, port: int) -> bool:
    """Whether the server started here answers; RunbookError when another one took the port meanwhile.

    `/api/health` answers anyone: a server that refuses this one's auth string is not the one started here (two
    processes picked the same free port; the first to bind serves both), and must not be used as if it were.
    """
    try:
        if httpx.get(f"{api}/health", timeout=1).status_code != 200:
            return False
        token = base64.b64encode(auth_string.encode()).decode()
        ours = httpx.get(f"{api}/admin/version", headers={"Authorization": f"Basic {token}"}, timeout=2)
    except httpx.HTTPError:
        return False
    if ours.status_code == 401:
        raise RunbookError(
            f"port {port} on {host} is served by another Prefect server, which took it while this one started",
            hint="start again on another port",
        )
    return ours.status_code == 200


def bind_alert_port(host: str, port: int) -> socket.socket:
    """The alert endpoint's listening socket, bound now: a taken port stops `serve` before anything starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(ALERT_BACKLOG)  # alerts arriving before uvicorn runs wait in the backlog, not refused
    except OSError as exc:
        sock.close()
        raise RunbookError(
            f"the alert endpoint cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint=f"another process holds that port (ss -ltnp 'sport = :{port}'): stop it, or choose another with "
            "--alerts-port (and point Alertmanager's webhook_configs url at it)",
        ) from None
    return sock


class AlertEndpoint:
    """The alert endpoint: uvicorn in a thread, on a socket bound beforehand, reconfigurable on reload."""

    def __init__(self, config: RunbookConfig, sock: socket.socket, warm: WarmRuns) -> None:
        import uvicorn

        from commands.alert_endpoint import create_app
        from runbook.alerts.launcher import IncidentLauncher, PrefectLauncher

        self.app = create_app(
            config,
            PrefectLauncher("rollback/rollback", hand_to=warm.run_owned, mark=warm.handed_mark),
            incidents=IncidentLauncher(hand_to=warm.run_owned, mark=warm.handed_mark),
        )
        # timeout_keep_alive: an idle connection is closed after it; a body is bounded by alert_endpoint.BODY_SECONDS.
        settings = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE)
        server = uvicorn.Server(settings)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="alert-endpoint")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def reconfigure(self, config: RunbookConfig) -> None:
        from commands.alert_endpoint import reconfigure

        reconfigure(self.app, config)


def serve(
    config_path: Path, *, alerts_host: str = "127.0.0.1", alerts_port: int = 8787, prefect_port: int = PREFECT_PORT
) -> None:
    """Serve the deployments (and the alert endpoint) until interrupted; SIGHUP reloads the configuration."""
    # Until the runner takes SIGTERM over: a stop while starting still stops the Prefect server started here and
    # removes the record of where it answers (Python's default would end the process on the spot).
    signal.signal(signal.SIGTERM, _stopped_while_starting)
    os.environ[CONFIG_ENV_VAR] = str(config_path.resolve())
    for key, value in POLL_SETTINGS.items():
        os.environ.setdefault(key, value)
    config = load_config()  # a bad file stops here, with its message, before anything starts
    sock = bind_alert_port(alerts_host, alerts_port) if config.alerts is not None else None  # so does a taken port
    try:
        with _api(prefect_port) as api:
            os.environ["PREFECT_API_URL"] = api
            from prefect.exceptions import TerminationSignal
            from prefect.runner import Runner

            hear_busy_soon()  # before any client is made: no 2 s sleep after SQLite's "database is locked"

            from commands.ready_keeper import ReadyKeeper
            from deployments.spec import runner_deployments
            from flows.incident import incident
            from flows.rollback import rollback

            # Kept to add deployments on reload. A stop leaves the rehearsals' schedules on (prefect.serve()'s
            # default pauses them: the next weekly rehearsal would silently never run).
            runner = Runner(pause_on_shutdown=False)
            deployments = runner_deployments(config)
            registered = register(runner, deployments)  # before the endpoint answers: never a service they refuse
            # Rollbacks and incidents: one poll reads both deployments' due runs.
            warm = WarmRuns(rollback, registered["rollback"], more={registered["incident"]: incident})
            warm.start()
            keeper = ReadyKeeper()  # each service's way back, resolved ahead of its incident (runbook/ready.py)
            keeper.start()
            endpoint = AlertEndpoint(config, sock, warm) if sock is not None else None
            if endpoint is not None:
                endpoint.start()
                print(f"alert endpoint: http://{alerts_host}:{alerts_port}/alerts/alertmanager (and /alerts/grafana)")
            print(f"Prefect API: {api}; deployments: {', '.join(d.name for d in deployments)}")
            print(f"reload the configuration (services, environments, alerts): kill -HUP {os.getpid()}", flush=True)
            reloading = threading.Lock()

            def on_sighup(signum: int, frame: object) -> None:
                threading.Thread(target=reload, args=(runner, endpoint, reloading), name="reload", daemon=True).start()

            signal.signal(signal.SIGHUP, on_sighup)
            try:
                with suppress(KeyboardInterrupt, TerminationSignal):  # Ctrl-C, or SIGTERM: the runner stops
                    asyncio.run(runner.start())
            finally:
                keeper.stop()
                # The rollbacks and incidents in progress finish first (an incident's rollbacks are its own threads).
                left = warm.drain(timeout=DRAIN_SECONDS)
                if left:
                    print(f"stopped with {len(left)} rollback run(s) still in progress: {left}", file=sys.stderr)
    finally:
        if sock is not None:
            sock.close()


def _stopped_while_starting(signum: int, frame: object) -> None:
    print("stopped while starting", file=sys.stderr, flush=True)
    raise SystemExit(0)  # the `finally` and `with` blocks on the way out run, as for the runner's own stop


def reload(runner: Any, endpoint: AlertEndpoint | None, lock: threading.Lock) -> None:
    """SIGHUP: read the configuration file again, register the deployments from it, then answer alerts with it.

    In that order, so the endpoint never starts a run for a service the `rollback` deployment does not accept
    yet (Prefect's 409). An invalid file changes nothing: the error is printed and the previous configuration
    stays. A new rehearsal is served at once; a removed one keeps its schedule until `serve` restarts; so do a
    new `alerts` section (no endpoint was bound) and the alert port.
    """
    from deployments.spec import runner_deployments

    with lock:
        try:
            config = load_config()
            deployments = runner_deployments(config)
            register(runner, deployments)
            if endpoint is not None and config.alerts is not None:
                endpoint.reconfigure(config)
        except Exception as exc:  # whatever failed, `serve` goes on with what it had
            print(f"reload failed, the previous configuration stays: {exc}", file=sys.stderr, flush=True)
            return
        if endpoint is not None and config.alerts is None:
            print("reload: the alerts section is gone; the endpoint keeps the previous one until a restart")
        services = ", ".join(sorted(config.services))
        print(f"configuration reloaded: services {services}; deployments {', '.join(d.name for d in deployments)}")
        sys.stdout.flush()


#: The deployments whose runs `serve` executes warm, in its own threads (commands/warm.py), not by its runner.
WARM_DEPLOYMENTS = ("rollback", "incident")


def register(runner: Any, deployments: list[Any]) -> dict[str, Any]:
    """Register every deployment with the Prefect API; the runner serves all but the warm ones (run here).

    The deployments' ids by name. The rollback and incident deployments are registered (the UI's form, the
    API's validation) but not polled by the runner: `WarmRuns` claims their runs and executes them here.
    """
    ids: dict[str, Any] = {}
    for deployment in deployments:
        if deployment.name in WARM_DEPLOYMENTS:
            ids[deployment.name] = deployment.apply()
        else:
            runner.add_deployment(deployment)
    return ids


@contextmanager
def _api(port: int = PREFECT_PORT) -> Iterator[str]:
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    with local_prefect_server(port=port) as server, server_announced(private_home(os.environ), server.api_url):
        # Before Prefect is imported: its settings are read then. The runner's flow-run processes inherit it.
        os.environ[CLIENT_AUTH_SETTING] = server.auth_string
        where = f"the auth string in {server.auth_file}" if server.auth_file else "the environment's auth string"
        print(f"Prefect UI: {server.api_url.removesuffix('/api')} (log in with {where})", flush=True)
        yield server.api_url
