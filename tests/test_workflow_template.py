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


# --- quarantine-guard.yml: the reusable workflow the application's deploy calls (tests/flows/test_quarantine.py
# runs its script against the GitHub stand-in) ---

GUARD = TEMPLATE.parent / "quarantine-guard.yml"


def test_actionlint_accepts_the_quarantine_guard() -> None:
    result = subprocess.run([_actionlint(), "-no-color", str(GUARD)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_would_catch_a_broken_quarantine_guard(tmp_path: Path) -> None:
    broken = tmp_path / "quarantine-guard.yml"
    broken.write_text(GUARD.read_text().replace("${{ inputs.environment }}", "${{ inputs.enviroment }}", 1))
    result = subprocess.run([_actionlint(), "-no-color", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "enviroment" in result.stdout


def test_quarantine_guard_contract_called_with_sha_and_environment_reading_deployments_only() -> None:
    workflow = yaml.safe_load(GUARD.read_text())
    inputs = workflow[True]["workflow_call"]["inputs"]  # YAML 1.1 reads the key `on` as a boolean
    assert inputs["sha"]["required"] is True and inputs["environment"]["required"] is True
    assert workflow["permissions"] == {"deployments": "read"}
    [job] = workflow["jobs"].values()
    assert job["permissions"] == {"deployments": "read"}
    [step] = job["steps"]
    # The script takes everything from env:, so the shipped text is the tested text (no expression inside).
    assert "${{" not in step["run"] and step["env"]["GH_TOKEN"] == "${{ secrets.token || github.token }}"
    assert {"SHA", "ENVIRONMENT"} <= set(step["env"])
    # How the application's deploy workflow calls it is written down where a person copying the template looks.
    call = "uses: ./.github/workflows/quarantine-guard.yml"
    assert call in GUARD.read_text() and call in TEMPLATE.read_text()
