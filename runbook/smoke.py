"""The smoke checks' I/O: a few user-facing requests after the rollback, run concurrently.

Each check is a request and what its answer must look like (status, a text in the body, a field in the JSON
answer). Every check runs; then `SmokeCheckError` lists every failure. A failure is a result, never an
exception, until all of them are in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from runbook.errors import SmokeCheckError
from runbook.health import SmokeReport, SmokeResult, json_path_present
from runbook.verification_settings import SmokeCheck

_MAX_CONCURRENT = 8


def smoke_once(client: httpx.Client, check: SmokeCheck) -> SmokeResult:
    """One smoke request; any failure is a result, never an exception."""
    start = time.perf_counter()
    status: int | None = None
    problem: str | None
    try:
        response = client.request(check.method, check.url, json=check.body, timeout=check.timeout_seconds)
    except httpx.HTTPError as exc:
        problem = f"no answer ({type(exc).__name__})"
    else:
        status, problem = response.status_code, _answer_problem(response, check)
    ms = (time.perf_counter() - start) * 1000
    return SmokeResult(check.label, check.url, status, ms, problem is None, problem or "")


def _answer_problem(response: httpx.Response, check: SmokeCheck) -> str | None:
    """What is wrong with the answer, or None when it looks as the check expects."""
    if response.status_code != check.expect_status:
        return f"expected HTTP {check.expect_status}"
    if check.contains is not None and check.contains not in response.text:
        return f"body lacks {check.contains!r}"
    if check.json_field is None:
        return None
    try:
        doc = response.json()
    except ValueError:
        return f"body is not JSON, so it has no {check.json_field!r}"
    if not json_path_present(doc, check.json_field):
        return f"JSON answer lacks {check.json_field!r}"
    return None


def run_smoke_checks(checks: Sequence[SmokeCheck]) -> SmokeReport:
    """Run every smoke check concurrently; raise SmokeCheckError listing each failure after all ran."""
    if not checks:
        return SmokeReport(())
    with (
        httpx.Client(follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=min(_MAX_CONCURRENT, len(checks))) as pool,
    ):
        report = SmokeReport(tuple(pool.map(lambda c: smoke_once(client, c), checks)))
    failures = report.failures
    if failures:
        listed = "; ".join(
            f"{r.name}: {f'HTTP {r.status}, ' if r.status is not None else ''}{r.reason}" for r in failures
        )
        raise SmokeCheckError(
            f"{len(failures)} of {len(report.results)} smoke checks failed: {listed}",
            hint="the service is up but user paths are broken; check them by hand before closing the incident",
            report=report,
        )
    return report
