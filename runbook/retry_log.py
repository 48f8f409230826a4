"""Every retry the clients made during a run, kept for the post-mortem.

The clients retry on their own (registry, webhook, PyGithub, slack-sdk) and say so in their logs; while
a rollback runs, a logging handler on those loggers keeps one line per retry. URLs are reduced to their
host: a Slack incoming-webhook URL is itself a secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from runbook.journal import Journal, utcnow

RETRY_LOGGERS = {
    "runbook.registry": "registry",
    "runbook.targets.webhook": "deploy webhook",
    "github.GithubRetry": "GitHub",
    "urllib3.connectionpool": "GitHub",
    "runbook.slack": "Slack",
}
_RETRY_WORDS = re.compile(r"retr(y|ying|ies)|attempt \d+ of", re.IGNORECASE)
_URL = re.compile(r"https?://([^/\s:@]+@)?([^/\s]+)\S*")


class _Collector(logging.Handler):
    def __init__(self, record: Journal) -> None:
        super().__init__(level=logging.INFO)
        self.rollback = record

    def emit(self, log: logging.LogRecord) -> None:
        try:
            message = log.getMessage()
        except Exception:  # a malformed log call must not break the rollback
            return
        if _RETRY_WORDS.search(message):
            source = RETRY_LOGGERS.get(log.name, log.name)
            line = f"{utcnow():%H:%M:%S} {source}: {_URL.sub(lambda m: m.group(2), message)}"
            self.rollback.retries.append(line[:300])


@contextmanager
def collect_retries(record: Journal) -> Iterator[None]:
    """Keep the clients' retries of this block in `record.retries`."""
    handler = _Collector(record)
    changed: list[tuple[logging.Logger, int]] = []
    for name in RETRY_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            changed.append((logger, logger.level))
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for name in RETRY_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        for logger, level in changed:
            logger.setLevel(level)
