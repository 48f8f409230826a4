"""Step 5 (seed 4): tell the team in Slack, in one thread; Slack trouble never stops a rollback.

Each task takes the run's `SlackPoster` (runbook/slack.py) and a text. A failure to post comes back as a
`Posted` with an error, logged as a warning and kept for the post-mortem; it never fails the task.

The rollback's messages are delivered beside it (flows/_slack.py, one lane per run, in order): those tasks take
`until`, the lane's `Deadline`, and try again what Slack did not take for a passing reason until it says. `until`
is how long to try, not what is posted: never part of a cache key.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from runbook.slack import Deadline, Posted, SlackPoster
from tasks.policy import NO_CACHE, run_once

__all__ = [
    "check_slack",
    "notify_channel",
    "notify_incident",
    "notify_outcome",
    "notify_reply",
    "notify_rollback_started",
    "notify_status",
    "notify_thread",
]


def _logged(posted: Posted, text: str) -> Posted:
    if not posted.ok:
        first_line = text.splitlines()[0] if text else ""
        get_run_logger().warning("%s; the rollback goes on without it. Message was: %s", posted.error, first_line)
    return posted


@task(name="notify-incident", cache_policy=run_once(exclude=("slack", "until")), persist_result=True)
def notify_incident(slack: SlackPoster, text: str, until: Deadline | None = None) -> Posted:
    """Seed message 1, the root of the incident's thread (once per flow run, even when retried)."""
    return _logged(slack.post(text, until=until), text)


@task(name="notify-status", cache_policy=NO_CACHE)
def notify_status(slack: SlackPoster, root: Posted, text: str, until: Deadline | None = None) -> Posted:
    """Update the root message with the current status (chat.update)."""
    return _logged(slack.update(root, text, until=until), text)


@task(name="notify-rollback-started", cache_policy=run_once(exclude=("slack", "until")), persist_result=True)
def notify_rollback_started(slack: SlackPoster, root: Posted, text: str, until: Deadline | None = None) -> Posted:
    """Seed message 2, in the thread: the rollback starts towards a SHA."""
    return _logged(slack.post(text, root, until=until), text)


@task(name="notify-outcome", cache_policy=NO_CACHE)
def notify_outcome(slack: SlackPoster, root: Posted, text: str, until: Deadline | None = None) -> Posted:
    """Seed message 3 (or the escalation), in the thread and broadcast to the channel."""
    return _logged(slack.post(text, root, broadcast=True, until=until), text)


@task(name="notify-reply", cache_policy=NO_CACHE)
def notify_reply(slack: SlackPoster, root: Posted, text: str, until: Deadline | None = None) -> Posted:
    """A reply in the thread, not broadcast (a service's outcome in an incident's thread: the incident's end is)."""
    return _logged(slack.post(text, root, until=until), text)


@task(name="notify-thread", cache_policy=NO_CACHE)
def notify_thread(slack: SlackPoster, thread: Posted, text: str) -> Posted:
    """A reply in another run's thread (the automatic rollback's); in the service's channel when it has none."""
    return _logged(slack.post(text, thread, channel=str(thread.channel) if thread.threaded else None), text)


@task(name="notify-channel", cache_policy=NO_CACHE)
def notify_channel(slack: SlackPoster, text: str) -> Posted:
    """One message in the service's channel, outside any incident thread (rehearsal reports)."""
    return _logged(slack.post(text), text)


@task(name="check-slack", cache_policy=NO_CACHE)
def check_slack(slack: SlackPoster) -> str | None:
    """Check, without posting, that Slack would accept messages (auth.test); the problem, or None."""
    return slack.check()
