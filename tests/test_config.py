"""Configuration: valid files load, invalid ones say which key and what is wrong, secrets stay references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from runbook.cli import app
from runbook.config import load_config, parse_config
from runbook.errors import ConfigError, SecretError

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
    assert config.environment("shop", "production").deploy.workflow == "rollback-production.yml"
    probe = config.environment("shop", "production").version_probe
    assert probe is not None and (probe.json_field, probe.header) == ("build.sha", None)
    assert config.environment("shop", "staging").deploy.version_field == "sha"


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
