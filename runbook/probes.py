"""The health probes: HTTP requests to the service, round after round, judged by runbook/health.py."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import httpx

from runbook import messages, progress
from runbook.config import HealthSettings, Probe
from runbook.errors import HealthCheckError
from runbook.health import ProbeResult, Verdict, json_field_problem, judge


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
    problem = _answer_problem(response, probe)
    return ProbeResult(probe.label, problem is None, response.status_code, elapsed, problem or "")


def _answer_problem(response: httpx.Response, probe: Probe) -> str | None:
    """What is wrong with an answer (its status, its text, its JSON field), or None when it is healthy."""
    if response.status_code != probe.expect_status:
        return f"expected {probe.expect_status}"
    if probe.contains is not None and probe.contains not in response.text:
        return f"body lacks {probe.contains!r}"
    if probe.json_field is None:
        return None
    try:
        doc = response.json()
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError both are
        return "not JSON"
    return json_field_problem(doc, probe.json_field, probe.equals)


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
            _report_progress(verdict, settings.consecutive_successes, results)
            if verdict.healthy:
                return report
            if time.monotonic() + settings.interval_seconds >= deadline:
                raise HealthCheckError(
                    f"not healthy after {settings.deadline_seconds:.0f} s ({len(rounds)} rounds): {verdict.reason}",
                    hint="the version was deployed but does not answer healthy",
                )
            time.sleep(settings.interval_seconds)


def _report_progress(verdict: Verdict, required: int, results: list[ProbeResult]) -> None:
    """How far the health check is (runbook/progress.py): rounds passed in a row of those required, or what failed."""
    failing = next((r for r in results if not r.ok), None)
    answer = "" if failing is None else ", ".join(filter(None, (_http(failing.status), failing.detail)))
    passed = min(verdict.streak, required)
    probe = None if failing is None else failing.probe
    detail = partial(messages.progress_health, passed=passed, required=required, probe=probe, answer=answer or "-")
    progress.report(passed / required, detail)


def _http(status: int | None) -> str:
    return "" if status is None else f"HTTP {status}"
