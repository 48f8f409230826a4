"""The entry points: the `runbook` command (serve, rollback, check) on top of flows, deployments and the library."""
