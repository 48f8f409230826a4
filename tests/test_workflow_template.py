"""The `rollback-production` workflow shipped for the application's repository: valid, and true to the contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "deployments" / "github" / "rollback-production.yml"


def _actionlint() -> str:
    found = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    assert Path(found).exists(), "actionlint is missing: install the test extras (pip install -e '.[test]')"
    return found


def test_actionlint_accepts_the_template() -> None:
    result = subprocess.run([_actionlint(), "-no-color", str(TEMPLATE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(TEMPLATE.read_text().replace("${{ inputs.sha }}", "${{ inputs.shaa }}", 1))
    result = subprocess.run([_actionlint(), "-no-color", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "shaa" in result.stdout


def test_dispatch_contract_required_sha_and_no_build() -> None:
    workflow = yaml.safe_load(TEMPLATE.read_text())
    trigger = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert trigger["workflow_dispatch"]["inputs"]["sha"]["required"] is True
    text = TEMPLATE.read_text()
    assert "docker build" not in text and "docker push" not in text
    assert "docker pull" in text and "Deploy by digest" in text
