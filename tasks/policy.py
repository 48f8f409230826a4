"""Cache policies shared by the tasks, and why.

A person may press Retry on a failed rollback in the Prefect UI; the flow then runs again under the
same flow-run id. Steps whose outcome must not change on a retry (the SHA chosen, the Slack thread
opened, a deploy that completed) are cached for that flow run only (`RUN_ONCE`): the retry reuses
their result instead of choosing another version, opening a second thread or deploying twice.
Everything else that touches the world is `NO_CACHE`, so it is never skipped by a cache by accident.
"""

from __future__ import annotations

from prefect.cache_policies import INPUTS, NO_CACHE, RUN_ID

RUN_ONCE = RUN_ID + INPUTS

__all__ = ["NO_CACHE", "RUN_ONCE"]
