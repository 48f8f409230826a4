"""Cache policies shared by the tasks, and why.

A person may press Retry on a failed rollback in the Prefect UI; the flow then runs again under the
same flow-run id. Steps whose outcome must not change on a retry (the SHA chosen, the Slack thread
opened, a deploy that completed) are cached for that flow run only (`run_once`): the retry reuses
their result instead of choosing another version, opening a second thread or deploying twice.
Everything else that touches the world is `NO_CACHE`, so it is never skipped by a cache by accident.

The run's clients (GitHub repository, registry, deploy target, Slack) are parameters of the tasks but not
part of the key: they are how a step reaches the world, not what it decides (and cannot be hashed).
"""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE, RUN_ID, CachePolicy, Inputs

__all__ = ["NO_CACHE", "run_once"]


def run_once(*, exclude: str | tuple[str, ...] = ()) -> CachePolicy:
    """Cached for the flow run and the step's inputs, except the client parameters named in `exclude`."""
    return RUN_ID + Inputs(exclude=[exclude] if isinstance(exclude, str) else list(exclude))
