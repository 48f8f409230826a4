"""Who may start a rollback: only clients with the auth string; and a run's creator chooses no configuration,
no silence and no trigger (real `prefect server start`, real `runbook serve`, the sandbox's stand-ins)."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import PrefectHTTPStatusError

from commands.serve import AUTH_FILE, LocalServer, local_auth_string, prefect_here, server_announced, server_auth_string
from flows.trigger import derive_trigger
from runbook.errors import RunbookError
from sandbox.serving import server_env
from tests.support.prefect_api import api, create_run, wait_terminal
from tests.support.served import Served

ROOT = Path(__file__).resolve().parents[2]


def _basic(auth_string: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def test_the_local_server_wants_the_auth_string_only_its_owner_can_read(prefect_api: LocalServer) -> None:
    server = prefect_api  # `local_prefect_server`, as `runbook serve` starts it: no auth string in its environment
    assert server.auth_file is not None
    file, home = server.auth_file, server.auth_file.parent
    assert (file.name, stat.S_IMODE(file.stat().st_mode), stat.S_IMODE(home.stat().st_mode)) == (
        AUTH_FILE,
        0o600,
        0o700,
    )
    assert file.read_text().strip() == server.auth_string and len(server.auth_string) > 40

    flows = f"{server.api_url}/flows/filter"
    assert httpx.post(flows, json={}, timeout=10).status_code == 401
    assert httpx.post(flows, json={}, headers=_basic("runbook:guessed"), timeout=10).status_code == 401
    assert httpx.get(f"{server.api_url}/health", timeout=10).status_code == 200  # for load balancers
    # Prefect's own client: refused without the auth string, served with it.
    with SyncPrefectClient(server.api_url) as anonymous, pytest.raises(PrefectHTTPStatusError, match="401"):
        anonymous.read_flows()
    with SyncPrefectClient(server.api_url, auth_string=server.auth_string) as client:
        assert isinstance(client.read_flows(), list)

    # The next start from this home (what `local_prefect_server` calls) keeps the string: not made again.
    inode = file.stat().st_ino
    assert server_auth_string(server_env(str(home))) == (server.auth_string, file)
    assert (file.stat().st_ino, file.read_text().strip()) == (inode, server.auth_string)
    # `runbook rollback` against that server finds it there (loopback only; it never makes one).
    client_env = {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(home)}
    assert local_auth_string(client_env) == server.auth_string
    assert local_auth_string({**client_env, "PREFECT_API_URL": "https://prefect.example.com/api"}) is None


def test_an_auth_string_from_the_environment_wins_and_a_readable_file_is_refused(tmp_path: Path) -> None:
    assert server_auth_string({"PREFECT_SERVER_API_AUTH_STRING": "ops:s3cret", "PREFECT_HOME": str(tmp_path)}) == (
        "ops:s3cret",
        None,
    )
    assert server_auth_string({"PREFECT_API_AUTH_STRING": "ops:other", "PREFECT_HOME": str(tmp_path)})[0] == "ops:other"
    assert not (tmp_path / AUTH_FILE).exists()
    made, file = server_auth_string({"PREFECT_HOME": str(tmp_path)})
    assert file == tmp_path / AUTH_FILE
    file.chmod(0o644)
    with pytest.raises(RunbookError, match="others can read it"):
        server_auth_string({"PREFECT_HOME": str(tmp_path)})
    assert file.read_text().strip() == made  # refused, not replaced behind the owner's back


def test_a_run_can_choose_no_configuration_no_silence_and_no_trigger(served: Served) -> None:
    deployment = api("GET", f"{served.api}/deployments/name/rollback/rollback", served.headers).json()
    properties = deployment["parameter_openapi_schema"]["properties"]
    assert not {"config_path", "notify", "trigger"} & set(properties), sorted(properties)

    sandbox = served.sandbox
    # What a caller would point at servers of its own, collecting the runner's tokens; here, the stand-ins.
    foreign = sandbox.write_config(sandbox.config_data(), "foreign.yaml")
    github_seen, slack_seen, deploys = (
        len(sandbox.github.requests),
        dict(sandbox.slack.requests),
        list(sandbox.app.deploys),
    )
    claims: list[dict[str, Any]] = [
        {"config_path": str(foreign)},
        # A rollback to the oldest version, unannounced, passed off as a drill (`schedule` is refused alike).
        {"sha": sandbox.commits.all[0], "notify": False, "trigger": "drill"},
    ]
    started = time.monotonic()
    run_ids = [create_run(served, {"service": "shop", "environment": "production", **claim}) for claim in claims]
    runs = [wait_terminal(served, run_id) for run_id in run_ids]

    # Refused by the flow-run process before any step: the flow has no such parameter.
    refusals = [line for line in served.log.read_text().splitlines() if "SignatureMismatchError: " in line]
    for claim, run in zip(claims, runs, strict=True):
        assert run["state"]["type"] in ("CRASHED", "FAILED"), (run["parameters"], run["state"])
        assert any(all(repr(key) in line for key in claim) for line in refusals), (claim, refusals)
    assert sandbox.github.requests[github_seen:] == [], "the run reached GitHub"
    assert sandbox.slack.requests == slack_seen and sandbox.app.deploys == deploys
    print(f"{len(claims)} runs with claims refused in {time.monotonic() - started:.1f} s")


def test_the_trigger_is_what_the_runbook_knows() -> None:
    assert derive_trigger(drill=True, alert=True, scheduled=True) == "drill"  # only the rehearsal, in process
    assert derive_trigger(drill=False, alert=True, scheduled=True) == "alert"
    assert derive_trigger(drill=False, alert=False, scheduled=True) == "schedule"
    assert derive_trigger(drill=False, alert=False, scheduled=False) == "manual"


def test_a_server_that_refuses_the_auth_string_is_never_taken_for_the_one_started(prefect_api: LocalServer) -> None:
    # Two processes that picked the same free port: the first to bind serves both. The second's start must not
    # go on with a server whose every answer would be a 401.
    from commands.serve import own_server_answers

    host, port = "127.0.0.1", int(prefect_api.api_url.rsplit(":", 1)[1].split("/")[0])
    assert own_server_answers(prefect_api.api_url, prefect_api.auth_string, host, port)
    with pytest.raises(RunbookError, match="served by another Prefect server"):
        own_server_answers(prefect_api.api_url, "runbook:another-server-s-string", host, port)


# --- which server a command run here talks to (`runbook rollback`, `release`, `status`, `history`) ---------------


def test_a_command_here_uses_the_server_serve_runs_else_keeps_its_runs_where_serve_shows_them(
    prefect_api: LocalServer, tmp_path: Path
) -> None:
    env = {"PREFECT_HOME": str(tmp_path)}
    alone = prefect_here(env)  # no `runbook serve` here: Prefect's temporary server, over this home's database
    assert alone.api_url is None and alone.home == tmp_path
    assert f"{tmp_path / 'prefect.db'} (a temporary Prefect server" in alone.described

    with server_announced(tmp_path, prefect_api.api_url) as file:  # as `runbook serve` does while it runs
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        found = prefect_here(env)
        assert found.api_url == prefect_api.api_url
        assert found.described == f"the Prefect server of `runbook serve` at {prefect_api.api_url.removesuffix('/api')}"
        assert prefect_here({**env, "PREFECT_API_URL": "https://prefect.example.com/api"}).api_url == (
            "https://prefect.example.com/api"  # the one named wins
        )
        gone = subprocess.Popen(["true"])
        gone.wait()
        file.write_text(json.dumps({"api_url": prefect_api.api_url, "pid": gone.pid}))  # a `serve` killed -9
        assert prefect_here(env).api_url is None
    assert not file.exists()  # removed when `serve` stops


def test_runbook_rollback_in_the_shell_runs_on_serves_server_and_says_where_the_run_is(
    served: Served, prefect_api: LocalServer
) -> None:
    assert prefect_api.auth_file is not None
    home = prefect_api.auth_file.parent  # the home of the server: its auth string is read there
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PREFECT_UI_"))}
    command = [sys.executable, "-m", "commands.cli", "rollback", "--service", "shop", "--environment", "production"]
    command += ["--dry-run", "--config", str(served.sandbox.config_path)]
    with server_announced(home, prefect_api.api_url):
        done = subprocess.run(
            command, env={**env, "PREFECT_HOME": str(home)}, cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr[-2000:]
    ui = prefect_api.api_url.removesuffix("/api")
    said = done.stdout.splitlines()
    assert said[-3] == "rollback of shop/production: Completed", said
    match = re.fullmatch(
        r"run (\S+) and its post-mortem \(artifact rollback-shop-production\) are kept in (.+)", said[-2]
    )
    assert match and match[2] == f"the Prefect server of `runbook serve` at {ui}", said
    assert said[-1] == (
        f"see them: runbook history --service shop --environment production, or {ui}/runs/flow-run/{match[1]}"
    )
    run = api("GET", f"{prefect_api.api_url}/flow_runs/{match[1]}", prefect_api.headers).json()
    assert run["state"]["type"] == "COMPLETED" and run["parameters"]["dry_run"] is True
