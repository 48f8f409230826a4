"""`runbook serve` on a real Prefect server backed by PostgreSQL: a run created through the API completes.

The same check as `test_a_run_created_through_the_api_completes` (test_serve.py, SQLite), with the server's
state in a throwaway PostgreSQL cluster (`sandbox.postgres`), as a shared installation would run it.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from sandbox.postgres import PostgresServer
from sandbox.serving import prefect_server
from sandbox.serving import wait_for as _wait
from sandbox.world import Sandbox
from tests.support.prefect_api import create_run, wait_terminal
from tests.support.served import serving

# The setting Prefect 3.9 reads (PREFECT_API_DATABASE_CONNECTION_URL is its older alias, also accepted).
DATABASE_URL_SETTING = "PREFECT_SERVER_DATABASE_CONNECTION_URL"


def flow_run_state(dsn: str, run_id: str) -> tuple[str, str, str] | None:
    """(state type, parameters as JSON text, deployment name) of a flow run, from its row in PostgreSQL."""
    rows = query(
        dsn,
        "select fr.state_type::text, fr.parameters::text, d.name from flow_run fr"
        " join deployment d on d.id = fr.deployment_id where fr.id = $1::uuid",
        run_id,
    )
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else None


def child_processes(pid: int) -> set[int]:
    """The live child processes of `pid` (Linux /proc): for `runbook serve`, its flow-run processes."""
    children: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):  # the thread ended meanwhile
            children.update(int(child) for child in path.read_text().split())
    return children


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query, read straight from PostgreSQL (not through Prefect)."""

    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_a_run_created_through_the_api_completes_on_postgresql(tmp_path: Path) -> None:
    server_home = tmp_path / "server-home"
    with (
        PostgresServer() as pg,
        prefect_server(str(server_home), **{DATABASE_URL_SETTING: pg.url}) as server,
    ):
        # The server migrated PostgreSQL, and kept no SQLite database on the side.
        assert query(pg.dsn, "select count(*) from flow_run")[0][0] == 0
        assert not (server_home / "prefect.db").exists(), list(server_home.iterdir())

        with (
            Sandbox(tmp_path / "sandbox", run_step_seconds=0.05) as sandbox,
            serving(server, sandbox, tmp_path, alerts=False) as served,
        ):
            before = len(sandbox.github.dispatches())
            created = time.monotonic()
            run_id = create_run(served, {"service": "shop", "environment": "production", "reason": "postgres"})
            run = wait_terminal(served, run_id)
            elapsed = time.monotonic() - created
            assert run["state"]["type"] == "COMPLETED", (run["state"], served.log.read_text()[-3000:])
            assert len(sandbox.github.dispatches()) == before + 1
            assert sandbox.app.version == sandbox.commits.last_known_good
            assert httpx.get(f"{sandbox.app.url}/health", timeout=5).status_code == 200
            row = flow_run_state(pg.dsn, run_id)
            assert row is not None, f"flow run {run_id} is not in PostgreSQL"
            state_type, parameters, deployment = row
            assert (state_type, deployment) == ("COMPLETED", "rollback"), row
            assert json.loads(parameters)["reason"] == "postgres", parameters

            # The flow-run process outlives its Completed state by a moment. Prefect's runner, stopped while it
            # still tracks that process, force-sets the run Cancelled ("Runner is shutting down."), over Completed.
            completed = time.monotonic()
            _wait(lambda: not child_processes(served.process.pid), 60, "the flow-run process to exit")
            lingered = time.monotonic() - completed

        # Stopping serve once the run's process is gone leaves the recorded outcome alone.
        assert flow_run_state(pg.dsn, run_id) == row
        print(
            f"API-created run on PostgreSQL: {elapsed:.1f} s from creation to Completed;"
            f" its process exited {lingered:.1f} s after that"
        )
