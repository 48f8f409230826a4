"""English: every text Slack may be sent, key -> template (`str.format`), with the same keys and the same
`{fields}` as every other language (tests/test_messages.py checks it)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "incident": "Production incident detected. Investigation in progress.",
        "rollback_started": "Starting the rollback procedure to version `{sha}`.",
        "recovered": "Rollback finished. The system is operational again. A post-mortem analysis will follow.",
        "failed": ":rotating_light: Rollback failed at step *{step}*: {reason}\nAction needed: {action}",
        "context": "Service `{service}` · environment `{environment}`",
        "reason": "Reason: {reason}",
        "incident_ref": "Incident: {incident}",
        "recovery_time": "Time to recovery: {seconds} s (version `{short}`, image `{digest}`)",
        "run_link": "Run: {url}",
        "status_investigating": "*Status:* investigating",
        "status_rolling_back": "*Status:* rolling back to `{short}`",
        "status_recovered": ":white_check_mark: *Status:* recovered in {seconds} s (version `{short}`)",
        "status_failed": ":x: *Status:* failed at step {step}",
        "alert_ref": "Alert: {alert}",
        "compare_link": "Changes rolled back: {url}",
        "deploy_link": "Deployment: {url}",
        # After an automatic rollback: the same incident's later alerts do not roll back further.
        "held": ":warning: Still alerting after the rollback to `{short}`: a person decides. "
        "No further automatic rollback for this incident.",
        "rollback_by_hand": "Roll back by hand from the Prefect UI: {url} (tick require_approval: "
        "the run waits for an approval before deploying)",
        "previous_rollback": ":information_source: An automatic rollback just happened: to `{short}` at {at}",
        # What a person must do after a failure at each step (`action.<step>`); `action.generic` covers the rest.
        "action.resolve-sha": "pick the stable SHA by hand from the branch history and run the rollback again with it.",
        "action.verify-image": "check that this commit's image was pushed to the registry (or pick another SHA), "
        "then run again.",
        "action.deploy": "open the rollback workflow linked here, fix the cause and run again; "
        "production may still run the unstable version.",
        "action.health-check": "the version was redeployed but the service is not healthy: escalate to on-call, "
        "check the dashboards and logs.",
        "action.metric-check": "the version is redeployed but the error rate stays high: escalate to on-call, "
        "check the dashboards; the cause may not be the last deploy.",
        "action.smoke-checks": "the service answers but key features fail: check by hand and escalate.",
        "action.approval": "nothing was deployed: run the rollback again, or choose another SHA.",
        "action.generic": "open the Prefect run for details and follow the manual procedure.",
        # A version rolled back from is quarantined until a person lifts it (`runbook release`, flows/release.py).
        "quarantine_lifted": ":unlock: Quarantine lifted: version `{short}` of `{service}` may be deployed to "
        "`{environment}` again. It becomes a last known good version again only once deployed and healthy.",
        "quarantine_rollback_link": "Rolled back by: {url}",
        # The rehearsal's report in Slack (flows/rehearsal.py); its check names and details stay as the report has them.
        "rehearsal_ready": "Rollback rehearsal ({mode}) of `{service}` in `{environment}`: ready.",
        "rehearsal_not_ready": "Rollback rehearsal ({mode}) of `{service}` in `{environment}`: NOT READY.",
        "rehearsal_failed_check": "- {check}: {detail}",
        # An incident of several services (flows/incident.py): one thread, each service's status in its root.
        "incident_services": "Services ({count}):",
        "member_line": "• `{name}` — {status}",
        "member_prefix": "*{service}* ({environment}) ·",
        "status_waiting": "*Status:* waiting for the rollback of {first}",
        "status_skipped": ":double_vertical_bar: *Status:* not rolled back: {first} had to go back first "
        "and did not recover",
        "status_not_run": ":double_vertical_bar: *Status:* not rolled back by this incident: {why}",
        "status_recovered_earlier": ":white_check_mark: *Status:* recovered by an earlier attempt ({run})",
        "status_incident_recovered": ":white_check_mark: *Status:* {count} services recovered in {seconds} s",
        "status_incident_failed": ":x: *Status:* {failed} of {count} service(s) not recovered: {names}",
        "incident_recovered": "Incident over: all {count} services are operational again "
        "(time to recovery {seconds} s, the last service healthy). A post-mortem analysis will follow.",
        "incident_failed": ":rotating_light: Incident: {failed} of {count} service(s) not recovered.\n{lines}\n"
        "Action needed: follow each service named here in its Prefect run; the others recovered.",
        "incident_failed_line": "- `{name}`: {why}",
        # A long step's progress (runbook/progress.py): the root's status while it lasts, the Prefect artifact's text.
        "status_progress": "*Status:* rolling back to `{short}`: {detail}",
        "progress_workflow_run": "deploying: workflow run {run} in progress ({status}), {elapsed}",
        "progress_workflow_run_ended": "deploying: workflow run {run} ended ({conclusion}) after {elapsed}",
        "progress_deploy_api": "deploying: the deploy API says {status}, {elapsed}",
        "progress_container": "deploying: the new container is {status}, {elapsed}",
        "progress_health": "checking health: {passed} of {required} rounds in a row passed",
        "progress_health_failing": "checking health: `{probe}` fails ({answer}), "
        "0 of {required} rounds in a row passed",
        "progress_metric": "error rate {value} < {threshold}: held {held} of {hold} s",
        "progress_metric_over": "error rate {value} ≥ {threshold}: the hold of {hold} s starts again",
        "progress_metric_no_value": "error rate: no value (no data, or Prometheus not answering): "
        "held {held} of {hold} s, paused",
    }
)
