"""A long step's progress on the Prefect run page: one progress artifact per step, written beside the step.

The loops say how far they are (runbook/progress.py) once a round, on the rollback's critical path; the Prefect
API may answer in milliseconds or, on SQLite, after seconds of "database is locked" (runbook/prefect_calls.py).
So the step never waits on it: each report only replaces the step's latest one (a mailbox of one) and a thread
of the step's (runbook/background.py: the run's context, so the artifact belongs to the run and its task run)
writes what is newest, at most once every `_EVERY` seconds, and the last state as soon as the step ends. The
run's end waits a bounded moment for those last writes (`StepProgress.close`).

A step that ends within `_EVERY` seconds writes no artifact: a fast rollback adds no API write, and its steps'
outcomes are in the journal and the post-mortem. How far a step is that cannot tell (a workflow run followed: its
fraction is None) is shown where it was (0 % at first) with the detail saying what goes on, and 100 % once done.

A write that fails is a debug log line: showing progress is never worth a failed rollback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from runbook import background
from runbook.progress import Listener, Progress, following

log = logging.getLogger(__name__)

_EVERY = 2.0  # seconds: the first write once the step has lasted this long, then at most one write this often

Write = Callable[[UUID | None, float, str], UUID | None]
"""Write a progress artifact: (its id, None to create it; percent; description) -> its id."""


def write_to_prefect(artifact: UUID | None, percent: float, description: str) -> UUID | None:
    """The artifact created (no id yet) or updated through the Prefect API, in the run's context."""
    if artifact is None:
        created = create_progress_artifact(percent, description=description)  # sync: no event loop in this thread
        return created if isinstance(created, UUID) else None
    update_progress_artifact(artifact, percent, description=description)
    return artifact


class _Artifact:
    """One step's progress artifact: the newest report waiting to be written, and the thread that writes it."""

    def __init__(self, step: str, every: float, write: Write) -> None:
        self._step = step
        self._every = every
        self._write_call = write
        self._news = threading.Condition()
        self._latest: Progress | None = None  # reported, not written yet
        self._ended = False
        self._due = 0.0  # monotonic time of the next write allowed
        self._thread: threading.Thread | None = None
        self._id: UUID | None = None
        self._percent = 0.0  # as last written

    def offer(self, update: Progress) -> None:
        """The step's listener: keep the newest report, start the writer once the step is long; never waits."""
        with self._news:
            if self._ended:
                return
            self._latest = update
            if self._thread is None and update.seconds >= self._every:
                self._thread = background.start(f"progress-{self._step}", self._work)
            self._news.notify()

    def end(self) -> None:
        """The step is over: the writer writes its last report now (if it ever started) and stops."""
        with self._news:
            self._ended = True
            self._news.notify()

    def join(self, timeout: float) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout))

    def _work(self) -> None:
        while True:
            update, last = self._next()
            if update is not None:
                self._write(update)
            if last:
                return

    def _next(self) -> tuple[Progress | None, bool]:
        """The report to write now (the newest), once a write is due or the step ended; whether it is the last."""
        with self._news:
            while not self._ended and (self._latest is None or time.monotonic() < self._due):
                self._news.wait(None if self._latest is None else max(0.0, self._due - time.monotonic()))
            update, self._latest = self._latest, None
            self._due = time.monotonic() + self._every
            return update, self._ended

    def _write(self, update: Progress) -> None:
        percent = self._percent if update.fraction is None else round(update.fraction * 100, 1)
        detail = update.text()
        try:
            self._id = self._write_call(self._id, percent, detail)
        except Exception:  # the Prefect API down or busy past its retries: the page shows an older state
            log.debug("the progress artifact of %s was not written", self._step, exc_info=True)
            return
        self._percent = percent


class StepProgress:
    """A rollback run's long steps, each shown as a Prefect progress artifact while it lasts.

    `shown(step, ...)` around a step; `close` once, at the run's end. `every` and `write` are seams for tests.
    """

    def __init__(self, every: float = _EVERY, write: Write = write_to_prefect) -> None:
        self._every = every
        self._write = write
        self._artifacts: list[_Artifact] = []

    @contextmanager
    def shown(self, step: str, *also: Listener) -> Iterator[None]:
        """Within it, the loops' reports go to the step's artifact, and to `also` (e.g. the Slack root's status)."""
        artifact = _Artifact(step, self._every, self._write)
        self._artifacts.append(artifact)
        try:
            with following(artifact.offer, *also):
                yield
        finally:
            artifact.end()

    def close(self, timeout: float = 3.0) -> None:
        """Wait at most `timeout` s in all for the steps' last writes (they go on alone after that)."""
        until = time.monotonic() + timeout
        for artifact in self._artifacts:
            artifact.end()
            artifact.join(until - time.monotonic())
