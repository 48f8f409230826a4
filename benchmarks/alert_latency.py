"""Time from an alert (or a run created in the UI) to the first deploy request at the target, with `runbook serve`.

Run: .venv/bin/python benchmarks/alert_latency.py [--trials 20] [--services 20] [--database sqlite|postgresql]
     [--only ready,full,ui,batch,incident,slack,latency]
Starts a real `prefect server start` (SQLite, or PostgreSQL in a throwaway cluster), the sandbox (GitHub and Slack
stand-ins, a real registry, the app; with `batch`, one more repository, image history and app per service), and
`runbook serve` against them (one `serve` per configuration the chosen scenarios need, one after the other). Per
trial a new broken version is deployed in the sandbox; once `serve` could know it (`--settle`, and its ready
target prepared for that version: the Prefect Variable `ready-target-<service>-<environment>`, checked every
second here) the run is started, and the latency is the time until the GitHub stand-in receives the rollback
workflow's dispatch (the first deploy request). Scenarios, each printed next to its goal:

  ready    alert POST -> dispatch, p50/p95 (goal 0.5 s / 1.0 s); the path each run took, from its task runs
           (`check-ready-target`: ready; `resolve-sha` and `verify-image`: full)
  full     the same with `ready_target: {enabled: false}` in the configuration (goal p50 1.0 s)
  ui       a run created through the API as the UI does (`create_flow_run_from_deployment`) -> dispatch (goal 1.5 s)
  batch    N services alerted at once: time to the last dispatch vs one service alone (goal 1.5x), lost ones (0)
  incident one alert group naming N services (one `incident` run): time to the last service's dispatch and to the
           last service healthy, each vs one service alone (goal 1.5x)
  slack    Slack hanging on every call: time to recovery vs Slack answering (goal +0.5 s); the thread's root
  latency  GitHub 120 ms, registry 80 ms (a delaying proxy), Slack 300 ms per call, from the alert to the
           dispatch: time to dispatch vs the sum of the latencies of the calls received meanwhile (goal 1.1x);
           the running version is read from a version probe of the app (not slowed, not counted)

and the critical path of one run of each of `ready` and `full`, from Prefect's own records. Not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import commands.serve  # noqa: E402
from commands.serve import LocalServer  # noqa: E402
from runbook.config import RunbookConfig  # noqa: E402
from sandbox.alert_bodies import alertmanager_body  # noqa: E402
from sandbox.latency_proxy import LatencyProxy  # noqa: E402
from sandbox.many_services import ManyServicesSandbox  # noqa: E402
from sandbox.process import free_port  # noqa: E402
from sandbox.serving import Database, alerting_world, runbook_serve  # noqa: E402
from sandbox.slack_standin import SlackStandIn  # noqa: E402
from sandbox.world import ENVIRONMENT, SERVICE  # noqa: E402

TOKEN = "bench-alert-token-0123456789abcdef"
SCENARIOS = ("ready", "full", "ui", "batch", "incident", "slack", "latency")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
#: Injected per call in the `latency` scenario, seconds.
GITHUB_LATENCY, REGISTRY_LATENCY, SLACK_LATENCY = 0.12, 0.08, 0.3
DISPATCH_TIMEOUT = 120.0  # seconds from the alert until a dispatch counts as lost
RUN_TIMEOUT = 300.0  # seconds from the alert until a run must have ended
_TTR = re.compile(r"\*\*Time to recovery:\*\* ([0-9.]+) s")


# --- figures ------------------------------------------------------------------------------------------------------


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def goal(value: float, limit: float, unit: str = "s") -> str:
    """`(goal <= 0.5 s: met)`."""
    return f"(goal <= {limit:g}{' ' + unit if unit else ''}: {'met' if value <= limit else 'NOT met'})"


def stamp(text: str | None) -> float | None:
    """A Prefect API timestamp (ISO 8601) as time.time() seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def task_name(run_name: str) -> str:
    """The task's name from its run's (`resolve-sha-a1b` -> `resolve-sha`)."""
    return run_name.rsplit("-", 1)[0]


def path_of(names: set[str]) -> str:
    """Which way a run found its target, from the names of its tasks."""
    ready, full = "check-ready-target" in names, "resolve-sha" in names
    if ready and full:
        return "ready->full"
    if ready:
        return "ready"
    return "full" if full else "?"


@dataclass
class Trial:
    """One run: when it was asked for, answered, when the dispatch arrived, and the run as it ended."""

    service: str
    run_id: str
    posted: float  # time.time() when the alert POST (or the API call) was sent
    answered: float  # when it was answered: the run exists
    dispatched: float | None = None  # when the GitHub stand-in received the rollback workflow's dispatch
    run: dict[str, Any] = field(default_factory=dict)
    path: str = "?"
    tasks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def latency(self) -> float | None:
        return None if self.dispatched is None else self.dispatched - self.posted

    @property
    def state(self) -> str:
        state = self.run.get("state") or {}
        return str(state.get("type", "?"))

    def line(self, label: str) -> str:
        latency = "no dispatch" if self.latency is None else f"{self.latency:.2f} s"
        return f"{label}: -> dispatch {latency} ({self.path} path, run {self.state})"


# --- the Prefect API ----------------------------------------------------------------------------------------------


class Api:
    """The Prefect server's REST API, as the benchmark reads it (503s, SQLite busy, retried)."""

    def __init__(self, server: LocalServer) -> None:
        self.url, self.headers, self.auth_string = server.api_url, server.headers, server.auth_string

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(10):
            response = httpx.request(method, f"{self.url}{path}", headers=self.headers, timeout=15, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(0.2 * (attempt + 1))
        response.raise_for_status()
        return response.json()

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/flow_runs/{run_id}"))

    def task_runs(self, run_id: str) -> list[dict[str, Any]]:
        body = {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200}
        return list(self.call("POST", "/task_runs/filter", json=body))

    def wait_ended(self, trials: Sequence[Trial], timeout: float = RUN_TIMEOUT) -> None:
        """Until every trial's run has ended (or `timeout` from the first alert): `trial.run` is its last read."""
        deadline = min((t.posted for t in trials), default=time.time()) + timeout
        pending = [t for t in trials if t.run_id]
        while pending and time.time() < deadline:
            for trial in pending:
                try:
                    trial.run = self.flow_run(trial.run_id)
                except httpx.HTTPError:
                    continue
            pending = [t for t in pending if t.state not in TERMINAL]
            time.sleep(0.2)

    def read_path(self, trial: Trial) -> None:
        """The run's task runs, and so the path it took."""
        if trial.run_id:
            trial.tasks = self.task_runs(trial.run_id)
            trial.path = path_of({task_name(t["name"]) for t in trial.tasks})

    def ready_for(self, service: str) -> str | None:
        """The version the service's ready rollback target was prepared for (its Prefect Variable), if any."""
        response = httpx.get(
            f"{self.url}/variables/name/ready-target-{service}-{ENVIRONMENT}", headers=self.headers, timeout=15
        )
        value = response.json().get("value") if response.status_code == 200 else None
        if isinstance(value, str):
            with suppress(ValueError):
                value = json.loads(value)
        return str(value.get("running")) if isinstance(value, dict) else None

    def time_to_recovery(self, run_id: str) -> float | None:
        """From the run's post-mortem artifact (to 0.1 s): its result is not kept (results not persisted)."""
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
        for artifact in self.call("POST", "/artifacts/filter", json=body):
            if artifact.get("type") == "markdown" and str(artifact.get("key") or "").startswith(
                ("rollback-", "incident-")
            ):
                found = _TTR.search(str(artifact.get("data") or ""))
                if found:
                    return float(found.group(1))
        return None


# --- the bench: world, serve, alerts ------------------------------------------------------------------------------


@dataclass
class Bench:
    """The world every scenario uses, and the `runbook serve` running now."""

    args: argparse.Namespace
    server: LocalServer
    sandbox: ManyServicesSandbox
    data: dict[str, Any]  # the configuration of every service (the sandbox's `shop` first)
    work: Path
    api: Api
    endpoint: str = ""
    serve_log: Path | None = None
    ready: bool = False  # whether the running `serve` keeps ready targets (then alerts wait for them)
    labels: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**9)))

    def config(self, services: Sequence[str], *, ready: bool = True) -> dict[str, Any]:
        """The configuration of these services only; `ready`: with ready targets, checked every second."""
        data = dict(self.data)
        data["services"] = {name: self.data["services"][name] for name in services}
        if ready_target_known():
            # `serve` prepares the target again within a second of a deploy: the alerts need not wait 15 s.
            data["ready_target"] = {"check_seconds": 1} if ready else {"enabled": False}
        # Slack back within a minute of the run's end is still told (the sandbox's tests give up after 5 s).
        data["slack"] = {**data["slack"], "delivery_seconds": 60}
        return data

    @contextmanager
    def serving(self, name: str, data: dict[str, Any]) -> Iterator[None]:
        workdir = self.work / f"serve-{name}"
        workdir.mkdir(exist_ok=True)
        config = self.sandbox.write_config(data, f"{name}.yaml")
        self.ready = ready_target_known() and bool(data.get("ready_target", {}).get("enabled", True))
        print(f"\n[{name}] starting `runbook serve` ...", flush=True)
        with runbook_serve(self.server, config, workdir, alert_token=TOKEN, port=free_port()) as serve:
            self.endpoint, self.serve_log = f"{serve.alerts_url}/alerts/alertmanager", serve.log
            time.sleep(2)  # the runner's first polls; whatever serve prepares at its start
            yield

    def break_services(self, services: Sequence[str]) -> None:
        """CI ships a new version of each service that breaks; the alerts come once `serve` could know it.

        At least `--settle` seconds later, and, when `serve` keeps ready targets, once each is prepared for the
        broken version (its Prefect Variable; `--ready-wait` seconds at most): an alert comes minutes after a
        deploy, by when the target is ready.
        """
        shas = {name: self.sandbox.break_service(name, f"Broken release {next(self.labels)}") for name in services}
        time.sleep(self.args.settle)
        deadline = time.time() + self.args.ready_wait
        while self.ready and time.time() < deadline:
            if all(self.api.ready_for(name) == sha for name, sha in shas.items()):
                return
            time.sleep(0.1)

    def alert(self, service: str) -> Trial:
        """POST an Alertmanager body for the service (a 503 retried after 1 s, as Alertmanager does)."""
        starts_at = datetime.now(UTC)
        fingerprint = f"{int(starts_at.timestamp() * 1e6):014x}{abs(hash(service)) % 16**2:02x}"
        body = alertmanager_body(service, starts_at=starts_at, fingerprint=fingerprint, environment=ENVIRONMENT)
        posted, run_id = time.time(), ""
        for _ in range(6):
            try:
                answer = httpx.post(self.endpoint, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            except httpx.HTTPError:
                answer = None
            if answer is not None and answer.is_success:
                run_id = str(answer.json()["alerts"][0].get("run_id") or "")
                break
            time.sleep(1.0)
        return Trial(service, run_id, posted, time.time())

    def wait_dispatches(self, trials: Sequence[Trial], timeout: float = DISPATCH_TIMEOUT) -> None:
        """Until each trial's service got its dispatch (the first one after its alert), or `timeout`."""
        deadline = max((t.posted for t in trials), default=time.time()) + timeout
        while time.time() < deadline:
            dispatches = self.sandbox.github.dispatches()
            for trial in trials:
                if trial.dispatched is None:
                    prefix = f"/repos/{self.sandbox.service(trial.service).repository}/"
                    found = [
                        d.timestamp for d in dispatches if d.path.startswith(prefix) and d.timestamp >= trial.posted
                    ]
                    trial.dispatched = min(found, default=None)
            if all(t.dispatched is not None for t in trials):
                return
            time.sleep(0.005)

    def finish(self, trials: Sequence[Trial]) -> None:
        """Wait for the runs to end; read the path each took."""
        self.api.wait_ended(trials)
        for trial in trials:
            self.api.read_path(trial)

    def one(self, service: str, start: Callable[[str], Trial], label: str) -> Trial:
        """One trial: break the service, wait for its ready target, start the run, wait for the dispatch and end."""
        self.break_services([service])
        trial = start(service)
        self.wait_dispatches([trial])
        self.finish([trial])
        print(trial.line(label), flush=True)
        return trial


# --- scenarios ----------------------------------------------------------------------------------------------------


def latency_summary(title: str, trials: Sequence[Trial], p50_goal: float, p95_goal: float | None) -> list[str]:
    latencies = [t.latency for t in trials if t.latency is not None]
    paths = Counter(t.path for t in trials)
    lines = [f"{title}, {len(latencies)}/{len(trials)} trials dispatched:"]
    if latencies:
        p50 = statistics.median(latencies)
        lines.append(f"  p50 {p50:.2f} s {goal(p50, p50_goal)}")
        if p95_goal is not None:
            lines.append(f"  p95 {p95(latencies):.2f} s {goal(p95(latencies), p95_goal)}")
        lines.append(f"  min {min(latencies):.2f} s   max {max(latencies):.2f} s")
    lines.append("  paths: " + ", ".join(f"{path} {count}" for path, count in sorted(paths.items())))
    return lines


def breakdown(bench: Bench, trials: Sequence[Trial]) -> list[str]:
    """The critical path of the median trial, offsets in ms from the alert POST (Prefect's records)."""
    done = sorted((t for t in trials if t.latency is not None), key=lambda t: t.latency or 0.0)
    if not done:
        return []
    trial = done[len(done) // 2]
    run = bench.api.flow_run(trial.run_id)
    lines = [f"  critical path of run {trial.run_id} ({trial.path} path, the median), ms after the alert POST:"]

    def at(what: str, moment: float | None) -> None:
        lines.append(f"    {'-' if moment is None else f'{(moment - trial.posted) * 1000:7.0f}'}  {what}")

    at("alert answered (run created)", trial.answered)
    at("flow run created (API `created`)", stamp(run.get("created")))
    at("flow run Running (`start_time`)", stamp(run.get("start_time")))
    for task in sorted(trial.tasks, key=lambda t: stamp(t.get("start_time")) or float("inf")):
        name, start = task_name(task["name"]), stamp(task.get("start_time"))
        if name == "deploy":
            at("task deploy starts", start)
            break
        end = stamp(task.get("end_time"))
        at(f"task {name} starts (ends {'-' if end is None else f'{(end - trial.posted) * 1000:.0f}'})", start)
    at("dispatch received by the GitHub stand-in", trial.dispatched)
    return lines


def scenario_ready(bench: Bench) -> list[str]:
    trials = [bench.one(SERVICE, bench.alert, f"ready trial {i + 1:2d}") for i in range(bench.args.trials)]
    title = "ready path: alert POST -> first deploy request"
    return latency_summary(title, trials, 0.5, 1.0) + breakdown(bench, trials)


def scenario_full(bench: Bench) -> list[str]:
    trials = [bench.one(SERVICE, bench.alert, f"full trial {i + 1:2d}") for i in range(bench.args.trials)]
    title = "full path (ready_target disabled): alert POST -> first deploy request"
    note = [] if ready_target_known() else ["  (the configuration has no `ready_target` key yet: today's defaults)"]
    return latency_summary(title, trials, 1.0, None) + note + breakdown(bench, trials)


def scenario_ui(bench: Bench) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings = {PREFECT_API_URL: bench.api.url, PREFECT_API_AUTH_STRING: bench.api.auth_string}
    with temporary_settings(updates=settings), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("rollback/rollback")  # the UI has it on screen already

        def create(service: str) -> Trial:
            posted = time.time()
            parameters = {"service": service, "environment": ENVIRONMENT, "reason": "benchmark: from the UI"}
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            return Trial(service, str(run.id), posted, time.time())

        trials = [bench.one(SERVICE, create, f"ui trial {i + 1:2d}") for i in range(bench.args.trials)]
    return latency_summary("UI path: run created through the API -> first deploy request", trials, 1.5, None)


def alert_at_once(bench: Bench, names: Sequence[str]) -> list[Trial]:
    """One alert per service, all at once (a thread each, as Alertmanager sends one per alert group)."""
    trials: dict[str, Trial] = {}
    barrier = threading.Barrier(len(names))

    def post(name: str) -> None:
        barrier.wait()
        trials[name] = bench.alert(name)

    threads = [threading.Thread(target=post, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [trials[name] for name in names]


def last_dispatch(trials: Sequence[Trial]) -> float | None:
    """Seconds from the first alert to the last dispatch (None if none arrived)."""
    dispatched = [t.dispatched for t in trials if t.dispatched is not None]
    return max(dispatched) - min(t.posted for t in trials) if dispatched else None


def last_completed(trials: Sequence[Trial]) -> float | None:
    """Seconds from the first alert to the end of the last Completed run (its service healthy again)."""
    ends = [stamp(t.run.get("end_time")) for t in trials if t.state == "COMPLETED"]
    known = [end for end in ends if end is not None]
    return max(known) - min(t.posted for t in trials) if known else None


def scenario_batch(bench: Bench) -> list[str]:
    names = bench.sandbox.names
    alone = [bench.one(name, bench.alert, f"alone {name}") for name in names[: min(3, len(names))]]
    bench.break_services(names)
    print(f"batch: {len(names)} alerts at once ...", flush=True)
    trials = alert_at_once(bench, names)
    bench.wait_dispatches(trials)
    bench.finish(trials)
    healthy = sum(bench.sandbox.healthy(name) for name in names)
    title = f"{len(names)} services alerted at once (Prefect server on {database_name(bench.args.database)}):"
    return [title, *batch_summary(alone, trials), f"  healthy now: {healthy}/{len(names)}"]


def alert_group(bench: Bench, names: Sequence[str]) -> list[Trial]:
    """One Alertmanager webhook (one alert group) firing for every service: one incident run; a trial each."""
    starts_at = datetime.now(UTC)
    bodies = [
        alertmanager_body(name, starts_at=starts_at, fingerprint=f"{index:04x}{int(starts_at.timestamp()):x}")
        for index, name in enumerate(names)
    ]
    body = {**bodies[0], "groupKey": f'{{}}:{{alertname="HighErrorRate"}}:{starts_at.timestamp()}'}
    body["alerts"] = [alert for b in bodies for alert in b["alerts"]]
    posted = time.time()
    answer = httpx.post(bench.endpoint, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    answered = time.time()
    run_ids = {str(a.get("run_id") or "") for a in answer.json().get("alerts", [])} if answer.is_success else {""}
    run_id = run_ids.pop() if len(run_ids) == 1 else ""
    return [Trial(name, run_id, posted, answered) for name in names]


def scenario_incident(bench: Bench) -> list[str]:
    names = bench.sandbox.names
    alone = [bench.one(name, bench.alert, f"alone {name}") for name in names[: min(3, len(names))]]
    bench.break_services(names)
    print(f"incident: one alert group naming {len(names)} services ...", flush=True)
    trials = alert_group(bench, names)
    bench.wait_dispatches(trials)
    bench.api.wait_ended(trials[:1])
    lost = [t.service for t in trials if t.dispatched is None]
    one = statistics.median([t.latency for t in alone if t.latency is not None] or [float("nan")])
    # Time to recovery from each post-mortem: from the alert's start to the (last) service healthy again.
    alone_ttr = [bench.api.time_to_recovery(t.run_id) for t in alone]
    one_healthy = statistics.median([ttr for ttr in alone_ttr if ttr is not None] or [float("nan")])
    last, healthy = last_dispatch(trials), bench.api.time_to_recovery(trials[0].run_id)
    title = f"one incident of {len(names)} services (Prefect server on {database_name(bench.args.database)}):"
    lines = [title, f"  incident run {trials[0].run_id or '(none)'}: {trials[0].state}"]
    if last is not None:
        lines.append(
            f"  last service's dispatch {last:.2f} s after the alert; one service alone {one:.2f} s; "
            f"ratio {last / one:.2f}x {goal(last / one, 1.5, 'x')}"
        )
    if healthy is not None:
        lines.append(
            f"  time to recovery (the last service healthy, from the post-mortems) {healthy:.1f} s; one service "
            f"alone {one_healthy:.1f} s; ratio {healthy / one_healthy:.2f}x {goal(healthy / one_healthy, 1.5, 'x')}"
        )
    lines.append(f"  lost (no dispatch within {DISPATCH_TIMEOUT:.0f} s): {len(lost)} {goal(len(lost), 0, '')} {lost}")
    healthy_now = sum(bench.sandbox.healthy(name) for name in names)
    return [*lines, f"  healthy now: {healthy_now}/{len(names)}"]


def batch_summary(alone: Sequence[Trial], trials: Sequence[Trial]) -> list[str]:
    lost = [t.service for t in trials if t.dispatched is None]
    alone_latencies = [t.latency for t in alone if t.latency is not None]
    one = statistics.median(alone_latencies) if alone_latencies else None
    last = last_dispatch(trials)
    lines = []
    if last is not None and one:
        lines.append(
            f"  last dispatch {last:.2f} s after the alerts; one service alone {one:.2f} s (median of "
            f"{len(alone_latencies)}); ratio {last / one:.2f}x {goal(last / one, 1.5, 'x')}"
        )
    lines.append(f"  lost (no dispatch within {DISPATCH_TIMEOUT:.0f} s): {len(lost)} {goal(len(lost), 0, '')} {lost}")
    healthy = last_completed(trials)
    if healthy is not None:
        lines.append(f"  last run Completed (healthy) {healthy:.2f} s after the alerts")
    lines.append(f"  runs: {dict(Counter(t.state for t in trials))}")
    lines.append("  paths: " + ", ".join(f"{p} {n}" for p, n in sorted(Counter(t.path for t in trials).items())))
    return lines


def root_posted(slack: SlackStandIn, since: float, wait: float) -> int:
    """How many thread roots were posted since `since`, waiting up to `wait` s for the first."""
    deadline = time.time() + wait
    while True:
        roots = [m for m in slack.messages if m.thread_ts is None and float(m.ts) >= since]
        if roots or time.time() > deadline:
            return len(roots)
        time.sleep(0.2)


def recovery_trials(bench: Bench, label: str, hang: float) -> list[tuple[float | None, int]]:
    """(time to recovery, thread roots posted once Slack answered again) per trial.

    `hang`: Slack hangs on every call (30 s, longer than the client's timeout) from the alert until `hang` s
    after it, then answers again, while the run is still waiting to deliver (`slack.delivery_seconds` 60).
    """
    slack = bench.sandbox.slack
    results = []
    for i in range(bench.args.side_trials):
        back = None
        if hang:
            slack.set_hang(30.0)
            back = threading.Timer(hang, slack.set_hang, args=(None,))
            back.start()
        trial = bench.one(SERVICE, bench.alert, f"{label} trial {i + 1}")
        if back is not None:
            back.join()
        roots = root_posted(slack, trial.posted, 70)
        ttr = bench.api.time_to_recovery(trial.run_id) if trial.run_id else None
        print(f"  time to recovery {'-' if ttr is None else f'{ttr:.1f} s'}; thread roots {roots}", flush=True)
        results.append((ttr, roots))
    return results


def scenario_slack(bench: Bench) -> list[str]:
    hang = bench.args.slack_hang
    normal = [ttr for ttr, _ in recovery_trials(bench, "slack normal", 0) if ttr is not None]
    hung = recovery_trials(bench, f"slack hanging {hang:g} s", hang)
    hung_ttr = [ttr for ttr, _ in hung if ttr is not None]
    lines = [f"Slack hanging {hang:g} s on every call, {len(hung)} trials (time to recovery from the post-mortem):"]
    if normal and hung_ttr:
        extra = statistics.median(hung_ttr) - statistics.median(normal)
        lines.append(
            f"  median {statistics.median(hung_ttr):.1f} s vs {statistics.median(normal):.1f} s with Slack answering:"
            f" {extra:+.1f} s {goal(extra, 0.5)}"
        )
    posted = sum(1 for _, roots in hung if roots == 1)
    lines.append(f"  thread root posted once Slack answered again: {posted}/{len(hung)} runs (exactly one root)")
    return lines


@dataclass
class Calls:
    """The calls each stand-in (or proxy) received between an alert and its dispatch."""

    github: int
    registry: int
    slack: int

    @property
    def seconds(self) -> float:
        """The latency of the calls that preceded the dispatch and could be on its path: Slack's never is."""
        return self.github * GITHUB_LATENCY + self.registry * REGISTRY_LATENCY


def set_latencies(bench: Bench, proxy: LatencyProxy, on: bool) -> None:
    """Inject (or remove) the latencies."""
    bench.sandbox.github.latency_seconds = GITHUB_LATENCY if on else 0.0
    proxy.latency_seconds = REGISTRY_LATENCY if on else 0.0
    bench.sandbox.slack.latency_seconds = SLACK_LATENCY if on else 0.0


def latency_trial(bench: Bench, proxy: LatencyProxy, label: str) -> tuple[Trial, Calls]:
    """One alert with the latencies on (from the alert to the dispatch); the calls that preceded the dispatch.

    The broken version is deployed and its ready target prepared before: minutes before the alert, in life.
    """
    bench.break_services([SERVICE])
    slack_before = sum(bench.sandbox.slack.requests.values())
    set_latencies(bench, proxy, True)
    try:
        trial = bench.alert(SERVICE)
        bench.wait_dispatches([trial])
        slack_calls = sum(bench.sandbox.slack.requests.values()) - slack_before  # read at once: no timestamps there
    finally:
        set_latencies(bench, proxy, False)
    end = trial.dispatched or time.time()
    github = sum(1 for r in bench.sandbox.github.requests if trial.posted <= r.timestamp <= end)
    calls = Calls(github, proxy.received_before(end) - proxy.received_before(trial.posted), slack_calls)
    bench.finish([trial])
    print(
        f"{trial.line(label)}; before it: GitHub {calls.github}, registry {calls.registry} calls = "
        f"{calls.seconds:.2f} s of latency (and Slack {calls.slack}, beside the path)",
        flush=True,
    )
    return trial, calls


def scenario_latency(bench: Bench, proxy: LatencyProxy) -> list[str]:
    done = [latency_trial(bench, proxy, f"latency trial {i + 1}") for i in range(bench.args.side_trials)]
    ratios = [t.latency / c.seconds for t, c in done if t.latency is not None and c.seconds > 0]
    lines = [
        f"injected latency: GitHub {GITHUB_LATENCY * 1000:.0f} ms, registry {REGISTRY_LATENCY * 1000:.0f} ms (proxy), "
        f"Slack {SLACK_LATENCY * 1000:.0f} ms per call (from the alert to the dispatch)"
    ]
    if ratios:
        median = statistics.median(ratios)
        lines.append(
            f"  time to dispatch / sum of the latencies before it: median {median:.2f}x {goal(median, 1.1, 'x')}"
        )
        lines.append("  per trial: " + ", ".join(f"{r:.2f}x" for r in ratios))
    return lines


# --- the run ------------------------------------------------------------------------------------------------------


def ready_target_known() -> bool:
    return "ready_target" in RunbookConfig.model_fields


def database_name(database: Database) -> str:
    return {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[database]


def latency_config(bench: Bench, proxy: LatencyProxy) -> dict[str, Any]:
    """`shop`'s configuration with the registry reached through the proxy, and a version probe.

    The probe (a GET of the app, which is not slowed down nor counted) is where `serve`, checking its ready
    target every second, and the run read which version runs: GitHub then gets only the run's own calls.
    """
    data = bench.config([SERVICE])
    registry, app = bench.sandbox.registry.host, bench.sandbox.app.url
    data["registries"] = [{**r, "host": proxy.host} for r in data["registries"]]
    service = copy.deepcopy(data["services"][SERVICE])
    service["image"] = str(service["image"]).replace(registry, proxy.host, 1)
    service["environments"][ENVIRONMENT]["version_probe"] = {"url": f"{app}/version", "json_field": "sha"}
    data["services"] = {SERVICE: service}
    return data


Scenario = Callable[[Bench], list[str]]


def run_group(bench: Bench, name: str, data: dict[str, Any], scenarios: Sequence[Scenario]) -> list[str]:
    """The scenarios that share one configuration, under one `runbook serve`."""
    lines: list[str] = []
    with bench.serving(name, data):
        for scenario in scenarios:
            lines += scenario(bench)
    return lines


def run_all(bench: Bench, only: set[str]) -> list[str]:
    """Each selected scenario, grouped by the configuration `serve` needs; their summary lines."""
    lines: list[str] = []
    shared = {"ready": scenario_ready, "ui": scenario_ui, "slack": scenario_slack}
    default = [scenario for name, scenario in shared.items() if name in only]
    if default:
        lines += run_group(bench, "default", bench.config([SERVICE]), default)
    if "full" in only:
        lines += run_group(bench, "full", bench.config([SERVICE], ready=False), [scenario_full])
    if "batch" in only:
        lines += run_group(bench, "batch", bench.config(bench.sandbox.names), [scenario_batch])
    if "incident" in only:
        lines += run_group(bench, "incident", bench.config(bench.sandbox.names), [scenario_incident])
    if "latency" in only:
        with LatencyProxy(bench.sandbox.registry.base_url) as proxy:
            lines += run_group(bench, "latency", latency_config(bench, proxy), [lambda b: scenario_latency(b, proxy)])
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials of ready, full and ui (default 20)")
    parser.add_argument(
        "--services", type=int, default=20, help="services alerted at once by batch and incident (default 20)"
    )
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"a subset of {','.join(SCENARIOS)}")
    parser.add_argument("--side-trials", type=int, default=3, help="trials of slack and latency (default 3)")
    parser.add_argument(
        "--slack-hang", type=float, default=8.0, help="seconds Slack hangs on every call from the alert (default 8)"
    )
    parser.add_argument(
        "--settle", type=float, default=0.5, help="seconds at least from a broken deploy to its alert (default 0.5)"
    )
    parser.add_argument(
        "--ready-wait", type=float, default=15.0, help="seconds at most to wait for the ready target (default 15)"
    )
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose among {','.join(SCENARIOS)}")
    return args


def main() -> None:
    args = parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="runbook-alert-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "client-home"))  # this process's client (ui); not inherited
    many = only & {"batch", "incident"}
    services = [f"svc-{index:02d}" for index in range(1, args.services + 1)] if many else []
    # No hold: each trial is a new incident starting after the previous automatic rollback ended.
    with alerting_world(work, services=services, database=args.database) as (server, sandbox, data):
        for name in [SERVICE, *services]:
            sandbox.service(name).app.broken.clear()  # the story's versions are all good: each trial breaks one
        bench = Bench(args, server, sandbox, data, work, Api(server))
        lines = run_all(bench, only)
    print("\n" + "\n".join(lines))
    settings = getattr(commands.serve, "POLL_SETTINGS", None)
    print(f"\nPrefect server: {database_name(args.database)}; `runbook serve` settings: {settings}")
    print(f"serve logs and configurations: {work}")


if __name__ == "__main__":
    os.environ.setdefault("DO_NOT_TRACK", "1")
    main()
