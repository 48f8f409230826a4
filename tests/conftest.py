"""Test-wide setup: Prefect kept out of the user's home, no telemetry, one Prefect test server per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Before Prefect is imported anywhere: its settings are read at import.
_PREFECT_HOME = tempfile.mkdtemp(prefix="runbook-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# Links to the run (Slack, post-mortem, GitHub deployment log URL) are built from the UI's address.
os.environ.setdefault("PREFECT_UI_URL", "http://127.0.0.1:4200")
# As under `runbook serve`: a busy answer (SQLite's lock) retried within 0.1-2 s (runbook/prefect_calls.py).
os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "30")

import pytest  # noqa: E402

if TYPE_CHECKING:
    from sandbox.world import Sandbox

OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for the whole session (starting one costs seconds, see PREFECT-NOTES)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from runbook.prefect_calls import hear_busy_soon

    hear_busy_soon()

    with (
        prefect_test_harness(server_startup_timeout=90),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests keep what a person may want to look at (screenshots, rendered post-mortems)."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """The sandbox world (real registry, GitHub and Slack stand-ins, the app), fresh for each test."""
    from sandbox.world import Sandbox

    with Sandbox(tmp_path, run_step_seconds=0.05) as world:
        yield world
