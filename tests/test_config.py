"""Configuration: valid files load, invalid ones say which key and what is wrong, secrets stay references."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from commands.cli import app
from runbook.config import load_config, parse_config
from runbook.errors import ConfigError, SecretError
from runbook.targets.github_actions_settings import GitHubActionsTarget
from runbook.targets.webhook_settings import WebhookTarget

ROOT = Path(__file__).resolve().parent.parent


def _minimal() -> dict[str, Any]:
    return {
        "services": {
            "shop": {
                "repository": "acme/shop",
                "image": "ghcr.io/acme/shop",
                "environments": {
                    "production": {
                        "deploy": {"type": "github-actions"},
                        "health": {"probes": [{"url": "https://shop.example.com/health"}]},
                    }
                },
            }
        }
    }


def test_the_shipped_example_is_valid() -> None:
    config = load_config(ROOT / "runbook.example.yaml")
    service = config.service("shop")
    assert service.tag_for("a" * 40) == "a" * 40
    assert config.deploy_settings("shop", "production", GitHubActionsTarget).workflow == "rollback-production.yml"
    probe = config.environment("shop", "production").version_probe
    assert probe is not None and (probe.json_field, probe.header) == ("build.sha", None)
    assert config.deploy_settings("shop", "staging", WebhookTarget).version_field == "sha"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("services", "shop", "environments", "production", "deploy", "type"),
            "ftp",
            "services.shop.environments.production.deploy",
        ),
        (("services", "shop", "repository"), "shop", "services.shop.repository: must be 'owner/name'"),
        (("services", "shop", "tag_format"), "latest", "services.shop.tag_format: must contain {sha}"),
        (("services", "shop", "tag_format"), "{sha}-{branch}", "unknown field(s) ['branch']"),
        (
            ("github", "token"),
            "ghp_inline_secret_value",
            "github.token: secrets are referenced, never written",
        ),
        (
            ("services", "shop", "environments", "production", "health", "probes"),
            [],
            "services.shop.environments.production.health.probes",
        ),
        (
            ("services", "shop", "environments", "production", "health", "consecutive_successes"),
            0,
            "consecutive_successes: Input should be greater than or equal to 1",
        ),
        (("services", "shop", "colour"), "blue", "services.shop.colour: Extra inputs are not permitted"),
        (
            ("services", "shop", "environments", "production", "version_probe"),
            {"url": "https://shop.example.com/version", "json_field": "sha", "header": "X-Version"},
            "services.shop.environments.production.version_probe: give 'json_field' or 'header', not both",
        ),
        (
            ("services", "shop", "environments", "production", "version_probe"),
            {"url": "https://shop.example.com/version", "json_field": "build..sha"},
            "version_probe.json_field: must be a dotted path",
        ),
        (("github", "base_url"), "file:///etc/passwd", "github.base_url: must start with http:// or https://"),
        (("slack", "base_url"), "slack.com/api/", "slack.base_url: must start with http:// or https://"),
        (("registries",), [{"host": "https://ghcr.io"}], "registries.0.host: must be a registry host such as"),
        (
            ("services", "shop", "environments", "production", "deploy"),
            {"type": "webhook", "url": "http:///deploy"},
            "production.deploy.webhook.url: must name a host",
        ),
        (("github", "token"), {"env": ""}, "github.token.env: is empty: give the name of an environment variable"),
        (("github", "token"), {"env": "github token"}, "github.token.env: must be the name of an environment variable"),
        (
            ("services", "shop", "environments", "production", "health", "deadline_seconds"),
            float("inf"),
            "health.deadline_seconds: Input should be a finite number",
        ),
        (("github", "timeout_seconds"), float("nan"), "github.timeout_seconds: Input should be a finite number"),
        (
            ("services", "shop", "environments", "production", "health", "probes"),
            [{"url": "https://shop.example.com/health", "equals": "ok"}],
            "probes.0: 'equals' needs 'json_field'",
        ),
        (
            ("services", "shop", "environments", "production", "health", "probes"),
            [{"url": "https://shop.example.com/health", "json_field": "checks..db"}],
            "probes.0.json_field: must be a dotted path such as 'status'",
        ),
        (
            ("services", "shop", "environments", "production", "health", "probes"),
            [{"url": "https://shop.example.com/health", "method": "HEAD", "json_field": "status"}],
            "probes.0: a HEAD answer has no body",
        ),
        (
            ("services", "shop", "environments", "production", "health", "probes"),
            [{"url": "https://shop.example.com/health", "json_field": "status", "equals": {"a": 1}}],
            "probes.0.equals",
        ),
        (
            ("services", "shop", "environments", "production", "rehearsal"),
            {"notify": "sometimes"},
            "rehearsal.notify: Input should be 'on-problem', 'always' or 'never'",
        ),
        (
            ("services", "shop", "environments", "production", "health", "deadline_seconds"),
            30 * 24 * 3600,
            "health.deadline_seconds: Input should be less than or equal to 14400",
        ),
    ],
)
def test_invalid_values_name_the_key(path: tuple[str, ...], value: Any, expected: str) -> None:
    data = _minimal()
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="runbook.yaml")
    assert expected in str(caught.value)
    assert "ghp_inline_secret_value" not in str(caught.value)


def test_a_json_probe_keeps_the_yaml_type_of_equals() -> None:
    data = _minimal()
    probes = yaml.safe_load(
        """
        - {url: "https://shop.example.com/health", json_field: status, equals: ok}
        - {url: "https://shop.example.com/health", json_field: code, equals: 200}
        - {url: "https://shop.example.com/health", json_field: code, equals: "200"}
        - {url: "https://shop.example.com/health", json_field: up, equals: true}
        - {url: "https://shop.example.com/health", json_field: checks.db}
        - {url: "https://shop.example.com/health", method: HEAD}
        """
    )
    data["services"]["shop"]["environments"]["production"]["health"]["probes"] = probes
    parsed = parse_config(data).environment("shop", "production").health.probes
    assert [(p.json_field, p.equals) for p in parsed] == [
        ("status", "ok"),
        ("code", 200),
        ("code", "200"),
        ("up", True),
        ("checks.db", None),
        (None, None),
    ]
    assert [type(p.equals) for p in parsed[:4]] == [str, int, str, bool]


def test_unknown_service_and_environment_list_the_known_ones() -> None:
    config = parse_config(_minimal())
    with pytest.raises(ConfigError, match=r"unknown service 'cart'.*\['shop'\]"):
        config.service("cart")
    with pytest.raises(ConfigError, match=r"unknown environment 'staging'.*\['production'\]"):
        config.environment("shop", "staging")


def test_secret_references_are_read_only_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _minimal()
    data["github"] = {"token": "env:RUNBOOK_TEST_TOKEN"}
    config = parse_config(data)
    monkeypatch.delenv("RUNBOOK_TEST_TOKEN", raising=False)
    with pytest.raises(SecretError, match="environment variable RUNBOOK_TEST_TOKEN is not set"):
        config.github.token.reveal()  # type: ignore[union-attr]
    monkeypatch.setenv("RUNBOOK_TEST_TOKEN", "s3cr3t-value")
    revealed = config.github.token.reveal()  # type: ignore[union-attr]
    assert revealed.get_secret_value() == "s3cr3t-value" and "s3cr3t" not in repr(revealed)


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_minimal()))
    result = CliRunner().invoke(app, ["check-config", "--config", str(good)])
    assert result.exit_code == 0 and "configuration is valid" in result.output

    bad = _minimal()
    bad["services"]["shop"]["environments"]["production"]["health"]["probes"] = [{"url": "shop/health"}]
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(app, ["check-config", "--config", str(bad_file)])
    assert result.exit_code == 2
    assert "services.shop.environments.production.health.probes.0.url: must start with http" in result.output

    result = CliRunner().invoke(app, ["check-config", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read the configuration file" in result.output


@pytest.mark.usefixtures("prefect_server")
def test_secret_from_a_prefect_secret_block() -> None:
    from prefect.blocks.system import Secret

    Secret(value="xoxb-from-block").save("runbook-test-slack", overwrite=True)
    data = _minimal()
    data["slack"] = {"token": {"prefect_secret": "runbook-test-slack"}}
    config = parse_config(data)
    assert config.slack.token.reveal().get_secret_value() == "xoxb-from-block"  # type: ignore[union-attr]
    missing = parse_config({**data, "slack": {"token": "prefect-secret:no-such-block"}})
    with pytest.raises(SecretError, match="Prefect Secret block 'no-such-block' cannot be loaded"):
        missing.slack.token.reveal()  # type: ignore[union-attr]


def _check_config(data: dict[str, Any] | str, tmp_path: Path) -> tuple[Path, Any]:
    """The file written (YAML text as given, or dumped), and `runbook check-config` run on it."""
    file = tmp_path / "runbook.yaml"
    file.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return file, CliRunner().invoke(app, ["check-config", "--config", str(file)])


@pytest.mark.parametrize(
    ("section", "ref", "key"),
    [
        ("github", {"env": "ghp_PLANTEDa1b2c3d4e5f6a7b8c9d0e1f2a3b4c5"}, "github.token.env"),
        ("github", "env:github_pat_11PLANTED0123456789", "github.token.env"),
        ("github", {"env": "AKIAIOSFODNN7PLANTED"}, "github.token.env"),  # also a valid variable name
        ("slack", {"prefect_secret": "xoxb-1234-5678-PLANTED"}, "slack.token.prefect_secret"),
        ("slack", {"prefect_secret": "3f2a1bc9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3planted"}, "slack.token.prefect_secret"),
        ("slack", {"env": "Zx8Kq2Lm9Pv4Rt6Yw1PLANTED"}, "slack.token.env"),  # random-looking
    ],
    ids=["ghp", "short-form-github-pat", "aws-key", "xoxb-block", "hex-block", "random"],
)
def test_a_pasted_credential_is_refused_without_being_repeated(
    tmp_path: Path, section: str, ref: Any, key: str
) -> None:
    data = _minimal()
    data[section] = {"token": ref}
    file, result = _check_config(data, tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    expected = f"{key}: looks like a credential, not the name of "
    assert expected in str(caught.value) and result.exit_code == 2 and expected in result.output
    assert "PLANTED" not in str(caught.value).upper() and "PLANTED" not in result.output.upper()


def test_yaml_aliases_are_refused_naming_the_line(tmp_path: Path) -> None:
    data = _minimal()
    smoke = {"url": "https://shop.example.com/cart", "method": "POST", "body": {"laughs": 0}}
    data["services"]["shop"]["environments"]["production"]["smoke"] = [smoke]
    # The start of an alias bomb (each level nine times the one before) in a free-form field.
    bomb = "{a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]}"
    text = yaml.safe_dump(data).replace("laughs: 0", f"laughs: {bomb}")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "laughs" in row)
    file, result = _check_config(text, tmp_path)
    expected = f"line {line}, column "
    with pytest.raises(ConfigError, match=f"{expected}.*anchors and aliases .* are not allowed"):
        load_config(file)
    assert result.exit_code == 2 and expected in result.output and "&a" not in result.output


def test_a_yaml_error_does_not_quote_the_file(tmp_path: Path) -> None:
    _, result = _check_config("github:\n  token: {env: ghp_PLANTED_0123456789\nservices: {}\n", tmp_path)
    assert result.exit_code == 2 and "is not valid YAML: line 3, column" in result.output
    assert "PLANTED" not in result.output


def test_a_short_alert_token_is_refused_where_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from commands.alert_endpoint import create_app
    from runbook.alerts.launcher import PrefectLauncher

    data = _minimal()
    data["alerts"] = {"token": {"env": "RUNBOOK_TEST_ALERT_TOKEN"}}
    monkeypatch.setenv("RUNBOOK_TEST_ALERT_TOKEN", "Sh0rt-t0ken")
    file, result = _check_config(data, tmp_path)
    assert result.exit_code == 2
    assert "alerts.token: the token in environment variable RUNBOOK_TEST_ALERT_TOKEN is shorter than 16" in (
        result.output
    )
    assert "Sh0rt-t0ken" not in result.output
    with pytest.raises(ConfigError, match="shorter than 16 characters") as caught:
        create_app(load_config(file), PrefectLauncher("rollback/rollback"))  # what `runbook serve` starts
    assert "Sh0rt-t0ken" not in str(caught.value)
    monkeypatch.setenv("RUNBOOK_TEST_ALERT_TOKEN", "a-long-enough-random-token-0123")
    assert _check_config(data, tmp_path)[1].exit_code == 0


def test_the_configuration_imports_no_io_module() -> None:
    # Settings only: the checks' and the deploy targets' I/O stay out of `import runbook.config` (and its cycles).
    io_modules = [
        "runbook.prometheus",
        "runbook.smoke",
        "runbook.targets.factory",
        "runbook.targets.docker",
        "runbook.targets.github_actions",
        "runbook.targets.webhook",
    ]
    code = f"import sys, runbook.config; print([m for m in {io_modules!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_roll_back_after_names_other_services_without_a_cycle_and_orders_an_incident() -> None:
    from runbook.incidents import IncidentService, plan

    data = _minimal()
    shop = data["services"]["shop"]
    data["services"] = {name: copy.deepcopy(shop) for name in ("db", "api", "web")}
    data["services"]["web"]["roll_back_after"] = ["api"]
    data["services"]["api"]["roll_back_after"] = ["db"]
    config = parse_config(data)
    members = [IncidentService(service=s, environment="production") for s in ("web", "db")]
    # web waits for db through api, which the incident does not name; db waits for nobody.
    assert plan(config, members).first == {"web/production": ("db/production",), "db/production": ()}
    with pytest.raises(ConfigError, match="twice"):
        plan(config, [*members, members[0]])
    for broken, expected in ((["cart"], "'cart' is not another configured service"), (["web"], "a cycle")):
        data["services"]["db"]["roll_back_after"] = broken
        with pytest.raises(ConfigError, match=expected):
            parse_config(data)
