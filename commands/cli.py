"""The `runbook` command: `serve`, `rollback`, `release`, `alerts`, `worker`, `check-config`, `prefect-yaml` (the demo
is `python -m sandbox`); `status` and `history` read what Prefect keeps about the rollbacks (commands/status.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from runbook.errors import RunbookError

if TYPE_CHECKING:  # for annotations only: like the commands, import runbook.config when it is used
    from commands.serve import PrefectHere
    from runbook.config import RunbookConfig, SecretRef

app = typer.Typer(add_completion=False, no_args_is_help=True, help="The production-rollback runbook, on Prefect.")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="configuration file (default $RUNBOOK_CONFIG or ./runbook.yaml)"),
]


def prefect_defaults(home: Path | None = None) -> None:
    """Prefect settings this project wants unless the user set them: no telemetry, state kept local, and retries
    enough to hear a busy API (SQLite's lock) soon (runbook/prefect_calls.py). Before Prefect is imported."""
    from runbook.prefect_calls import BUSY_RETRIES  # imports no Prefect

    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", str(BUSY_RETRIES))
    if home is not None:
        os.environ.setdefault("PREFECT_HOME", str(home))


def _fail(exc: RunbookError) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration file; say what is wrong, key by key (exit 2 when invalid)."""
    from runbook.config import load_config

    try:
        cfg = load_config(config)
    except RunbookError as exc:
        _fail(exc)
        return
    for name, service in cfg.services.items():
        envs = ", ".join(f"{env} ({s.deploy.type})" for env, s in service.environments.items())
        typer.echo(f"service {name}: {service.repository}@{service.branch}, image {service.image}, {envs}")
    for key, ref in _secret_refs(cfg):
        if ref is not None and ref.env is not None and not os.environ.get(ref.env):
            typer.secho(f"warning: {key}: {ref.describe()} is not set here", fg=typer.colors.YELLOW)
    try:
        _check_alert_token_here(cfg)
    except RunbookError as exc:
        _fail(exc)
    typer.echo("configuration is valid")


def _secret_refs(cfg: RunbookConfig) -> list[tuple[str, SecretRef | None]]:
    """Every secret reference in the configuration, keyed by where it is configured (unset ones as None)."""
    refs: list[tuple[str, SecretRef | None]] = [("github.token", cfg.github.token), ("slack.token", cfg.slack.token)]
    refs += [("slack.webhook_url", cfg.slack.webhook_url)]
    refs += [("alerts.token", cfg.alerts.token if cfg.alerts else None)]
    refs += [(f"registries[{r.host}].password", r.password) for r in cfg.registries]
    refs += [
        (f"services.{name}.environments.{env_name}.deploy.secret", getattr(env.deploy, "secret", None))
        for name, service in cfg.services.items()
        for env_name, env in service.environments.items()
    ]
    return refs


def _check_alert_token_here(cfg: RunbookConfig) -> None:
    """Check the alert token when it is readable here: refused now rather than when `serve` starts."""
    from runbook.config import check_alert_token

    alert_token = cfg.alerts.token if cfg.alerts else None
    if alert_token is not None and alert_token.env is not None and os.environ.get(alert_token.env):
        check_alert_token(os.environ[alert_token.env], alert_token.describe())


@app.command()
def rollback(
    service: Annotated[str, typer.Option(help="configured service")],
    environment: Annotated[str, typer.Option(help="environment, e.g. production")],
    sha: Annotated[str | None, typer.Option(help="commit to return to; default the last known good")] = None,
    reason: Annotated[str, typer.Option(help="why, in a few words")] = "",
    incident: Annotated[str | None, typer.Option(help="incident id or link")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="resolve and verify only; change nothing")] = False,
    require_approval: Annotated[
        bool,
        typer.Option("--require-approval", help="pause before deploying until a person approves in the Prefect UI"),
    ] = False,
    approval_timeout: Annotated[
        int, typer.Option(min=1, help="with --require-approval: seconds to wait for it; then nothing is deployed")
    ] = 900,
    config: ConfigOption = None,
) -> None:
    """Run the rollback flow here and now (the Prefect UI and alerts use the deployments instead)."""
    prefect_defaults()
    from commands.serve import use_prefect_here
    from runbook.config import config_path, using_config

    here = use_prefect_here()  # PREFECT_API_URL, else the server of a `runbook serve` here, else a temporary one
    with using_config(config_path(config)):
        state = _run_rollback(
            service=service,
            environment=environment,
            sha=sha,
            reason=reason,
            incident=incident,
            dry_run=dry_run,
            require_approval=require_approval,
            approval_timeout_seconds=approval_timeout,
        )
    _say_where(state, here, service, environment)
    raise typer.Exit(0 if state.is_completed() else 1)


def _say_where(state: Any, here: PrefectHere, service: str, environment: str) -> None:
    """After a run from the shell: how it ended, where the run and its post-mortem are kept, how to see them."""
    from prefect.utilities.urls import url_for

    run_id = state.state_details.flow_run_id
    ended = f"{state.name}: {state.message}" if state.message else state.name
    typer.echo(f"rollback of {service}/{environment}: {ended}")
    typer.echo(
        f"run {run_id} and its post-mortem (artifact rollback-{service}-{environment}) are kept in {here.described}"
    )
    link = url_for("flow-run", obj_id=run_id) if here.api_url else None
    see = f"runbook history --service {service} --environment {environment}"
    typer.echo(f"see them: {see}" + (f", or {link}" if link else ", or `runbook serve` and its UI"))


def _run_rollback(**parameters: Any) -> Any:
    from flows.rollback import rollback as rollback_flow

    return rollback_flow(**parameters, return_state=True)


@app.command()
def release(
    sha: Annotated[str, typer.Argument(help="the version rolled back from, as the quarantine guard names it")],
    service: Annotated[str, typer.Option(help="configured service")],
    environment: Annotated[str, typer.Option(help="environment it was rolled back in, e.g. production")],
    reason: Annotated[str, typer.Option(help="why it is safe to deploy again")],
    config: ConfigOption = None,
) -> None:
    """Lift the quarantine of a version rolled back from: the quarantine guard lets it be deployed again."""
    prefect_defaults()
    from commands.serve import use_prefect_here
    from runbook.config import config_path, using_config

    use_prefect_here()  # PREFECT_API_URL, else the server of a `runbook serve` here, else a temporary one
    from flows.release import release as release_flow

    with using_config(config_path(config)):
        state = release_flow(sha=sha, service=service, environment=environment, reason=reason, return_state=True)
    if not state.is_completed():
        problem = state.result(raise_on_failure=False)
        said = problem if isinstance(problem, RunbookError) else state.message
        typer.secho(f"error: {said}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    summary = state.result()
    typer.echo(f"released {summary.sha} in {service}/{environment}: it may be deployed again; told {summary.announced}")


@app.command()
def serve(
    config: ConfigOption = None,
    alerts_host: Annotated[str, typer.Option(help="address of the alert endpoint")] = "127.0.0.1",
    alerts_port: Annotated[int, typer.Option(help="port of the alert endpoint")] = 8787,
    prefect_port: Annotated[
        int, typer.Option(help="port of the Prefect server (UI and API) started here when PREFECT_API_URL is not set")
    ] = 4200,
) -> None:
    """Serve the rollback and rehearsal deployments and the alert endpoint (Ctrl-C stops)."""
    from commands.serve import SERVE_HOME  # not Prefect: its settings are read at import, after these defaults

    prefect_defaults(Path(SERVE_HOME).resolve() if not os.environ.get("PREFECT_API_URL") else None)
    from commands.serve import serve as run_server
    from runbook.config import config_path

    try:
        run_server(config_path(config), alerts_host=alerts_host, alerts_port=alerts_port, prefect_port=prefect_port)
    except RunbookError as exc:
        _fail(exc)


@app.command()
def alerts(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 in a container)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8787,
) -> None:
    """The alert endpoint alone: runs created for the workers (SIGHUP reloads, SIGTERM drains then exits 0)."""
    prefect_defaults()  # never a home of its own: it starts no Prefect server
    from commands.alerts_server import serve_alerts
    from commands.serve import use_local_auth_string
    from runbook.config import config_path

    use_local_auth_string()  # before Prefect is imported: PREFECT_API_URL may be a local `runbook serve`'s server
    try:
        serve_alerts(config_path(config), host=host, port=port)
    except RunbookError as exc:
        _fail(exc)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(ctx: typer.Context) -> None:
    """Prefect's process worker that drains on SIGTERM (`runbook worker --pool runbook`): commands/worker.py."""
    from commands.worker import main as worker_main

    worker_main(ctx.args)


ServiceFilter = Annotated[str | None, typer.Option("--service", help="one configured service (default: all)")]
EnvironmentFilter = Annotated[str | None, typer.Option("--environment", help="one environment (default: all)")]


@app.command()
def status(
    service: ServiceFilter = None,
    environment: EnvironmentFilter = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts (shape above)")] = False,
    config: ConfigOption = None,
) -> None:
    """Per service and environment: the version running and where that was read, the ready rollback target (the
    version a rollback would go to now, its digest, its age) and the last 3 rollbacks.

    Read from the Prefect API `rollback` uses (PREFECT_API_URL, else a `runbook serve` here, else its database):
    the ready-target Variable and the rollback runs with their post-mortems.

    --json prints {"services": [{"service", "environment", "running": {"sha", "source", "read_at"} or null,
    "ready_target_enabled", "ready_target": {"sha", "title", "source", "image", "digest", "prepared_at",
    "age_seconds", "stale", ...} or null, "last_rollbacks": [a rollback as in `runbook history --json`]}]}.
    An unknown service or environment exits 2.
    """
    where = _reach_prefect()
    from commands.status import show_status
    from runbook.config import load_config

    try:
        typer.echo(show_status(load_config(config), service, environment, where, as_json=as_json), nl=False)
    except RunbookError as exc:
        _fail(exc)


@app.command()
def history(
    service: ServiceFilter = None,
    environment: EnvironmentFilter = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="how many, newest first")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts (shape above)")] = False,
    config: ConfigOption = None,
) -> None:
    """The rollbacks, newest first (each service of an incident is one): when, service/environment, trigger,
    from -> to, outcome, time to recovery (TTR), the run's link.

    --json prints {"rollbacks": [{"run_id", "run_name", "run_url", "service", "environment", "started_at",
    "ended_at" (ISO 8601, UTC), "state" (Prefect's), "outcome" (recovered, failed, dry-run, held, cancelled,
    waiting for approval, running...), "failed_step", "failure", "trigger", "reason", "incident", "incident_run"
    (the incident run's id), "from_sha", "to_sha", "digest", "time_to_recovery" (seconds)}]}; absent facts are
    null. An unknown service or environment exits 2.
    """
    where = _reach_prefect()
    from commands.status import show_history
    from runbook.config import load_config

    try:
        typer.echo(show_history(load_config(config), service, environment, limit, where, as_json=as_json), nl=False)
    except RunbookError as exc:
        _fail(exc)


def _reach_prefect() -> str:
    """The Prefect API `rollback` and `release` use (`use_prefect_here`), before Prefect is imported; said how."""
    prefect_defaults()
    from commands.serve import use_prefect_here

    return use_prefect_here().described


@app.command("prefect-yaml")
def prefect_yaml_command(config: ConfigOption = None) -> None:
    """Print prefect.yaml for this configuration (for `prefect deploy --all` with a process work pool)."""
    from deployments.spec import prefect_yaml
    from runbook.config import load_config

    try:
        typer.echo(prefect_yaml(load_config(config)), nl=False)
    except RunbookError as exc:
        _fail(exc)


def main() -> None:
    """Entry point for `python -m commands.cli`."""
    app()


if __name__ == "__main__":
    main()
