"""Stopping a child process: politely first, then for sure."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0, kill_timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL and wait up to `kill_timeout`; nothing if already gone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=kill_timeout)
