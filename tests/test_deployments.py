"""The deployments: prefect.yaml is what the generator makes of the example; the shell command runs the flow."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from commands.cli import app
from deployments.spec import deployment_specs, prefect_yaml, runner_deployments
from runbook.config import load_config, parse_config
from sandbox.world import Sandbox

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_prefect_yaml_is_generated_from_the_example() -> None:
    expected = prefect_yaml(load_config(ROOT / "runbook.example.yaml"))
    assert (ROOT / "prefect.yaml").read_text() == expected, (
        "prefect.yaml is stale: run `runbook prefect-yaml --config runbook.example.yaml > prefect.yaml`"
    )


def test_one_rehearsal_per_environment_drill_only_in_staging() -> None:
    specs = {spec.name: spec for spec in deployment_specs(load_config(ROOT / "runbook.example.yaml"))}
    assert set(specs) == {"rollback", "incident", "release", "rehearsal-shop-production", "rehearsal-shop-staging"}
    assert specs["rollback"].cron is None
    assert specs["rehearsal-shop-production"].parameters["mode"] == "preflight"
    assert specs["rehearsal-shop-staging"].parameters["mode"] == "drill"
    assert specs["rehearsal-shop-staging"].timezone == "Europe/Paris"
    # onprem says `rehearsal: null`: no deployment; the others tell Slack only when not ready (the default).
    assert {spec.parameters.get("notify") for spec in specs.values() if spec.cron} == {"on-problem"}


def test_a_schedule_s_notify_is_the_parameter_of_its_runs_served_or_deployed() -> None:
    data = yaml.safe_load((ROOT / "runbook.example.yaml").read_text())
    environments = data["services"]["shop"]["environments"]
    environments["production"]["rehearsal"]["notify"] = "never"
    environments["staging"]["rehearsal"]["notify"] = "always"
    config = parse_config(data)
    wanted = {"rehearsal-shop-production": "never", "rehearsal-shop-staging": "always"}

    assert {s.name: s.parameters["notify"] for s in deployment_specs(config) if s.cron} == wanted
    written = yaml.safe_load(prefect_yaml(config))["deployments"]
    assert {d["name"]: d["parameters"]["notify"] for d in written if "schedules" in d} == wanted
    served = {d.name: d.parameters.get("notify") for d in runner_deployments(config) if d.schedules}
    assert served == wanted


@pytest.mark.usefixtures("prefect_server")
def test_runbook_rollback_dry_run_from_the_shell(tmp_path: Path) -> None:
    with Sandbox(tmp_path, run_step_seconds=0.05) as sandbox:

        def runbook_rollback(*extra: str) -> Result:
            base = [
                "rollback",
                "--service",
                "shop",
                "--environment",
                "production",
                "--config",
                str(sandbox.config_path),
            ]
            return CliRunner().invoke(app, [*base, *extra])

        result = runbook_rollback("--dry-run")
        assert result.exit_code == 0, result.output
        assert sandbox.github.mutating_requests() == [] and sandbox.slack.messages == []

        result = runbook_rollback("--sha", "zzz")
        assert result.exit_code == 1
        assert sandbox.github.dispatches() == []


def test_the_incident_form_offers_the_configured_services_and_environments_in_each_row() -> None:
    config = load_config(ROOT / "runbook.example.yaml")
    [incident] = [d for d in runner_deployments(config) if d.name == "incident"]
    schema = incident._parameter_openapi_schema
    assert schema.properties["services"]["items"] == {"$ref": "#/definitions/IncidentService"}
    row = schema.definitions["IncidentService"]["properties"]
    assert row["service"]["enum"] == ["shop"] and row["environment"]["enum"] == ["onprem", "production", "staging"]
