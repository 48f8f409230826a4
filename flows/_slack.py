"""How the rollback flow talks to Slack: one thread per run, its root kept up to date, each post recorded."""

from __future__ import annotations

from runbook import messages
from runbook.journal import Journal
from runbook.slack import Posted, SlackPoster
from tasks.notify import notify_incident, notify_outcome, notify_rollback_started, notify_status

_NOTHING = Posted(None, None, "nothing posted (dry run or notify off)")


class Announcer:
    """The seed's communication (section 4) for one run; silent when `enabled` is false (dry run, drills)."""

    def __init__(self, slack: SlackPoster, record: Journal, ctx: messages.IncidentContext, enabled: bool) -> None:
        self._slack = slack
        self._record = record
        self._ctx = ctx
        self._enabled = enabled
        self._root = _NOTHING
        self._webhook_warned = False
        self._announced = False

    @property
    def thread(self) -> Posted:
        """The thread's root, once posted (what a later run replies to)."""
        return self._root

    @property
    def announced(self) -> bool:
        """Whether the incident was told (posted, or tried: Slack may have been down)."""
        return self._announced

    def incident(self) -> None:
        """Seed message 1: the thread's root; once per run, later calls do nothing."""
        if self._enabled and not self._announced:
            self._announced = True
            text = messages.incident_message(self._ctx)
            self._root = self._kept(notify_incident(self._slack, text), "incident posted")

    def rollback_started(self, sha: str, compare_url: str | None) -> None:
        """Seed message 2, and the root's status: rolling back to SHA."""
        if self._enabled:
            self._status(messages.status_rolling_back(self._ctx, sha), "rolling back")
            text = messages.rollback_started_message(self._ctx, sha, compare_url)
            self._kept(notify_rollback_started(self._slack, self._root, text), "rollback start posted")

    def recovered(self, sha: str, digest: str, seconds: float, deploy_url: str | None) -> None:
        """Seed message 3, broadcast, and the root's status: recovered in N s."""
        if self._enabled:
            self._status(messages.status_recovered(self._ctx, sha, seconds), "recovered")
            text = messages.recovered_message(self._ctx, sha, digest, seconds, deploy_url)
            self._kept(notify_outcome(self._slack, self._root, text), "end posted (broadcast)")

    def failed(self, step: str, reason: str) -> None:
        """The escalation, broadcast, and the root's status: failed at step X (the incident told first if need be)."""
        if self._enabled:
            self.incident()
            self._status(messages.status_failed(self._ctx, step), "failed")
            text = messages.failure_message(self._ctx, step, reason)
            self._kept(notify_outcome(self._slack, self._root, text), "escalation posted (broadcast)")

    def _status(self, status: str, label: str) -> None:
        if self._root.threaded:
            text = messages.incident_message(self._ctx, status)
            self._kept(notify_status(self._slack, self._root, text), f"root status: {label}")

    def _kept(self, posted: Posted, what: str) -> Posted:
        if not posted.ok:
            self._record.warn(f"Slack: {posted.error}")
        elif not posted.threaded and not self._webhook_warned:
            self._webhook_warned = True
            self._record.warn("Slack: posting through an incoming webhook: no thread and no status updates")
        else:
            self._record.note(f"Slack: {what}")
        return posted
