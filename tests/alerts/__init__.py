"""Tests of the alerts (runbook/alerts/) and their endpoint (commands/alert_endpoint.py)."""
