"""The deploy targets' docs stay true to the code: the label, every setting, the words the runbook reads.

docs/docker.md and docs/webhook.md are the contract other teams build against (an image's labels, a deploy
API's answers); these plain checks fail when a setting, the default label or a status word changes in the code
and not in its doc.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from runbook.targets.base import DeployRequest
from runbook.targets.docker_settings import DockerTarget
from runbook.targets.webhook import FAILED, SUCCEEDED, request_body
from runbook.targets.webhook_settings import WebhookTarget

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOCKER = (DOCS / "docker.md").read_text()
WEBHOOK = (DOCS / "webhook.md").read_text()


def test_the_docker_doc_names_the_default_sha_label() -> None:
    default = DockerTarget.model_fields["sha_label"].default
    [stated] = re.findall(r"^\| `sha_label` \| `([^`]+)` \|", DOCKER, flags=re.MULTILINE)
    assert stated == default == "org.opencontainers.image.revision"
    # Every way of setting it shown (docker build --label, LABEL, a config's labels) uses that very name.
    shown = re.findall(r"(?:--label |LABEL |Labels \")([\w.-]+)", DOCKER)
    assert len(shown) >= 3 and set(shown) == {default}


@pytest.mark.parametrize(("model", "doc"), [(DockerTarget, DOCKER), (WebhookTarget, WEBHOOK)])
def test_every_setting_is_in_its_doc(model: type[BaseModel], doc: str) -> None:
    missing = [name for name in model.model_fields if f"| `{name}` |" not in doc]
    assert missing == [], f"settings of {model.__name__} missing from the settings table of its doc"


def test_the_webhook_doc_names_every_body_field_and_status_word() -> None:
    request = DeployRequest("shop", "production", "3f2a1bc", "shop@sha256:ab", "sha256:ab", "why", "0b9e")
    fields = json.loads(request_body(request))
    assert [name for name in fields if f"| `{name}` |" not in WEBHOOK] == []
    assert [word for word in SUCCEEDED | FAILED if f"`{word}`" not in WEBHOOK] == []


@pytest.mark.parametrize("doc", ["docker.md", "webhook.md"])
def test_relative_links_resolve(doc: str) -> None:
    text = (DOCS / doc).read_text()
    links = [link for link in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in link]
    assert [link for link in links if not (DOCS / link).resolve().exists()] == []
