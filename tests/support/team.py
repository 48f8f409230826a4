"""A team's topology on this machine: a Prefect server on PostgreSQL, process workers, `runbook alerts` receivers.

`team(workdir)` starts, concurrently where it can: a throwaway PostgreSQL cluster and the sandbox world; then a
Prefect server on that database; then, the deployments registered the way a team does (the work pool `runbook`
of type process, `runbook prefect-yaml`, `prefect deploy --all`) while two workers start
(`prefect worker start --pool runbook`, PREFECT_WORKER_QUERY_SECONDS=1, RUNBOOK_CONFIG set); then two
`runbook alerts` receivers. Each process writes its output to a log file in `workdir`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from commands.serve import LocalServer
from runbook.processes import stop_process
from sandbox.postgres import PostgresServer
from sandbox.process import free_port
from sandbox.serving import ROOT, prefect_server, server_env
from sandbox.world import ENVIRONMENT, REPOSITORY, Sandbox
from tests.support.prefect_api import TERMINAL, api
from tests.support.waiting import wait_for

ALERT_TOKEN = "alert-token-for-the-team-0123456789"
#: The token after a rotation (tests of SIGHUP).
NEXT_ALERT_TOKEN = "alert-token-rotated-9876543210abcdef"
POOL = "runbook"
#: What `prefect worker start` runs as (a worker is `prefect worker start ...` unless a test gives another command).
PREFECT_WORKER = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL]
#: The worker that drains on SIGTERM (commands/worker.py).
RUNBOOK_WORKER = [sys.executable, "-m", "commands.worker", "--pool", POOL]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc), children first."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        for path in Path(f"/proc/{parent}/task").glob("*/children"):
            with suppress(OSError):  # the thread or process ended meanwhile
                for child in (int(text) for text in path.read_text().split()):
                    if child not in found:
                        found.append(child)
                        queue.append(child)
    return found


@dataclass
class Process:
    """One process of the team (a worker or a receiver), started in its own session, logging to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tree(self) -> list[int]:
        """This process and every process below it (a worker's flow-run processes, in sessions of their own)."""
        return [self.pid, *descendants(self.pid)]

    def kill_machine(self) -> list[int]:
        """SIGKILL to every process group of the tree at once, as when the machine dies; the pids killed."""
        pids = self.tree()
        for group in {os.getpgid(pid) for pid in pids if _alive(pid)}:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=10)
        return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Team:
    """The running team: its server (on PostgreSQL), sandbox, configuration, workers and receivers."""

    server: LocalServer
    postgres: PostgresServer
    sandbox: Sandbox
    workdir: Path
    config: Path
    env: dict[str, str]
    #: The receivers' copy of the configuration (the same data: as another machine's or pod's file).
    receiver_config: Path
    workers: dict[str, Process] = field(default_factory=dict)
    receivers: list[Process] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.server.api_url

    @property
    def headers(self) -> dict[str, str]:
        return self.server.headers

    def alerts_url(self, receiver: Process) -> str:
        return f"http://127.0.0.1:{self.ports[receiver.name]}"

    # --- processes ---

    def start_worker(self, name: str, command: list[str] | None = None) -> Process:
        """A worker of the `runbook` pool named `name` (`prefect worker start` unless `command` says otherwise)."""
        log = self.workdir / f"{name}.log"
        env = dict(self.env, PREFECT_HOME=str(self.workdir / f"home-{name}"))
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*(command or PREFECT_WORKER), "--name", name],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        worker = Process(name, process, log)
        self.workers[name] = worker
        return worker

    def start_receiver(self, name: str) -> Process:
        """`runbook alerts --config CONFIG --port P` against the server."""
        port = free_port()
        log = self.workdir / f"{name}.log"
        env = dict(self.env, PREFECT_HOME=str(self.workdir / f"home-{name}"))
        config = str(self.receiver_config)
        command = [sys.executable, "-m", "commands.cli", "alerts", "--config", config, "--port", str(port)]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        receiver = Process(name, process, log)
        self.ports[name] = port
        self.receivers.append(receiver)
        return receiver

    def wait_receiver(self, receiver: Process, timeout: float = 60) -> None:
        url = f"{self.alerts_url(receiver)}/healthz"

        def answers() -> bool:
            if receiver.process.poll() is not None:
                raise AssertionError(f"{receiver.name} exited {receiver.process.returncode}:\n{receiver.output()}")
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=timeout, what=f"{receiver.name} to answer /healthz")

    def online_workers(self) -> set[str]:
        answer = api("POST", f"{self.api}/work_pools/{POOL}/workers/filter", self.headers, json={})
        return {w["name"] for w in answer.json() if w.get("status") == "ONLINE"} if answer.status_code == 200 else set()

    def wait_workers(self, names: set[str], timeout: float = 60) -> None:
        for name in names:
            worker = self.workers[name]
            if worker.process.poll() is not None:
                raise AssertionError(f"{name} exited {worker.process.returncode}:\n{worker.output()[-3000:]}")
        wait_for(lambda: names <= self.online_workers(), timeout=timeout, what=f"workers {sorted(names)} online")

    def create_pool(self) -> None:
        """The work pool `runbook` of type process, created through the API (`prefect work-pool create` costs
        seconds of imports this module cannot spare); its job template is left empty: a process worker then uses
        the type's default, which is what the CLI would have stored."""
        answer = api("POST", f"{self.api}/work_pools/", self.headers, json={"name": POOL, "type": "process"})
        assert answer.status_code in (201, 409), answer.text  # 409: a worker created it first

    def deploy(self) -> None:
        """`runbook prefect-yaml --config ... > prefect.yaml`, then `prefect deploy --all` from it."""
        prefect_file = self.workdir / "prefect.yaml"
        generated = _run([sys.executable, "-m", "commands.cli", "prefect-yaml", "--config", str(self.config)], self.env)
        prefect_file.write_text(generated, encoding="utf-8")
        _run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
            self.env,
        )

    # --- runs ---

    def deployment_id(self, name: str = "rollback/rollback") -> str:
        return str(api("GET", f"{self.api}/deployments/name/{name}", self.headers).json()["id"])

    def create_run(self, parameters: dict[str, Any]) -> str:
        url = f"{self.api}/deployments/{self.deployment_id()}/create_flow_run"
        answer = api("POST", url, self.headers, json={"parameters": parameters})
        assert answer.status_code in (200, 201), answer.text
        return str(answer.json()["id"])

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(api("GET", f"{self.api}/flow_runs/{run_id}", self.headers).json())

    def states(self, run_id: str) -> list[dict[str, Any]]:
        answer = api("GET", f"{self.api}/flow_run_states/?flow_run_id={run_id}", self.headers)
        return sorted(answer.json(), key=lambda state: state["timestamp"])

    def set_state(self, run_id: str, state: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Propose a state, as the UI does (its Retry: SCHEDULED named AwaitingRetry, forced)."""
        answer = api(
            "POST", f"{self.api}/flow_runs/{run_id}/set_state", self.headers, json={"state": state, "force": force}
        )
        assert answer.status_code in (200, 201), answer.text
        return dict(answer.json())

    def wait_terminal(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["state"] and run["state"]["type"] in TERMINAL else None

        try:
            run = wait_for(ended, timeout=timeout, what=f"run {run_id} to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        assert run is not None
        return run

    def dispatches(self) -> int:
        return len(self.sandbox.github.dispatches())

    def ran_on(self, run_id: str) -> set[str]:
        """The workers that ran the run: its flow-run process's output (streamed through the worker) links to it."""
        return {name for name, worker in self.workers.items() if f"/flow-run/{run_id}" in worker.output()}

    def tried(self, run_id: str) -> set[str]:
        """The workers that tried to take the run (each says so; Prefect lets one of them have it)."""
        return {name for name, worker in self.workers.items() if f"submitting flow run '{run_id}'" in worker.output()}

    def break_again(self) -> None:
        """Production broken again: the newest commit deployed by CI, live (each scenario rolls back from it)."""
        broken = self.sandbox.commits.broken
        self.sandbox.github.add_deployment(REPOSITORY, broken, ENVIRONMENT, state="success", description="CI deploy")
        self.sandbox.app.deploy(broken)

    def logs(self, limit: int = 2500) -> str:
        return "\n".join(
            f"--- {p.name} (exit {p.process.poll()}):\n{p.output()[-limit:]}"
            for p in [*self.workers.values(), *self.receivers]
        )


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{command[2:5]}: exit {done.returncode}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


@contextmanager
def team(workdir: Path, *, workers: dict[str, list[str]] | None = None, receivers: int = 2) -> Iterator[Team]:
    """The whole topology, up: server on PostgreSQL, deployments, `workers` (name: command), `receivers` receivers.

    By default two workers: `worker-a`, Prefect's (`prefect worker start`), and `worker-b`, the runbook's
    (`python -m commands.worker`, which drains on SIGTERM).
    """
    workers = workers if workers is not None else {"worker-a": PREFECT_WORKER, "worker-b": RUNBOOK_WORKER}
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=2) as pool:
        sandbox = Sandbox(workdir / "sandbox", run_step_seconds=0.05)
        stack.callback(sandbox.stop)
        world = pool.submit(sandbox.start)  # in a thread, while PostgreSQL and the Prefect server start
        postgres = stack.enter_context(PostgresServer())
        server = stack.enter_context(prefect_server(str(workdir / "server-home"), database_url=postgres.url))
        world.result()
        timings = {"server": time.monotonic() - started}
        data = sandbox.config_data()
        data["alerts"] = {"token": {"env": "RUNBOOK_ALERT_TOKEN"}, "hold_minutes": 0}
        config = sandbox.write_config(data, "team.yaml")
        receiver_config = sandbox.write_config(data, "alerts.yaml")
        env = server_env(
            str(workdir / "home"),
            **server.client_env(),
            RUNBOOK_CONFIG=str(config),
            RUNBOOK_PROJECT_DIR=str(ROOT),
            RUNBOOK_ALERT_TOKEN=ALERT_TOKEN,
            RUNBOOK_ALERT_TOKEN_NEXT=NEXT_ALERT_TOKEN,
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_CLIENT_MAX_RETRIES="30",
        )
        the_team = Team(server, postgres, sandbox, workdir, config, env, receiver_config, timings=timings)
        stack.callback(_stop_all, the_team)
        the_team.create_pool()
        deployed = pool.submit(the_team.deploy)  # while the workers start
        for name, command in workers.items():
            the_team.start_worker(name, command)
        deployed.result()
        timings["deployed"] = time.monotonic() - started
        for index in range(receivers):
            the_team.start_receiver(f"receiver-{index + 1}")
        for receiver in the_team.receivers:
            the_team.wait_receiver(receiver)
        the_team.wait_workers(set(workers))
        timings["up"] = time.monotonic() - started
        yield the_team


def _stop_all(the_team: Team) -> None:
    """Every worker and receiver still running: SIGTERM, then SIGKILL to what is left of their trees."""
    processes = [*the_team.receivers, *the_team.workers.values()]
    trees = {p.name: p.tree() for p in processes}
    for p in processes:
        stop_process(p.process, timeout=15)
    for pids in trees.values():
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
