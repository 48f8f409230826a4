"""A real Prefect server (`prefect server start`) and `runbook serve` in front of the sandbox, for trigger tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest

from commands.serve import LocalServer
from sandbox.serving import prefect_server
from sandbox.world import Sandbox
from tests.support.served import Served, serving


# Session-scoped (each xdist worker's whole session), not package-scoped: `--dist loadfile` interleaves this
# package's files with others on a worker, and a package-scoped server was stopped and started again each time
# (about 12 s each). `served` stays package-scoped: idle, `runbook serve` polls that server (about 8% of a core
# between them), which costs more over a whole session than starting it again (about 4 s).
@pytest.fixture(scope="session")
def prefect_api() -> Iterator[LocalServer]:
    """A real `prefect server start` on SQLite, on a free port, wanting the auth string it made in its home."""
    home = tempfile.mkdtemp(prefix="runbook-server-")
    with prefect_server(home, timeout=90) as server:
        yield server


@pytest.fixture(scope="package")
def served(prefect_api: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("served")
    with Sandbox(workdir / "sandbox", run_step_seconds=0.05) as sandbox, serving(prefect_api, sandbox, workdir) as s:
        yield s
