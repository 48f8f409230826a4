"""Commit identifiers and the choice of the version to return to: pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from runbook.errors import InvalidShaError

_HEX = re.compile(r"[0-9a-f]{7,40}")


def normalize_sha(value: str) -> str:
    """A commit SHA as typed by a person, trimmed and lowercased, or InvalidShaError."""
    sha = value.strip().lower()
    if not _HEX.fullmatch(sha):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise InvalidShaError(
            f"{shown!r} is not a commit SHA",
            hint="paste 7 to 40 hexadecimal characters from the branch history (e.g. a1b2c3d), "
            "or leave the field empty to return to the last known good version",
        )
    return sha


def last_known_good_candidates(history: Sequence[str], running: str, healthy: Iterable[str]) -> list[str]:
    """Commits to try as the last known good, best first.

    `history` is the branch walked from the running commit backwards (newest first, the running
    commit first if present); `healthy` the SHAs whose rollout in this environment was recorded
    successful. The candidates are the healthy commits strictly older than the running one, newest
    first; the caller takes the first whose image exists.
    """
    healthy_set = set(healthy)
    older = [sha for sha in history if sha != running]
    return [sha for sha in older if sha in healthy_set]
