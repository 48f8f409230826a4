"""`python -m commands.worker --pool runbook`: Prefect's process worker, that drains on SIGTERM.

Prefect 3.9.1's `prefect worker start` turns a SIGTERM into a SIGINT to itself and stops at once: the flow-run
processes it started are terminated with it, within about a second, and their runs stay Running in the API
with nothing left to finish them (measured in tests/triggers/test_team.py's module docstring; upstream:
PrefectHQ/prefect#22528, #16746). For a rollback that means a deploy nobody follows, no "Rollback terminé", no
post-mortem, and the service's slot held, until a person notices and retries.

This runs the same worker (`prefect.workers.process.ProcessWorker`, same pool, same settings:
PREFECT_WORKER_QUERY_SECONDS, PREFECT_WORKER_HEARTBEAT_SECONDS, PREFECT_WORKER_PREFETCH_SECONDS), and on
SIGTERM or Ctrl-C: stops polling (after the poll in progress, if any: a run it is submitting is run), waits for
the flow-run processes it started to end (at most `--drain-seconds`, 600 s like `runbook serve`), then exits 0.
New runs are left SCHEDULED for the other workers. A second signal stops the wait: what is still running is
then stopped the way Prefect stops it (its runs left Running). Its flow-run processes are in sessions of their
own (Prefect starts them so), so a SIGTERM sent to this process's group does not reach them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from commands.cli import prefect_defaults
from commands.serve import DRAIN_SECONDS


async def work(pool: str, name: str | None, drain_seconds: float) -> None:
    """Run a process worker of `pool` until SIGTERM/SIGINT, then drain (see the module's docstring)."""
    import anyio
    from prefect.settings import (
        PREFECT_WORKER_HEARTBEAT_SECONDS,
        PREFECT_WORKER_PREFETCH_SECONDS,
        PREFECT_WORKER_QUERY_SECONDS,
    )
    from prefect.workers.process import ProcessWorker

    from runbook.prefect_calls import hear_busy_soon

    hear_busy_soon()
    worker = ProcessWorker(
        name=name,
        work_pool_name=pool,
        prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    stopping = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as main:
            with anyio.CancelScope() as drain:

                async def listen() -> None:
                    async for signum in signals:
                        if not stopping.is_set():
                            _say(f"{signal.Signals(signum).name}: no new runs; waiting for the runs in progress")
                            stopping.set()
                        else:
                            _say(f"{signal.Signals(signum).name} again: not waiting any longer")
                            drain.cancel()

                main.start_soon(listen)
                async with worker:  # leaving it waits for the runs it started (Prefect's runs task group)
                    async with anyio.create_task_group() as loops:
                        loops.start_soon(_every, PREFECT_WORKER_QUERY_SECONDS.value(), worker.get_and_submit_flow_runs)
                        loops.start_soon(
                            _every, float(PREFECT_WORKER_HEARTBEAT_SECONDS.value()), worker.sync_with_backend
                        )
                        _say(f"Worker {worker.name!r} started (pool {pool!r}); SIGTERM drains")
                        await stopping.wait()
                        loops.cancel_scope.cancel()  # the loops stop between calls only: see `_every`
                    drain.deadline = anyio.current_time() + drain_seconds
            main.cancel_scope.cancel()
    if drain.cancelled_caught:
        _say("stopped before the runs in progress ended (second signal or --drain-seconds): they stay Running")
    _say(f"Worker {worker.name!r} stopped")


async def _every(seconds: float, call: Any) -> None:
    """`call()` every `seconds`; an error is said and the next call made. Cancelled only between calls."""
    import anyio

    while True:
        with anyio.CancelScope(shield=True):  # a poll under way finishes: the runs it claims are submitted
            try:
                await call()
            except Exception as exc:  # the API down for a while: the worker keeps trying, as Prefect's does
                _say(f"{getattr(call, '__name__', call)} failed: {type(exc).__name__}: {exc}")
        await anyio.sleep(seconds)


def _say(message: str) -> None:
    print(message, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: `python -m commands.worker --pool runbook [--name NAME] [--drain-seconds 600]`."""
    parser = argparse.ArgumentParser(prog="python -m commands.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", "-p", default="runbook", help="work pool (default: runbook)")
    parser.add_argument("--name", "-n", default=None, help="worker name (default: Prefect's)")
    parser.add_argument("--drain-seconds", type=float, default=DRAIN_SECONDS, help="longest wait after SIGTERM")
    args = parser.parse_args(argv)
    prefect_defaults()  # before Prefect is imported
    import anyio

    anyio.run(work, args.pool, args.name, args.drain_seconds)
    sys.exit(0)


if __name__ == "__main__":
    main()
