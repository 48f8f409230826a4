"""How the rollback flow talks to Slack: one thread per run, its root kept up to date, beside the critical path.

Every method of `Announcer` returns at once: the message joins the run's delivery lane, one worker thread
(started as in runbook/background.py, with the run's context: Prefect's run context and logger work there) that
runs the notify tasks (tasks/notify.py) one after the other, in the order they were asked for. The root comes
first; each reply waits for it and goes in its thread; the root's status updates follow in order; the end comes
last. A long step's progress (`Announcer.progress`) rewrites the root's status too, at most every
`slack.progress_seconds`: best effort (kept out of the journal, skipped once a later status is asked, never asked
after the final one). What Slack did not take for a passing reason (down, hanging, 5xx, 429) is tried again
(runbook/slack.py) for as long as the run goes on; `close`, at the run's end, waits for the lane at most
`slack.delivery_seconds`, then gives up on the rest: one warning each in the journal, so the post-mortem says what
never reached Slack.

Why one thread rather than Prefect task futures chained with `wait_for`: a reply is sent with its root's
outcome whatever it was (a future chained after a failed root would not run), and whatever is left is given up
at one deadline, without leaving futures behind in the flow run. The tasks stay the units of delivery (each
one a task run in the Prefect UI, its retries inside it), and `run_once` still keeps a Retry of the flow from
posting the root or the rollback's start twice.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prefect import get_run_logger

from runbook import background, messages
from runbook.journal import Journal, describe_error
from runbook.progress import Progress
from runbook.slack import Deadline, Posted, SlackPoster
from tasks.notify import notify_incident, notify_outcome, notify_reply, notify_rollback_started, notify_status

_NOTHING = Posted(None, None, "nothing posted (dry run or notify off)")
_TIME_UP = Posted(None, None, "given up: Slack had not taken it when the delivery time (slack.delivery_seconds) was up")


class Root:
    """The thread's root as the lane delivers it: `known` now, or `wait` (bounded) for its delivery to end."""

    def __init__(self) -> None:
        self._over = threading.Event()
        self._posted = _NOTHING

    @property
    def known(self) -> Posted:
        """The root as far as known now (nothing posted while its delivery goes on)."""
        return self._posted

    @property
    def settled(self) -> bool:
        """Whether its delivery is over: posted, refused, given up, or nothing to post."""
        return self._over.is_set()

    def wait(self, timeout: float) -> Posted:
        """The root once its delivery is over, waiting at most `timeout` s for it; what is known then otherwise."""
        self._over.wait(timeout)
        return self._posted

    def settle(self, posted: Posted) -> None:
        """Its delivery is over (the first outcome stays)."""
        if not self._over.is_set():
            self._posted = posted
            self._over.set()


Send = Callable[[Posted, Deadline], Posted]
"""How one message is sent, given the root as delivered and the lane's deadline."""


@dataclass(frozen=True, eq=False)
class _Letter:
    """One message asked for: what the post-mortem calls it, the timeline's line once delivered, how to send it."""

    name: str
    done: str
    send: Send
    root: bool = False  # the thread's root: its outcome is what the letters after it are sent with
    update: bool = False  # an update of the root: nothing to send without one (webhook, or never posted)
    progress: bool = False  # a long step's progress: skipped once a later update is asked, kept out of the journal


class _Lane:
    """One run's ordered delivery: a worker thread sends the letters one by one, in the order they were added."""

    def __init__(self, record: Journal, root: Root) -> None:
        self._record = record
        self._root = root
        self._until = Deadline()
        self._letters: queue.SimpleQueue[tuple[_Letter, int] | None] = queue.SimpleQueue()
        self._waiting: deque[_Letter] = deque()  # added, neither delivered nor given up
        self._lock = threading.Lock()  # the journal is written by one side at a time, never by the lane once closed
        self._closed = False
        self._webhook_warned = False
        self._updates = 0  # update letters added so far: a progress letter with a later one is out of date
        self._worker = background.start("slack-delivery", self._work)

    def add(self, letter: _Letter) -> None:
        with self._lock:  # the queue in the order of `_waiting`
            self._waiting.append(letter)
            self._updates += letter.update
            self._letters.put((letter, self._updates))

    def close(self, seconds: float) -> None:
        """Wait at most `seconds` for what was added; give the rest up (a warning each); the lane sends no more."""
        self._until.give_up_at(time.monotonic() + seconds)
        self._letters.put(None)
        self._worker.join(seconds)
        with self._lock:
            self._closed = True
            left = list(self._waiting)
            self._waiting.clear()
        self._until.stop()  # the lane skips whatever it had not started; a call under way ends with its timeout
        for letter in left:
            if not letter.progress:
                self._record.warn(
                    f"Slack: {letter.name} not delivered: not taken by Slack {seconds:g} s after the run's end "
                    "(given up)"
                )

    def _work(self) -> None:
        while (queued := self._letters.get()) is not None:
            letter, updates = queued
            self._settle(letter, self._send(letter, updates))

    def _send(self, letter: _Letter, updates: int) -> Posted | None:
        while not letter.root and not self._root.settled and not self._until.over:
            self._root.wait(0.25)  # a root another lane delivers (an incident's thread): its outcome first
        if letter.update and not self._root.known.threaded:
            return None  # as before the lane: no root to update, nothing to say
        if letter.progress and self._updates > updates:
            return None  # a later update (progress, or the final status) rewrites the root anyway
        if self._until.over:
            return _TIME_UP
        try:
            return letter.send(self._root.known, self._until)
        except Exception as exc:  # the tasks never raise for Slack's sake: the Prefect API, or a bug; the lane goes on
            get_run_logger().warning("delivering %s to Slack failed", letter.name, exc_info=True)
            return Posted(None, None, describe_error(exc))

    def _settle(self, letter: _Letter, posted: Posted | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._waiting.popleft()
            if letter.root:
                self._root.settle(posted or _NOTHING)
            if posted is not None and not letter.progress:
                self._kept(posted, letter)

    def _kept(self, posted: Posted, letter: _Letter) -> None:
        if not posted.ok:
            self._record.warn(f"Slack: {letter.name} not delivered: {posted.error}")
        elif not posted.threaded and not self._webhook_warned:
            self._webhook_warned = True
            self._record.warn("Slack: posting through an incoming webhook: no thread and no status updates")
        else:
            self._record.note(f"Slack: {letter.done}")


class Announcer:
    """The seed's communication (section 4) for one run; silent when `enabled` is false (dry run, drills).

    Its methods return at once (the lane delivers); `close` once, at the run's end, before the post-mortem.

    `board`: the run is one service of an incident (flows/incident.py): the thread is the incident's. Its root
    (posted by the board when a first service announces) carries this service's status; the seed's messages are
    replies in it, each naming the service, none broadcast (the incident's end is).
    """

    def __init__(
        self,
        slack: SlackPoster,
        record: Journal,
        ctx: messages.IncidentContext,
        enabled: bool,
        board: Board | None = None,
    ) -> None:
        self._slack = slack
        self._record = record
        self._ctx = ctx
        self._enabled = enabled
        self._board = board
        self._root = board.thread if board is not None else Root()
        if not enabled and board is None:
            self._root.settle(_NOTHING)
        self._lane: _Lane | None = None  # started with the first message
        self._announced = False
        self._closed = False
        self._sha: str | None = None  # rolling back to it: the status a step's progress is shown in
        self._progressing = threading.Lock()  # a progress update, or the end of them (`_over`), at a time
        self._progress_at = -math.inf  # when the last progress update was asked for
        self._over = False  # the final status was asked for (or the run ended): no progress update after it

    @property
    def thread(self) -> Root:
        """The thread's root, as the lane delivers it (what a later run replies to): `known`, or `wait` for it."""
        return self._root

    @property
    def announced(self) -> bool:
        """Whether the incident was told (asked for: Slack may be down, or not have taken it yet)."""
        return self._announced

    def incident(self) -> None:
        """Seed message 1: the thread's root; once per run, later calls do nothing."""
        if self._enabled and not self._announced:
            self._announced = True
            if self._board is not None:  # the incident's root, once for all its services
                self._board.incident()
                return
            text = self._root_text(None)
            self._ask(
                _Letter(
                    "the incident message",
                    "incident posted",
                    lambda _root, until: notify_incident(self._slack, text, until),
                    root=True,
                )
            )

    def rollback_started(self, sha: str, compare_url: str | None) -> None:
        """Seed message 2, and the root's status: rolling back to SHA."""
        if self._enabled:
            self._sha = sha
            self._status(messages.status_rolling_back(self._ctx, sha), "rolling back")
            text = self._named(messages.rollback_started_message(self._ctx, sha, compare_url))
            self._reply("the rollback start", "rollback start posted", text, notify_rollback_started)

    def recovered(self, sha: str, digest: str, seconds: float, deploy_url: str | None) -> None:
        """Seed message 3, broadcast, and the root's status: recovered in N s."""
        if self._enabled:
            self._no_more_progress()
            self._status(messages.status_recovered(self._ctx, sha, seconds), "recovered")
            text = self._named(messages.recovered_message(self._ctx, sha, digest, seconds, deploy_url))
            self._reply("the end message", self._end_done("end posted"), text, self._outcome_task)

    def failed(self, step: str, reason: str) -> None:
        """The escalation, broadcast, and the root's status: failed at step X (the incident told first if need be)."""
        if self._enabled:
            self.incident()
            self._no_more_progress()
            self._status(messages.status_failed(self._ctx, step), "failed")
            text = self._named(messages.failure_message(self._ctx, step, reason))
            self._reply("the escalation", self._end_done("escalation posted"), text, self._outcome_task)

    def progress(self, update: Progress) -> None:
        """How far a long step is (runbook/progress.py), in the root's status (an incident's: this service's line).

        The first update once the step has lasted `slack.progress_seconds`, then at most that often: a fast
        rollback posts what it did without it. Never after the final status (recovered, failed) was asked for.
        Called in the step's loop: it only asks the lane, which delivers.
        """
        every = self._slack.settings.progress_seconds
        if not self._enabled or every <= 0 or update.seconds < every or self._sha is None:
            return
        with self._progressing:
            now = time.monotonic()
            if self._over or now - self._progress_at < every:
                return
            self._progress_at = now
            detail = update.text(self._ctx.language)
            self._status(messages.status_progress(self._ctx, self._sha, detail), "progress", progress=True)

    def _no_more_progress(self) -> None:
        """The final status comes next: a progress update asked for later would be delivered after it."""
        with self._progressing:
            self._over = True

    def close(self, timeout: float | None = None) -> None:
        """Wait for everything asked for to be delivered, at most `timeout` s (default `slack.delivery_seconds`).

        What is left then is given up, each message a warning in the journal; nothing is sent afterwards.
        """
        self._no_more_progress()
        if self._closed:
            return
        self._closed = True
        if self._lane is not None:
            self._lane.close(self._slack.settings.delivery_seconds if timeout is None else timeout)
        if self._board is None:  # an incident's root is the board's to settle
            self._root.settle(_TIME_UP if self._announced else _NOTHING)

    @property
    def _outcome_task(self) -> Callable[..., Posted]:
        return notify_reply if self._board is not None else notify_outcome

    def _end_done(self, done: str) -> str:
        return done if self._board is not None else f"{done} (broadcast)"

    def _named(self, text: str) -> str:
        """In an incident's thread, each message says which service it is about."""
        return messages.member_message(self._ctx, text) if self._board is not None else text

    def _root_text(self, status: str | None) -> str:
        return messages.incident_message(self._ctx, status)

    def _status(self, status: str, label: str, progress: bool = False) -> None:
        if self._board is not None:
            self._board.member_status(f"{self._ctx.service}/{self._ctx.environment}", status, label, progress)
            return
        text = self._root_text(status)
        name, done = f"the root's status ({label})", f"root status: {label}"
        self._reply(name, done, text, notify_status, update=True, progress=progress)

    def _reply(
        self,
        name: str,
        done: str,
        text: str,
        task: Callable[..., Posted],
        update: bool = False,
        progress: bool = False,
    ) -> None:
        """A message about the root (a reply in its thread, or its update): sent once the root's delivery is over."""
        self._ask(
            _Letter(
                name, done, lambda root, until: task(self._slack, root, text, until), update=update, progress=progress
            )
        )

    def _ask(self, letter: _Letter) -> None:
        if self._closed:
            self._record.warn(f"Slack: {letter.name} not delivered: asked for after the run's end")
            return
        if self._lane is None:
            self._lane = _Lane(self._record, self._root)
        self._lane.add(letter)


class Board(Announcer):
    """An incident's Slack thread (flows/incident.py): one root for all its services, each one's status in it.

    The root is posted when the first service announces (a service held by an earlier automatic rollback, or
    refused on its input, posts nothing: an incident where none goes on posts nothing either); each service's
    status change rewrites it (`member_status`); `end` replies with the incident's outcome, broadcast.
    """

    def __init__(
        self,
        slack: SlackPoster,
        record: Journal,
        ctx: messages.IncidentContext,
        services: list[str],
        enabled: bool,
    ) -> None:
        super().__init__(slack, record, ctx, enabled)
        self._statuses: dict[str, str] = {key: messages.status_investigating(ctx) for key in services}
        self._first_text = ""  # the root as first posted: the same in every attempt (one thread when retried)
        self._asking = threading.Lock()  # a status and the text it rewrites the root with, in one order
        # Started here, in the incident's own thread: its letters are task runs of the incident's run (whose Retry
        # finds the root it posted), not of the service that happens to announce first.
        self._lane = _Lane(record, self._root)

    def _root_text(self, status: str | None) -> str:
        if not self._first_text:  # the root itself: every service investigating, whatever is known already
            self._first_text = messages.board_message(self._ctx, dict.fromkeys(self._statuses, self._investigating))
            return self._first_text
        return messages.board_message(self._ctx, self._statuses, status)

    @property
    def _investigating(self) -> str:
        return messages.status_investigating(self._ctx)

    @property
    def language(self) -> messages.Language:
        return self._ctx.language

    def member_status(self, key: str, status: str, label: str, progress: bool = False) -> None:
        """A service's (`service/environment`) status changed: the root is rewritten with every service's.

        `progress`: how far the service's long step is (best effort: see `Announcer.progress`).
        """
        with self._asking:
            self._statuses[key] = status
            if self._announced:  # before the root is asked for, its text will carry this status
                text = self._root_text(None)
                self._reply(
                    f"the root's status ({key}: {label})",
                    f"root status: {key} {label}",
                    text,
                    notify_status,
                    update=True,
                    progress=progress,
                )

    def incident(self) -> None:
        with self._asking:
            if self._announced:
                return
            super().incident()
            if any(status != self._investigating for status in self._statuses.values()):
                text = self._root_text(None)  # what is known already (waiting, recovered by an earlier attempt)
                self._reply("the root's status", "root status", text, notify_status, update=True)

    def end(self, text: str, status: str) -> None:
        """The incident's outcome: the root's overall status, and a reply broadcast to the channel."""
        if self._enabled and self._announced:
            with self._asking:
                self._reply(
                    "the root's status (end)", "root status: end", self._root_text(status), notify_status, update=True
                )
            self._reply("the incident's end", "incident end posted (broadcast)", text, notify_outcome)
