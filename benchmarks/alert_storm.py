"""How many of N services alerted at once get their rollback at the first webhook, with `runbook serve` running.

Run: .venv/bin/python benchmarks/alert_storm.py [--services 20] [--trials 3]
Starts a real `prefect server start` (SQLite), the sandbox (GitHub and Slack stand-ins, registry, app), and
`runbook serve` for a configuration of N services (copies of the sandbox service); then, per trial, POSTs one
Alertmanager webhook per service, all at once (one thread each, as Alertmanager sends one per alert group),
and counts the answers: 2xx at the first attempt, 503s (Alertmanager retries them: so does this script, after
1 s as Alertmanager's backoff would), and the answer times. A trial ends when every run it created has ended,
so the next storm lands on a server that is busy only with its own runs. The N services are copies of the
sandbox's one (one repository): after the first rollbacks, the others end at resolve-sha ("no earlier
version"); what matters here is the load their starts put on SQLite. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.alert_bodies import alertmanager_body  # noqa: E402
from sandbox.process import free_port  # noqa: E402
from sandbox.serving import alerting_world, runbook_serve  # noqa: E402
from sandbox.world import ENVIRONMENT, SERVICE  # noqa: E402

TOKEN = "bench-alert-token-0123456789abcdef"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def services(count: int) -> list[str]:
    return [f"svc-{index:02d}" for index in range(1, count + 1)]


def alert_body(service: str, trial: int, starts_at: datetime) -> dict[str, Any]:
    fingerprint = f"{trial:08x}{abs(hash(service)) % 16**8:08x}"
    return alertmanager_body(service, starts_at=starts_at, fingerprint=fingerprint, environment=ENVIRONMENT)


def storm(endpoint: str, names: list[str], trial: int) -> list[dict[str, Any]]:
    """One POST per service at once; a 503 is retried after 1 s (up to 5 times), as Alertmanager would."""
    starts_at = datetime.now(UTC)
    results: list[dict[str, Any]] = [{} for _ in names]
    barrier = threading.Barrier(len(names))

    def post(index: int, service: str) -> None:
        body = alert_body(service, trial, starts_at)
        barrier.wait()
        attempts: list[tuple[int, float]] = []
        run_id = None
        for _ in range(6):
            started = time.monotonic()
            try:
                answer = httpx.post(endpoint, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
                status = answer.status_code
            except httpx.HTTPError:
                status = 0
            attempts.append((status, time.monotonic() - started))
            if 200 <= status < 300:
                run_id = answer.json()["alerts"][0]["run_id"]
                break
            time.sleep(1.0)
        results[index] = {"service": service, "attempts": attempts, "run_id": run_id}

    threads = [threading.Thread(target=post, args=(i, name)) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def wait_ended(api: str, auth: dict[str, str], run_ids: list[str], timeout: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for run_id in run_ids:
            if states.get(run_id) in TERMINAL:
                continue
            try:
                state = httpx.get(f"{api}/flow_runs/{run_id}", headers=auth, timeout=10).json()["state"]
            except httpx.HTTPError:
                continue
            states[run_id] = state["type"] if state else "?"
        if all(states.get(r) in TERMINAL for r in run_ids):
            break
        time.sleep(1)
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    names = services(args.services)
    work = Path(tempfile.mkdtemp(prefix="runbook-alert-storm-"))
    with alerting_world(work) as (server, sandbox, data):
        api, auth = server.api_url, server.headers
        template = data["services"].pop(SERVICE)
        data["services"] = {name: copy.deepcopy(template) for name in names}  # no YAML anchors
        config = sandbox.write_config(data, "storm.yaml")
        first_try: list[int] = []
        answer_times: list[float] = []
        with runbook_serve(server, config, work, alert_token=TOKEN, port=free_port()) as serving:
            endpoint = f"{serving.alerts_url}/alerts/alertmanager"
            time.sleep(2)  # the runner's first polls
            for trial in range(1, args.trials + 1):
                results = storm(endpoint, names, trial)
                ok = sum(200 <= r["attempts"][0][0] < 300 for r in results)
                first_try.append(ok)
                answer_times += [seconds for r in results for _, seconds in r["attempts"]]
                codes = sorted({status for r in results for status, _ in r["attempts"]})
                never = [r["service"] for r in results if r["run_id"] is None]
                run_ids = sorted({r["run_id"] for r in results if r["run_id"]})
                slowest = max(seconds for r in results for _, seconds in r["attempts"])
                print(
                    f"trial {trial}: {ok}/{len(names)} answered 2xx at the first attempt; status codes seen {codes}; "
                    f"slowest answer {slowest:.2f} s; {len(run_ids)} runs; no run after retries: {never or 'none'}",
                    flush=True,
                )
                states = wait_ended(api, auth, run_ids)
                print(f"         runs ended: {dict(sorted(_count(states.values()).items()))}", flush=True)
    print(f"\n{args.services} services alerted at once, {args.trials} trials: first-attempt 2xx {first_try}")
    ordered = sorted(answer_times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(f"answer time: p50 {statistics.median(ordered):.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s")
    print(f"serve log: {work / 'serve.log'}")


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


if __name__ == "__main__":
    os.environ.setdefault("DO_NOT_TRACK", "1")
    main()
