"""`runbook serve` keeps each service's ready rollback target (runbook/ready.py) fresh, in a thread.

Every `ready_target.check_seconds` (15 s by default), for each configured service and environment, it reads
which version runs (the same sources a rollback reads) and the kept target. It prepares the target again when
there is none, when that version changed (a deploy), or when the target is past half its maximum age; right at
start too. A target that cannot be prepared (GitHub down, image missing...) is reported; one that no longer
holds is dropped, so runs take the full path and fail or succeed there with the full path's own messages.
The configuration is read again on each round (a SIGHUP reload adds services here too).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

from prefect.client.orchestration import get_client

from runbook import ready as ready_store
from runbook.clients import Clients, Scope
from runbook.config import RunbookConfig, load_config
from runbook.errors import RunbookError
from runbook.journal import utcnow
from runbook.running import find_running
from tasks.ready_target import basis, prepare

log = logging.getLogger("runbook.serve")


class ReadyKeeper:
    """Prepares the ready targets at start, then keeps them fresh until stopped."""

    def __init__(self, config: Callable[[], RunbookConfig] = load_config, say: Callable[[str], None] | None = None):
        self._config = config
        self._say = say or _print
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ready-targets", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                config = self._config()
            except RunbookError as exc:  # a file broken since start: `serve` goes on with its runs
                self._say(f"ready targets: configuration unreadable: {exc}")
                config = None
            if config is not None and config.ready_target.enabled:
                self.refresh_all(config)
            wait = config.ready_target.check_seconds if config is not None else 30.0
            self._stop.wait(wait)

    def refresh_all(self, config: RunbookConfig) -> dict[tuple[str, str], str]:
        """One round over every service and environment: what was done for each."""
        done: dict[tuple[str, str], str] = {}
        for service, settings in sorted(config.services.items()):
            for environment in sorted(settings.environments):
                if self._stop.is_set():
                    return done
                try:
                    done[(service, environment)] = self.refresh(config, service, environment)
                except Exception as exc:  # one service's trouble never stops the others' (nor serve)
                    done[(service, environment)] = f"failed: {type(exc).__name__}: {exc}"
                    self._say(f"ready target {service}/{environment}: {done[(service, environment)]}")
        return done

    def refresh(self, config: RunbookConfig, service: str, environment: str) -> str:
        """Prepare the target again when needed: `kept`, `prepared`, or why none is kept."""
        scope = Scope.of(config, service, environment)
        max_age = config.ready_target.max_age_seconds
        with Clients(config, scope) as clients, get_client(sync_client=True) as client:
            kept = ready_store.read(client, service, environment)
            running = find_running(clients.repo, environment, scope.settings, clients.target, log.info)
            if not ready_store.needs_preparing(kept, running.sha, utcnow(), max_age, basis(scope)):
                return "kept"
            try:
                ready = prepare(scope, clients.repo, clients.target, clients.registry, log, running)
            except RunbookError as exc:
                if kept is not None and ready_store.unusable(kept, running.sha, utcnow(), max_age, basis(scope)):
                    ready_store.forget(client, service, environment)
                self._say(f"ready target {service}/{environment}: none ({exc}); rollbacks resolve in full")
                return f"none: {exc}"
        ready_store.write(ready)
        self._say(
            f"ready target {service}/{environment}: {ready.short} ({ready.source}) = {ready.digest}, "
            f"{ready.running[:7]} running"
        )
        return "prepared"


def _print(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
