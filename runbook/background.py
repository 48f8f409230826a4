"""Bookkeeping writes kept off the rollback's critical path.

On SQLite, a Prefect API write that meets the server's own writes is answered 503 ("database is locked")
and retried by the client 2 s later: seconds of time to recovery for a record nobody waits for. Such writes
run in a thread (with the caller's context, so Prefect's run context and logger work there) and are joined
where their result starts to matter.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any


def start(name: str, call: Callable[..., Any], *args: Any) -> threading.Thread:
    """Run `call(*args)` in a daemon thread that sees the caller's context; join the thread to wait for it."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(call, *args), name=name, daemon=True)
    thread.start()
    return thread
