"""The project's Prefect deployments, in one place: served by `runbook serve`, written to prefect.yaml.

- `rollback`: no schedule; started from the UI (a form with the configured services and environments as
  choices), by the alert endpoint, or through the API. No parameter chooses the configuration (the serving
  process's `$RUNBOOK_CONFIG`), silences Slack or names the trigger.
- `incident`: no schedule; several services of one incident rolled back together (flows/incident.py), from
  the UI (a list of services and environments, with the configured ones as choices), the API, or the alert
  endpoint when one alert group names several services.
- `release`: lifts the quarantine of a version rolled back from (flows/release.py), from the UI or
  `runbook release`.
- `rehearsal-<service>-<environment>`: one per configured environment with a `rehearsal` schedule;
  `drill` where the environment is marked `staging: true`, `preflight` (changes nothing) elsewhere; the
  schedule's `notify` (on-problem, always, never) is the runs' `notify` parameter: when Slack gets the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from runbook.config import RunbookConfig

ROLLBACK_ENTRYPOINT = "flows/rollback.py:rollback"
REHEARSAL_ENTRYPOINT = "flows/rehearsal.py:rehearsal"
INCIDENT_ENTRYPOINT = "flows/incident.py:incident"
RELEASE_ENTRYPOINT = "flows/release.py:release"
WORK_POOL = "runbook"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: which flow, its defaults, its schedule."""

    name: str
    entrypoint: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    timezone: str = "UTC"
    tags: tuple[str, ...] = ()

    @property
    def flow_name(self) -> str:
        return self.entrypoint.rsplit(":", 1)[1]


def deployment_specs(config: RunbookConfig) -> list[DeploymentSpec]:
    """Every deployment the configuration calls for."""
    specs = [
        DeploymentSpec(
            name="rollback",
            entrypoint=ROLLBACK_ENTRYPOINT,
            description="Roll a service back to its last stable version (or a given SHA): resolve the SHA, verify "
            "the image, redeploy, check health, tell Slack, write the post-mortem.",
            tags=("runbook", "rollback"),
        ),
        DeploymentSpec(
            name="incident",
            entrypoint=INCIDENT_ENTRYPOINT,
            description="Roll several services of one incident back together: each one's rollback as a subflow, "
            "one Slack thread, one post-mortem.",
            tags=("runbook", "incident"),
        ),
        DeploymentSpec(
            name="release",
            entrypoint=RELEASE_ENTRYPOINT,
            description="Lift the quarantine of a version rolled back from: the application's deploy workflow may "
            "deploy it again (recorded in GitHub Deployments, told in Slack).",
            tags=("runbook", "release"),
        ),
    ]
    for service_name, service in sorted(config.services.items()):
        for env_name, env in sorted(service.environments.items()):
            if env.rehearsal is None:
                continue
            mode = "drill" if env.staging else "preflight"
            specs.append(
                DeploymentSpec(
                    name=f"rehearsal-{service_name}-{env_name}",
                    entrypoint=REHEARSAL_ENTRYPOINT,
                    description=f"Scheduled rollback rehearsal ({mode}) of {service_name} in {env_name}; "
                    f"Slack report: {env.rehearsal.notify}.",
                    # notify as a parameter of the scheduled runs: the deployment shows when Slack is told.
                    parameters={
                        "service": service_name,
                        "environment": env_name,
                        "mode": mode,
                        "notify": env.rehearsal.notify,
                    },
                    cron=env.rehearsal.cron,
                    timezone=env.rehearsal.timezone,
                    tags=("runbook", "rehearsal"),
                )
            )
    return specs


def prefect_yaml(config: RunbookConfig, *, work_pool: str = WORK_POOL) -> str:
    """prefect.yaml for `prefect deploy --all` with a process work pool (`runbook prefect-yaml` writes it)."""
    deployments: list[dict[str, Any]] = []
    for spec in deployment_specs(config):
        entry: dict[str, Any] = {
            "name": spec.name,
            "entrypoint": spec.entrypoint,
            "description": spec.description,
            "tags": list(spec.tags),
            "work_pool": {"name": work_pool},
        }
        if spec.parameters:
            entry["parameters"] = spec.parameters
        if spec.cron:
            entry["schedules"] = [{"cron": spec.cron, "timezone": spec.timezone}]
        deployments.append(entry)
    document = {
        "name": "rollback-runbook",
        "prefect-version": "3.9.1",
        # The worker runs the flows from this checkout (installed with `pip install -e .`).
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $RUNBOOK_PROJECT_DIR }}"}}],
        "deployments": deployments,
    }
    header = (
        "# Generated by `runbook prefect-yaml --config runbook.example.yaml > prefect.yaml`: edit the configuration,\n"
        "# then generate again. Deploy with a process work pool:\n"
        "#   prefect work-pool create runbook --type process\n"
        "#   RUNBOOK_CONFIG=$PWD/runbook.yaml RUNBOOK_PROJECT_DIR=$PWD prefect deploy --all\n"
        "#   PREFECT_WORKER_QUERY_SECONDS=1 PREFECT_CLIENT_MAX_RETRIES=30 RUNBOOK_CONFIG=$PWD/runbook.yaml \\\n"
        "#     RUNBOOK_PROJECT_DIR=$PWD runbook worker --pool runbook   # Prefect's worker, draining on SIGTERM\n"
        "# with PREFECT_API_URL and PREFECT_API_AUTH_STRING of the server in both environments (README: Security).\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, width=120)


def runner_deployments(config: RunbookConfig) -> list[Any]:
    """The deployments as Prefect RunnerDeployments, for `prefect.serve` (what `runbook serve` runs)."""
    from prefect.schedules import Cron

    from flows.incident import incident
    from flows.rehearsal import rehearsal
    from flows.release import release
    from flows.rollback import rollback

    flows: dict[str, Any] = {"rollback": rollback, "rehearsal": rehearsal, "incident": incident, "release": release}
    return [
        with_choices(
            flows[spec.flow_name].to_deployment(
                name=spec.name,
                description=spec.description,
                parameters=spec.parameters or None,
                schedules=[Cron(spec.cron, timezone=spec.timezone)] if spec.cron else None,
                tags=list(spec.tags),
            ),
            config,
        )
        for spec in deployment_specs(config)
    ]


def with_choices(deployment: Any, config: RunbookConfig) -> Any:
    """The form's service and environment choices, from `config` (the flow's module reads no configuration).

    `prefect deploy --all` (workers) builds the schema from the flow alone: there the two fields are plain text,
    and a run naming an unknown service or environment fails at once, listing the configured ones.

    They are also what the Prefect API validates a new run against (a service it does not list is a 409), so
    `runbook serve` reloading its configuration (SIGHUP) registers them again from the new file.
    """
    services = sorted(config.services)
    environments = sorted({env for service in config.services.values() for env in service.environments})
    schema = deployment._parameter_openapi_schema
    # The incident's rows (`services`: a list of IncidentService) get the same choices as the rollback's fields.
    rows = (schema.definitions or {}).get("IncidentService", {}).get("properties", {})
    for properties in (schema.properties, rows):
        for name, choices in (("service", services), ("environment", environments)):
            if name in properties:
                properties[name]["enum"] = choices
    return deployment
