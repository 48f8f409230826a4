"""Helpers the tests share: servers and fakes that are not part of the runbook itself."""
