"""The health judgement: are the samples good enough to call the service recovered? Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    """One answer (or non-answer) of one probe."""

    probe: str
    ok: bool
    status: int | None
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class Verdict:
    """Where the health check stands after a number of rounds."""

    healthy: bool
    streak: int
    reason: str


def judge_round(results: Sequence[ProbeResult]) -> bool:
    """A round passes when every probe of it passed."""
    return bool(results) and all(r.ok for r in results)


def judge(rounds: Sequence[Sequence[ProbeResult]], required_consecutive: int) -> Verdict:
    """Healthy once the last `required_consecutive` rounds all passed."""
    streak = 0
    for results in rounds:
        streak = streak + 1 if judge_round(results) else 0
    if streak >= required_consecutive:
        return Verdict(True, streak, f"{streak} consecutive healthy rounds of {len(rounds)}")
    if not rounds:
        return Verdict(False, 0, "no probe answered yet")
    failing = [r for r in rounds[-1] if not r.ok]
    if failing:
        worst = failing[0]
        what = f"HTTP {worst.status}" if worst.status is not None else "no answer"
        detail = f" ({worst.detail})" if worst.detail else ""
        return Verdict(False, streak, f"{worst.probe}: {what}{detail}")
    return Verdict(False, streak, f"{streak} of {required_consecutive} consecutive healthy rounds so far")
