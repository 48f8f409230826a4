"""How far a long wait has got, said by the loop that waits, heard by whoever shows it.

A rollback's long steps (a workflow run followed for up to half an hour, the health rounds, the error rate's
hold, a deploy API's status, a container starting) are silent until they end. Each of their loops calls
`report` once a round: how far it is (a fraction, or None when it cannot tell) and what it is doing now, in
words (`Detail`: a text in any language, from runbook/messages). The loop does not know who listens: the
rollback flow installs the listeners around a step with `following` (a Prefect progress artifact,
tasks/progress.py; the Slack root's status, flows/_slack.py). A context variable, not a parameter (as in
flows/_member.py): the targets and checks keep their signatures, and outside `following` (the CLI's preflight,
a target's own tests) `report` does nothing.

Listeners are called in the loop's thread, on the rollback's critical path: they take note and return (the
slow part, an API call, is a thread's of their own). One that raises is a debug log line, never a failed step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from runbook.messages import Language

log = logging.getLogger(__name__)

Detail = Callable[[Language], str]
"""What the loop is doing now, in a language (bind its values now: `functools.partial`, never a closure)."""


@dataclass(frozen=True)
class Progress:
    """One report: how far (0 to 1; None: cannot tell), what now, and how long the step has lasted so far."""

    fraction: float | None
    detail: Detail
    seconds: float

    def text(self, language: Language = "en") -> str:
        """The detail in words (English by default: the Prefect UI's language, as the logs)."""
        return self.detail(language)


Listener = Callable[[Progress], None]
"""Hears every report of a step; called in the loop's thread: it must not wait (no API call)."""


@dataclass(frozen=True)
class _Sink:
    listeners: tuple[Listener, ...]
    started: float


_SINK: ContextVar[_Sink | None] = ContextVar("progress_sink", default=None)


@contextmanager
def following(*listeners: Listener) -> Iterator[None]:
    """Within it, the reports of the loops called in this thread go to `listeners`; the step's clock starts now."""
    token = _SINK.set(_Sink(listeners, time.monotonic()))
    try:
        yield
    finally:
        _SINK.reset(token)


def report(fraction: float | None, detail: Detail) -> None:
    """Tell whoever follows the step how far it is (`fraction` clamped to 0..1, None: unknown) and what now."""
    sink = _SINK.get()
    if sink is None:
        return
    if fraction is not None:
        fraction = min(1.0, max(0.0, fraction))
    update = Progress(fraction, detail, time.monotonic() - sink.started)
    for listener in sink.listeners:
        try:
            listener(update)
        except Exception:  # showing progress is never worth a failed step
            log.debug("a progress listener failed", exc_info=True)
