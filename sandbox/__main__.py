"""`python -m sandbox [--workdir DIR]`: the sandbox demo (the README's first command runs it)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from commands.cli import prefect_defaults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Roll a broken sandbox service back to its last known good version, end to end, on local servers.",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the sandbox and Prefect keep their files (default .runbook/)"
    )
    parser.add_argument(
        "--incident", action="store_true", help="one incident of three services (the `incident` flow) instead"
    )
    args = parser.parse_args(argv)
    base = (args.workdir or Path(".runbook")).resolve()
    prefect_defaults(base / "prefect")
    # Links in Slack and the post-mortem point where the README says to look: a server on this PREFECT_HOME.
    os.environ.setdefault("PREFECT_UI_URL", "http://127.0.0.1:4200")
    from sandbox.demo import run_demo, run_incident_demo  # after the defaults: Prefect reads its settings at import

    base.mkdir(parents=True, exist_ok=True)
    demo = run_incident_demo if args.incident else run_demo
    return 0 if demo(Path(tempfile.mkdtemp(prefix="sandbox-", dir=base)), base / "prefect") else 1


if __name__ == "__main__":
    sys.exit(main())
