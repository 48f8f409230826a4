"""The health probes: HTTP requests to the service, round after round, judged by runbook/health.py."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from runbook.config import HealthSettings, Probe
from runbook.errors import HealthCheckError
from runbook.health import ProbeResult, Verdict, judge


@dataclass(frozen=True)
class HealthReport:
    """How the check went: the verdict, the rounds it took, and the last answers."""

    verdict: Verdict
    rounds: int
    seconds: float
    last_round: tuple[ProbeResult, ...]

    def summary(self) -> list[str]:
        lines = [f"{self.verdict.reason} in {self.seconds:.2f} s"]
        lines += [
            f"{r.probe}: {'ok' if r.ok else 'FAILED'} (HTTP {r.status if r.status is not None else '-'}, "
            f"{r.seconds * 1000:.0f} ms){' ' + r.detail if r.detail else ''}"
            for r in self.last_round
        ]
        return lines


def probe_once(client: httpx.Client, probe: Probe, timeout: float) -> ProbeResult:
    """One request to one probe; any failure is a result, never an exception."""
    start = time.perf_counter()
    try:
        response = client.request(probe.method, probe.url, timeout=timeout)
    except httpx.HTTPError as exc:
        return ProbeResult(probe.label, False, None, time.perf_counter() - start, type(exc).__name__)
    elapsed = time.perf_counter() - start
    if response.status_code != probe.expect_status:
        return ProbeResult(probe.label, False, response.status_code, elapsed, f"expected {probe.expect_status}")
    if probe.contains is not None and probe.contains not in response.text:
        return ProbeResult(probe.label, False, response.status_code, elapsed, f"body lacks {probe.contains!r}")
    return ProbeResult(probe.label, True, response.status_code, elapsed)


def run_health_check(settings: HealthSettings) -> HealthReport:
    """Probe concurrently, round after round, until healthy or past the deadline (HealthCheckError)."""
    start = time.monotonic()
    deadline = start + settings.deadline_seconds
    rounds: list[list[ProbeResult]] = []
    with (
        httpx.Client(follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=min(8, len(settings.probes))) as pool,
    ):
        while True:
            timeout = max(0.1, min(settings.probe_timeout_seconds, deadline - time.monotonic()))
            results = list(pool.map(lambda p, t=timeout: probe_once(client, p, t), settings.probes))
            rounds.append(results)
            verdict = judge(rounds, settings.consecutive_successes)
            report = HealthReport(verdict, len(rounds), time.monotonic() - start, tuple(results))
            if verdict.healthy:
                return report
            if time.monotonic() + settings.interval_seconds >= deadline:
                raise HealthCheckError(
                    f"not healthy after {settings.deadline_seconds:.0f} s ({len(rounds)} rounds): {verdict.reason}",
                    hint="the version was deployed but does not answer healthy",
                )
            time.sleep(settings.interval_seconds)
