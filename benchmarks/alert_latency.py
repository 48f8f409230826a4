"""Time from an alert POST to the first deploy request reaching the target, with `runbook serve` running.

Run: .venv/bin/python benchmarks/alert_latency.py [--trials 20]
Starts a real `prefect server start` (SQLite), the sandbox (GitHub and Slack stand-ins, registry, app), and
`runbook serve` against them; then, per trial, a new broken version is deployed in the sandbox, an
Alertmanager webhook body is POSTed to the alert endpoint, and the latency is the time until the
GitHub stand-in receives the rollback workflow's dispatch. Prints p50/p95 and the Prefect settings used.
Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from commands.serve import POLL_SETTINGS  # noqa: E402
from sandbox.alert_bodies import alertmanager_body  # noqa: E402
from sandbox.process import free_port  # noqa: E402
from sandbox.serving import alerting_world, runbook_serve  # noqa: E402
from sandbox.world import ENVIRONMENT, REPOSITORY, SERVICE  # noqa: E402

TOKEN = "bench-alert-token-0123456789abcdef"


def alert_body(starts_at: datetime) -> dict[str, Any]:
    return alertmanager_body(
        SERVICE, starts_at=starts_at, fingerprint=f"{int(starts_at.timestamp()):016x}", environment=ENVIRONMENT
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runbook-alert-bench-"))
    # No hold: each trial is a new incident starting after the previous automatic rollback ended.
    with alerting_world(work) as (server, sandbox, data):
        api, auth = server.api_url, server.headers
        config = sandbox.write_config(data, "bench.yaml")
        with runbook_serve(server, config, work, alert_token=TOKEN, port=free_port()) as serving:
            endpoint = f"{serving.alerts_url}/alerts/alertmanager"
            sandbox.app.broken.clear()  # the story's versions are all good here: each trial breaks a new one
            latencies, runs = [], []
            for trial in range(args.trials):
                # CI ships a new version that breaks: the app runs it, GitHub records it deployed.
                sha = sandbox.github.add_commit(REPOSITORY, f"Broken release {trial}")
                sandbox.push(sha)
                sandbox.github.add_deployment(REPOSITORY, sha, ENVIRONMENT, state="success")
                sandbox.app.broken.add(sha)
                sandbox.app.deploy(sha)
                before = len(sandbox.github.dispatches())
                # Started now, after the previous trial's rollback ended: a new incident, not held.
                body = alert_body(datetime.now(UTC))
                start = time.time()
                answer = httpx.post(endpoint, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
                answer.raise_for_status()
                run_id = answer.json()["alerts"][0]["run_id"]
                while len(sandbox.github.dispatches()) == before and time.time() - start < 120:
                    time.sleep(0.005)
                dispatch = sandbox.github.dispatches()[-1]
                latencies.append(dispatch.timestamp - start)
                runs.append(run_id)
                # Wait for the run to end before the next incident (one rollback at a time).
                while time.time() - start < 180:
                    state = httpx.get(f"{api}/flow_runs/{run_id}", headers=auth, timeout=10).json()["state"]["type"]
                    if state in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED"):
                        break
                    time.sleep(0.2)
                print(f"trial {trial + 1:2d}: alert POST -> dispatch {latencies[-1]:.2f} s (run {state})", flush=True)
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(f"\nalert POST -> first deploy request at the target, {len(latencies)} trials:")
    p50 = statistics.median(latencies)
    print(f"  p50 {p50:.2f} s   p95 {p95:.2f} s   min {ordered[0]:.2f} s   max {ordered[-1]:.2f} s")
    print(f"  Prefect settings of `runbook serve`: {POLL_SETTINGS} (default poll: 10 s); server: SQLite")


if __name__ == "__main__":
    os.environ.setdefault("DO_NOT_TRACK", "1")
    main()
