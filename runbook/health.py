"""The health judgements: are the samples good enough to call the service recovered? Pure functions and data.

- the probes (`judge_round`, `judge`): healthy once enough consecutive rounds all passed;
- the error-rate metric (`judge_metric`): held under its threshold long enough (runbook.prometheus reads it);
- the smoke checks (`json_path_present`, `SmokeReport`): each answer as expected (runbook.smoke sends them);
- a JSON answer's fields (`json_path_value`, `json_field_problem`): the one walk of a dotted path, for all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_RECENT = 5  # metric values quoted in a message


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


# --- the error-rate metric ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSample:
    """One reading of the query, `at` seconds after the check started; `value` None is no data."""

    at: float
    value: float | None
    error: str | None = None  # why there is no value when Prometheus did not answer


@dataclass(frozen=True)
class MetricVerdict:
    """Whether the metric held, why (or why not yet), and for how long it has held so far."""

    ok: bool
    reason: str
    held_seconds: float = 0.0


def describe_sample(sample: MetricSample) -> str:
    """A sample in a message: its value, `no data` or `no answer`."""
    if sample.value is not None:
        return f"{sample.value:.4g}"
    return "no answer" if sample.error else "no data"


def recent_values(samples: Sequence[MetricSample]) -> str:
    """The last few samples, oldest first, for a message: `0.02, no data, 0.001`."""
    return ", ".join(describe_sample(s) for s in samples[-_RECENT:])


def _streak(samples: Sequence[MetricSample], threshold: float) -> tuple[float, int]:
    """The current streak under `threshold`: the seconds it has held, and how many samples are in it."""
    held = 0.0
    good = 0  # samples under the threshold in the current streak
    previous_good: float | None = None  # when the previous sample was good; None after no data
    for sample in samples:
        if sample.value is None:
            previous_good = None
        elif sample.value >= threshold:
            held, good, previous_good = 0.0, 0, None
        else:
            if previous_good is not None:
                held += sample.at - previous_good
            good += 1
            previous_good = sample.at
    return held, good


def judge_metric(samples: Sequence[MetricSample], threshold: float, hold_seconds: float) -> MetricVerdict:
    """Held when the latest samples stayed strictly under `threshold` for `hold_seconds`, with 2+ samples.

    A value at or over the threshold restarts the hold. No data (None) neither breaks the streak nor counts
    toward it: the time between a no-data sample and its neighbours is not held time.
    """
    held, good = _streak(samples, threshold)
    if not samples:
        return MetricVerdict(False, "no sample yet")
    if good >= 2 and held >= hold_seconds:
        return MetricVerdict(True, f"under {threshold:g} for {held:.1f} s ({good} samples)", held)
    last = samples[-1]
    if all(s.value is None for s in samples):
        if last.error:
            return MetricVerdict(False, f"no answer from Prometheus in {len(samples)} sample(s): {last.error}")
        return MetricVerdict(
            False, f"no data in {len(samples)} sample(s): no traffic, or no such series; no data proves nothing"
        )
    if last.value is not None and last.value >= threshold:
        return MetricVerdict(False, f"{last.value:.4g} is not under {threshold:g}", held)
    progress = f"under {threshold:g} for {held:.1f} of {hold_seconds:g} s so far"
    if last.value is None:
        why = f"no answer from Prometheus ({last.error})" if last.error else "no data (no traffic?)"
        return MetricVerdict(False, f"{progress}; {why}: the hold is paused", held)
    return MetricVerdict(False, progress, held)


@dataclass(frozen=True)
class MetricReport:
    """How the metric check went: every sample read, the final verdict, the time it took."""

    samples: tuple[MetricSample, ...]
    verdict: MetricVerdict
    seconds: float
    query: str = ""

    def summary(self) -> list[str]:
        recent = recent_values(self.samples)
        return [
            f"{self.verdict.reason} in {self.seconds:.1f} s ({len(self.samples)} samples)",
            f"query: {self.query}",
            f"last values: {recent or '-'}",
        ]


# --- the smoke checks -----------------------------------------------------------------------------------


_MISSING: Any = object()  # what `json_path_value` answers for a path that leads nowhere, told apart from null


def json_path_value(doc: Any, path: str, missing: Any = None) -> Any:
    """The value at a dotted path (`build.sha`, `data.items.0.id`) of a parsed JSON document, else `missing`.

    The one walk of a JSON answer (version probes, smoke checks, health probes). A segment is a key of an
    object, or the index (0, 1, ...) of an array; keys containing dots cannot be addressed.
    """
    node = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return missing
    return node


def json_path_present(doc: Any, path: str) -> bool:
    """Whether a dotted path (`data.items.0.id`) leads to a non-null value in a parsed JSON document."""
    return bool(path) and json_path_value(doc, path) is not None


def json_field_problem(doc: Any, path: str, expected: bool | float | str | None = None) -> str | None:
    """What is wrong with a field of a JSON answer (missing, null, another value), or None when it is as expected.

    `expected` None asks only for a value that is there and not null. Otherwise the value must be equal AND of
    the same JSON type: the number 200 is not the string "200", and true is not 1 (Python alone says both are).
    Values are quoted as JSON, so a message shows the type: `status is "degraded", expected "ok"`.
    """
    value = json_path_value(doc, path, _MISSING)
    if value is _MISSING:
        return f"no field {path}"
    if value is None:
        return f"{path} is null"
    if expected is None or _same_json(value, expected):
        return None
    got, want = _as_json(value), _as_json(expected)
    if got.strip('"') == want.strip('"'):  # 200 and "200", true and "true": the same text, another type
        kinds = f"a JSON {_json_type(value)}, not a {_json_type(expected)}"
        return f"{path} is {got}, expected {want}: {kinds} (to accept it, write equals: {got})"
    return f"{path} is {got}, expected {want}"


def _same_json(value: Any, expected: bool | float | str) -> bool:
    """Equal and of the same JSON type (a bool is no number, an int and a float are both numbers)."""
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    if isinstance(expected, int | float):
        return isinstance(value, int | float) and value == expected
    return isinstance(value, str) and value == expected


def _json_type(value: Any) -> str:
    """A value's JSON type name, as a message tells it: `number`, `string`..."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _as_json(value: Any, limit: int = 60) -> str:
    """A value as JSON, cut to `limit` characters (an answer may hold a large object)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class SmokeResult:
    """The answer (or non-answer) to one smoke check."""

    name: str
    url: str
    status: int | None
    ms: float
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class SmokeReport:
    """Every smoke check's result, in the configured order."""

    results: tuple[SmokeResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[SmokeResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def summary(self) -> list[str]:
        return [
            f"{r.name}: {'ok' if r.ok else 'FAILED'} (HTTP {r.status if r.status is not None else '-'}, "
            f"{r.ms:.0f} ms){' ' + r.reason if r.reason else ''}"
            for r in self.results
        ]
