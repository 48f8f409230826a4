"""Tests of the alert endpoint (runbook/alerts.py)."""
