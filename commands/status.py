"""`runbook status` and `runbook history`: what Prefect already keeps about the rollbacks, read from a shell.

No store of its own: every fact is read from the Prefect API the runs went to.

- The runs: flow runs of the flow `rollback` named `rollback-<service>-<environment>` (each service of an
  `incident` is such a run too, its subflow), newest first, with their parameters and their final state.
- The step that failed: the run's `rollback-<service>-<environment>-timings` table artifact (structured).
- From and to SHA, digest, trigger, time to recovery, why it failed: the run's post-mortem, the Markdown artifact
  `rollback-<service>-<environment>`, read back by runbook/postmortem.py (`postmortem_facts`), which writes it.
  Parsing Markdown is the last resort, taken because nothing structured holds these facts: the flow's result
  (`RollbackSummary`) is not persisted, and where a deployment persists it, it lies in the result storage of the
  process that ran it, out of a shell's reach; the timings table has the steps only; the events carry the SHA
  rolled back to but not the one rolled back from, and are kept for days only.
- The running version and the ready rollback target: the Variable `ready-target-<service>-<environment>`
  (runbook/ready.py), which `runbook serve` keeps fresh and every recovered rollback writes.

Reading (`read_status`, `read_history`) is at the edge; what is said (`render_*`, `*_json`) is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from runbook.errors import ConfigError, RunbookError
from runbook.http import without_userinfo
from runbook.postmortem import artifact_key, postmortem_facts
from runbook.ready import ReadyTarget

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import Artifact, FlowRun

    from runbook.config import RunbookConfig

#: The flow whose runs are the rollbacks (flows/rollback.py), and the one whose subflows they can be.
ROLLBACK_FLOW = "rollback"
#: How many of each service's last rollbacks `runbook status` shows.
STATUS_ROLLBACKS = 3
#: Runs whose artifacts are read in one call.
_RUNS_PER_READ = 50


@dataclass(frozen=True)
class Rollback:
    """One rollback run, as Prefect keeps it: its state, its parameters and what its post-mortem says."""

    run_id: str
    run_name: str
    run_url: str | None
    service: str
    environment: str
    started_at: datetime | None
    ended_at: datetime | None
    state: str  # Prefect's state name: Completed, Failed, Cancelled, Held, Running, Paused...
    outcome: str  # recovered, failed, dry-run, held, cancelled, waiting for approval, running...
    failed_step: str | None
    failure: str | None
    trigger: str | None
    reason: str
    incident: str | None
    incident_run: str | None  # the `incident` run it was one service of (its id), if any
    from_sha: str | None
    to_sha: str | None
    digest: str | None
    time_to_recovery: float | None

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["started_at"] = _iso(self.started_at)
        value["ended_at"] = _iso(self.ended_at)
        return value


@dataclass(frozen=True)
class ServiceStatus:
    """One service in one environment: its ready rollback target (None: none kept) and its last rollbacks."""

    service: str
    environment: str
    ready: ReadyTarget | None
    ready_enabled: bool
    max_age: float
    rollbacks: list[Rollback]


# --- what is read (I/O) -------------------------------------------------------------------------------------


def scopes(config: RunbookConfig, service: str | None, environment: str | None) -> list[tuple[str, str]]:
    """The configured (service, environment) pairs the filters select; a ConfigError naming the known ones."""
    services = [service] if service else sorted(config.services)
    if service:
        config.service(service)  # unknown: ConfigError listing the configured ones
    if environment and service:
        config.environment(service, environment)
    pairs = [(s, e) for s in services for e in config.services[s].environments if environment in (None, e)]
    if not pairs:
        known = sorted({e for s in config.services.values() for e in s.environments})
        raise ConfigError(
            f"no configured service has an environment {environment!r}",
            hint=f"choose one of {known} or add it under services.<name>.environments",
        )
    return pairs


def read_status(config: RunbookConfig, pairs: Sequence[tuple[str, str]]) -> list[ServiceStatus]:
    """Each pair's ready target (the Variable) and its last `STATUS_ROLLBACKS` rollbacks."""
    from runbook import ready as ready_record

    settings = config.ready_target
    found: list[ServiceStatus] = []
    with _client() as client:
        for service, environment in pairs:
            target = ready_record.read(client, service, environment) if settings.enabled else None
            runs = _rollbacks(client, [(service, environment)], STATUS_ROLLBACKS)
            found.append(ServiceStatus(service, environment, target, settings.enabled, settings.max_age_seconds, runs))
    return found


def read_history(pairs: Sequence[tuple[str, str]], limit: int) -> list[Rollback]:
    """The last `limit` rollbacks of these pairs, newest first."""
    with _client() as client:
        return _rollbacks(client, pairs, limit)


@contextmanager
def _client() -> Iterator[SyncPrefectClient]:
    """Prefect's sync client of the configured API; a plain error instead of a traceback when it cannot be read."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url  # None: a temporary server over PREFECT_HOME's database
    try:
        with get_client(sync_client=True) as client:
            yield client
    except (httpx.HTTPError, OSError) as exc:
        said = str(exc).splitlines()[0] if str(exc) else "no answer"
        api = without_userinfo(url or "a temporary server")
        raise RunbookError(
            f"the Prefect API at {api} could not be read ({type(exc).__name__}: {said})",
            hint="is the server up (`runbook serve`), and are PREFECT_API_URL and PREFECT_API_AUTH_STRING right?",
        ) from None


def _rollbacks(client: SyncPrefectClient, pairs: Sequence[tuple[str, str]], limit: int) -> list[Rollback]:
    """The newest `limit` runs of the `rollback` flow for these pairs, with their artifacts, newest first."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    wanted = set(pairs)
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[ROLLBACK_FLOW])),
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"rollback-{s}-{e}" for s, e in pairs])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=limit,
    )
    # Names join with dashes (`a-b`+`c`, `a`+`b-c`): the parameters say whose run it is.
    runs = [run for run in runs if (run.parameters.get("service"), run.parameters.get("environment")) in wanted]
    found = _artifacts(client, runs)
    parents = _incident_runs(client, runs)
    return [_rollback(run, found.get(str(run.id), {}), parents.get(str(run.id))) for run in runs]


def _artifacts(client: SyncPrefectClient, runs: Sequence[FlowRun]) -> dict[str, dict[str, Artifact]]:
    """Each run's post-mortem artifacts by key (its newest version: a Retry writes them again)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    keys = {artifact_key(r.parameters["service"], r.parameters["environment"]) for r in runs}
    found: list[Artifact] = []
    # The API answers at most 200 a call: two artifacts a run, more after a Retry (newest first, so kept).
    for start in range(0, len(runs), _RUNS_PER_READ):
        found += client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in runs[start : start + _RUNS_PER_READ]]),
                key=ArtifactFilterKey(any_=sorted(keys | {f"{key}-timings" for key in keys})),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=200,
        )
    by_run: dict[str, dict[str, Artifact]] = {}
    for artifact in sorted(found, key=lambda a: a.created or datetime.min.replace(tzinfo=UTC)):
        if artifact.key and artifact.flow_run_id:
            by_run.setdefault(str(artifact.flow_run_id), {})[artifact.key] = artifact
    return by_run


def _incident_runs(client: SyncPrefectClient, runs: Sequence[FlowRun]) -> dict[str, str]:
    """The `incident` run each subflow belongs to: run id -> the incident run's id."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    parents = {run.parent_task_run_id: str(run.id) for run in runs if run.parent_task_run_id}
    if not parents:
        return {}
    tasks = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=list(parents))))
    return {parents[task.id]: str(task.flow_run_id) for task in tasks if task.id in parents and task.flow_run_id}


def _rollback(run: FlowRun, artifacts: dict[str, Artifact], incident_run: str | None) -> Rollback:
    """One run as a `Rollback`: its state, its parameters, and what its artifacts say."""
    from prefect.utilities.urls import url_for

    service, environment = str(run.parameters["service"]), str(run.parameters["environment"])
    key = artifact_key(service, environment)
    facts = postmortem_facts(_text(artifacts.get(key)))
    failed_step = failed_step_of(_rows(artifacts.get(f"{key}-timings")))
    state_type = run.state_type.value if run.state_type else "PENDING"
    dry_run = bool(run.parameters.get("dry_run"))
    failure = facts.get("failure") or (run.state.message if run.state and state_type != "COMPLETED" else None)
    return Rollback(
        run_id=str(run.id),
        run_name=run.name,
        run_url=url_for("flow-run", obj_id=run.id),
        service=service,
        environment=environment,
        started_at=run.start_time or run.expected_start_time,
        ended_at=run.end_time,
        state=run.state_name or state_type.title(),
        outcome=outcome_of(state_type, run.state_name, dry_run),
        failed_step=failed_step,
        failure=failure or None,
        trigger=facts.get("trigger"),
        reason=str(run.parameters.get("reason") or ""),
        incident=run.parameters.get("incident") or None,
        incident_run=incident_run,
        from_sha=facts.get("from_sha"),
        to_sha=facts.get("to_sha"),
        digest=facts.get("digest"),
        time_to_recovery=float(facts["ttr"]) if facts.get("ttr") else None,
    )


def _text(artifact: Artifact | None) -> str:
    return str(artifact.data) if artifact is not None and artifact.data is not None else ""


def _rows(artifact: Artifact | None) -> list[dict[str, Any]]:
    """A table artifact's rows (Prefect keeps them as JSON text)."""
    if artifact is None or artifact.data is None:
        return []
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return [row for row in data if isinstance(row, dict)] if isinstance(data, list) else []


# --- what is said (pure) ------------------------------------------------------------------------------------


def failed_step_of(rows: Iterable[dict[str, Any]]) -> str | None:
    """The last step the timings table marks failed, if any."""
    failed = [str(row.get("step")) for row in rows if row.get("state") == "failed"]
    return failed[-1] if failed else None


def outcome_of(state_type: str, state_name: str | None, dry_run: bool) -> str:
    """A run's outcome in the runbook's words, from its Prefect state."""
    if state_type == "COMPLETED":
        return "dry-run" if dry_run else "recovered"
    if state_type in ("FAILED", "CRASHED"):
        return "failed"
    if state_type == "CANCELLED":
        return "held" if state_name == "Held" else "cancelled"
    if state_type == "PAUSED":
        return "waiting for approval"
    return (state_name or state_type).lower()


def ago(moment: datetime | None, now: datetime) -> str:
    """`12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`."""
    if moment is None:
        return "at an unknown time"
    seconds = max((now - moment).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _short(sha: str | None) -> str:
    return sha[:7] if sha else "?"


def _versions(run: Rollback) -> str:
    if run.from_sha is None and run.to_sha is None:
        return "-"
    return f"{_short(run.from_sha)} -> {_short(run.to_sha)}"


def _ttr(run: Rollback) -> str:
    return f"{run.time_to_recovery:.1f} s" if run.time_to_recovery is not None else "-"


def _outcome_text(run: Rollback) -> str:
    """`recovered`, `failed at deploy`, `held`..."""
    return f"{run.outcome} at {run.failed_step}" if run.outcome == "failed" and run.failed_step else run.outcome


def _why(run: Rollback) -> str | None:
    """Why it did not recover, on its own line under the run's (too long for a column)."""
    return f"why: {run.failure}" if run.failure and run.outcome != "recovered" else None


def _trigger(run: Rollback) -> str:
    parts = [run.trigger or "-"]
    if run.incident:
        parts.append(f"incident {run.incident}")
    if run.incident_run:
        parts.append(f"in incident run {run.incident_run[:8]}")
    return ", ".join(parts)


def _table(header: Sequence[str], runs: Sequence[Rollback], with_scope: bool, indent: str = "") -> list[str]:
    """Plain columns, each as wide as its widest cell, the run's link last (not padded); under a run that did not
    recover, why."""
    rows = [_history_row(run, with_scope) for run in runs]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]

    def line(row: Sequence[str]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        return indent + "  ".join(cells).rstrip()

    lines = [line(header)]
    for run, row in zip(runs, rows, strict=True):
        lines.append(line(row))
        if why := _why(run):
            lines.append(f"{indent}{' ' * (widths[0] + 2)}{why}")
    return lines


_HISTORY_HEADER = ("when", "service/env", "trigger", "from -> to", "outcome", "TTR", "run")


def _history_row(run: Rollback, with_scope: bool = True) -> list[str]:
    row = [_when(run.started_at), f"{run.service}/{run.environment}", _trigger(run), _versions(run)]
    row += [_outcome_text(run), _ttr(run), run.run_url or run.run_id]
    return row if with_scope else row[:1] + row[2:]


def render_history(runs: Sequence[Rollback], scope: str, where: str) -> str:
    """`runbook history`: one line per rollback, newest first (`where`: the Prefect API read, said when empty)."""
    if not runs:
        return f"no rollback recorded for {scope} in {where}\n"
    return "\n".join(_table(_HISTORY_HEADER, runs, with_scope=True)) + "\n"


def _running_lines(status: ServiceStatus, now: datetime) -> list[str]:
    ready = status.ready
    last = next((run for run in status.rollbacks if run.outcome == "recovered"), None)
    if ready is None:
        line = "running:       unknown here (read when the ready target is prepared, see below)"
        if last is not None:
            line += f"; the last rollback went to {_short(last.to_sha)}, {ago(last.started_at, now)}"
        return [line]
    line = f"running:       {ready.running[:12]} (read from {ready.running_source}, {ago(ready.prepared_at, now)})"
    if last is not None and last.to_sha == ready.running:
        line += f", deployed by the rollback run {last.run_id[:8]}"
    return [line]


def _ready_lines(status: ServiceStatus, now: datetime) -> list[str]:
    ready = status.ready
    if not status.ready_enabled:
        return ["ready target:  off in the configuration (ready_target.enabled: false): a rollback resolves in full"]
    if ready is None:
        return [
            "ready target:  none kept: `runbook serve` prepares one for each service and environment (and every",
            "               recovered rollback does); start `runbook serve`, or see what a rollback would choose",
            f"               with `runbook rollback --service {status.service} --environment {status.environment}"
            " --dry-run`",
        ]
    lines = [
        f"ready target:  {ready.sha[:12]} {ready.title!r} ({ready.source}), prepared {ago(ready.prepared_at, now)}",
        f"               image {ready.image} = {ready.digest}",
    ]
    if ready.age(now) > status.max_age:
        lines.append(
            f"               older than ready_target.max_age_seconds ({status.max_age:.0f} s): a rollback now"
            " resolves in full; is `runbook serve` running?"
        )
    if ready.warning:
        lines.append(f"               warning: {ready.warning}")
    return lines


def _rollback_lines(status: ServiceStatus, where: str) -> list[str]:
    if not status.rollbacks:
        return [f"last rollbacks: none recorded in {where}"]
    header = [h for h in _HISTORY_HEADER if h != "service/env"]
    return ["last rollbacks:", *_table(header, status.rollbacks, with_scope=False, indent="  ")]


def render_status(statuses: Sequence[ServiceStatus], now: datetime, where: str) -> str:
    """`runbook status`: per service and environment, what runs, the way back ready, the last rollbacks."""
    blocks = []
    for status in statuses:
        lines = [f"{status.service}/{status.environment}"]
        lines += ["  " + line for line in _running_lines(status, now) + _ready_lines(status, now)]
        lines += ["  " + line for line in _rollback_lines(status, where)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _ready_json(status: ServiceStatus, now: datetime) -> dict[str, Any] | None:
    ready = status.ready
    if ready is None:
        return None
    value = ready.to_value()
    value.pop("basis", None)  # a digest of the configuration: nothing a person or a script reads
    value["age_seconds"] = round(ready.age(now), 1)
    value["stale"] = ready.age(now) > status.max_age
    return value


def status_json(statuses: Sequence[ServiceStatus], now: datetime) -> str:
    """`runbook status --json` (shape in the command's help)."""
    services = []
    for status in statuses:
        ready = status.ready
        services.append(
            {
                "service": status.service,
                "environment": status.environment,
                "running": None
                if ready is None
                else {"sha": ready.running, "source": ready.running_source, "read_at": _iso(ready.prepared_at)},
                "ready_target_enabled": status.ready_enabled,
                "ready_target": _ready_json(status, now),
                "last_rollbacks": [run.to_json() for run in status.rollbacks],
            }
        )
    return json.dumps({"services": services}, indent=2)


def history_json(runs: Sequence[Rollback]) -> str:
    """`runbook history --json` (shape in the command's help)."""
    return json.dumps({"rollbacks": [run.to_json() for run in runs]}, indent=2)


# --- the commands -------------------------------------------------------------------------------------------


def show_status(
    config: RunbookConfig, service: str | None, environment: str | None, where: str, *, as_json: bool
) -> str:
    """What `runbook status` prints (`where`: the Prefect API it reads, in words)."""
    statuses = read_status(config, scopes(config, service, environment))
    now = datetime.now(UTC)
    return status_json(statuses, now) + "\n" if as_json else render_status(statuses, now, where)


def show_history(
    config: RunbookConfig, service: str | None, environment: str | None, limit: int, where: str, *, as_json: bool
) -> str:
    """What `runbook history` prints (`where`: the Prefect API it reads, in words)."""
    runs = read_history(scopes(config, service, environment), limit)
    if as_json:
        return history_json(runs) + "\n"
    scope = "/".join(part for part in (service, environment) if part) or "any configured service"
    return render_history(runs, scope, where)
