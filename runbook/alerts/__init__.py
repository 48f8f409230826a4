"""Alerts in, at most one rollback per service and environment out (the web app is `commands/alert_endpoint.py`).

- `model`: the normalized `Alert`, whoever sent it, and Alertmanager's label fingerprint.
- `source`: the `AlertSource` interface and `SOURCES`, the senders the endpoint offers a route to.
- `wire`: what the sources share: validating a body (naming the field) and the bearer-token check.
- `alertmanager`, `grafana`: each sender's webhook body and its source.
- `decision`: the pure decision: ignore an alert, or roll a service back in an environment.
- `launcher`: starting the rollback's Prefect flow run, one active per service and environment.
"""
