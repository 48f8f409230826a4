"""What Prefect costs a rollback: the flow against the sandbox, then the same HTTP calls in a plain script.

Run: .venv/bin/python benchmarks/rollback_overhead.py [--runs N]
Both paths make the same calls with the same code (PyGithub, the registry client, slack-sdk, the health
probes: Slack root, status updates and replies; deployments list; commits; manifests; the GitHub deployment
record; dispatch and run; probes; mark rolled back), on a fresh sandbox each, with zero added latency (the
sandbox's workflow run completes at once). The difference between the two wall times is the orchestration
overhead (Prefect's task and flow runs, result persistence, artifacts, events, the concurrency slot).
Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="runbook-bench-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from runbook import messages
from runbook import repository as repo_api
from runbook.config import load_config, using_config
from runbook.probes import run_health_check
from runbook.running import find_running
from runbook.service_images import find_image, image_exists, registry_client
from runbook.slack import SlackPoster
from runbook.targets import DeployRequest
from runbook.targets.factory import build_target
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox
from tasks.resolve_sha import resolve


def _fast(sandbox: Sandbox) -> Path:
    data = sandbox.config_data(
        deploy={"type": "github-actions", "poll_interval_seconds": 0.05, "timeout_seconds": 30},
    )
    data["services"][SERVICE]["environments"][ENVIRONMENT]["health"]["interval_seconds"] = 0.05
    return sandbox.write_config(data, "bench.yaml")


def plain(sandbox: Sandbox) -> tuple[float, dict[str, float]]:
    """The rollback's HTTP calls in sequence, no Prefect."""
    config = load_config(_fast(sandbox))
    service = config.service(SERVICE)
    env = config.environment(SERVICE, ENVIRONMENT)
    ctx = messages.IncidentContext(SERVICE, ENVIRONMENT, language=config.slack.language)
    slack = SlackPoster(config.slack, service.slack.channel)
    times: dict[str, float] = {}
    start = time.perf_counter()

    mark = time.perf_counter()
    thread = slack.post(messages.incident_message(ctx))
    times["notify-incident"] = time.perf_counter() - mark

    mark = time.perf_counter()
    repo = repo_api.connect(config.github, service.repository)
    target = build_target(config, SERVICE, ENVIRONMENT)
    with registry_client(config) as registry:
        running = find_running(repo, ENVIRONMENT, env, target, print)
        resolution = resolve(repo, service, ENVIRONMENT, None, running, lambda s: image_exists(registry, service, s))
        times["resolve-sha"] = time.perf_counter() - mark
        mark = time.perf_counter()
        manifest = find_image(registry, service, resolution.sha)
        times["verify-image"] = time.perf_counter() - mark

    mark = time.perf_counter()
    slack.update(thread, messages.incident_message(ctx, messages.status_rolling_back(ctx, resolution.sha)))
    slack.post(messages.rollback_started_message(ctx, resolution.sha), thread)
    times["notify-rollback-started"] = time.perf_counter() - mark

    mark = time.perf_counter()
    rollout = repo_api.record_deployment(
        repo, sha=resolution.sha, environment=ENVIRONMENT, state="in_progress", description="bench", log_url=None,
        payload={},
    )  # fmt: skip
    target.current_version()
    target.deploy(DeployRequest(SERVICE, ENVIRONMENT, resolution.sha, manifest.image, manifest.digest, "", "bench"))
    times["deploy"] = time.perf_counter() - mark

    mark = time.perf_counter()
    run_health_check(env.health)
    times["health-check"] = time.perf_counter() - mark

    mark = time.perf_counter()
    repo_api.set_deployment_status(repo, rollout, state="success", description="bench", log_url=None)
    if resolution.running:
        repo_api.mark_rolled_back(repo, ENVIRONMENT, resolution.running, "bench", resolution.running_deployment_id)
    slack.update(thread, messages.incident_message(ctx, messages.status_recovered(ctx, resolution.sha, 0.0)))
    slack.post(messages.recovered_message(ctx, resolution.sha, manifest.digest, 0.0), thread, broadcast=True)
    times["record + notify-outcome"] = time.perf_counter() - mark
    return time.perf_counter() - start, times


def orchestrated(sandbox: Sandbox) -> tuple[float, dict[str, float]]:
    """The `rollback` flow, in process, on Prefect's embedded server."""
    from flows.rollback import rollback

    config = _fast(sandbox)
    with using_config(config):
        start = time.perf_counter()
        summary = rollback(service=SERVICE, environment=ENVIRONMENT)
        wall = time.perf_counter() - start
    assert summary.outcome == "recovered"
    return wall, summary.step_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.rollback import rollback

    with tempfile.TemporaryDirectory() as tmp, Sandbox(Path(tmp) / "warm", run_step_seconds=0) as warm:
        # The first flow call in a process starts Prefect's temporary server: measured apart.
        mark = time.perf_counter()
        with using_config(_fast(warm)):
            rollback(service=SERVICE, environment=ENVIRONMENT)
        first = time.perf_counter() - mark

    flow_walls, plain_walls, quiet_walls = [], [], []
    flow_steps: dict[str, list[float]] = {}
    plain_steps: dict[str, list[float]] = {}
    for index in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            with Sandbox(Path(tmp) / f"flow{index}", run_step_seconds=0) as sandbox:
                wall, steps = orchestrated(sandbox)
            flow_walls.append(wall)
            for name, seconds in steps.items():
                flow_steps.setdefault(name, []).append(seconds)
            # The same flow with Prefect's heartbeat thread off (its stop costs ~0.9 s at the end of a run).
            with (
                Sandbox(Path(tmp) / f"quiet{index}", run_step_seconds=0) as sandbox,
                temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
            ):
                quiet_walls.append(orchestrated(sandbox)[0])
            with Sandbox(Path(tmp) / f"plain{index}", run_step_seconds=0) as sandbox:
                wall, steps = plain(sandbox)
            plain_walls.append(wall)
            for name, seconds in steps.items():
                plain_steps.setdefault(name, []).append(seconds)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:8.1f} ms"

    print(f"first flow call in a new process (starts Prefect's temporary server): {first:.2f} s")
    print(f"\nflow `rollback`, median of {args.runs} runs: {med(flow_walls)}  (min {min(flow_walls) * 1000:.1f} ms)")
    for name, values in flow_steps.items():
        print(f"  {name:<26}{med(values)}")
    print(
        f"\nplain script, same calls, median of {args.runs}: {med(plain_walls)}  (min {min(plain_walls) * 1000:.1f} ms)"
    )
    for name, values in plain_steps.items():
        print(f"  {name:<26}{med(values)}")
    print(f"\nflow `rollback` with heartbeats off, median of {args.runs}: {med(quiet_walls)}")
    overhead = statistics.median(flow_walls) - statistics.median(plain_walls)
    quiet = statistics.median(quiet_walls) - statistics.median(plain_walls)
    print(f"\norchestration overhead (median flow - median plain): {overhead * 1000:.1f} ms")
    print(f"  of which not the heartbeat's stop (heartbeats off - plain): {quiet * 1000:.1f} ms")


if __name__ == "__main__":
    main()
