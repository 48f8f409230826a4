"""Français : chaque texte envoyé à Slack, clé -> modèle (`str.format`), avec les mêmes clés et les mêmes
`{champs}` que les autres langues (tests/test_messages.py le vérifie)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # The first three are the seed's "Messages clés", word for word.
        "incident": "Incident en production détecté. Investigation en cours.",
        "rollback_started": "Déclenchement de la procédure de rollback vers la version `{sha}`.",
        "recovered": "Rollback terminé. Le système est de nouveau opérationnel. "
        "Une analyse post-mortem sera effectuée.",
        "failed": ":rotating_light: Échec du rollback à l'étape *{step}* : {reason}\nAction requise : {action}",
        "context": "Service `{service}` · environnement `{environment}`",
        "reason": "Raison : {reason}",
        "incident_ref": "Incident : {incident}",
        "recovery_time": "Temps de rétablissement : {seconds} s (version `{short}`, image `{digest}`)",
        "run_link": "Suivi : {url}",
        "status_investigating": "*Statut :* investigation en cours",
        "status_rolling_back": "*Statut :* rollback vers `{short}` en cours",
        "status_recovered": ":white_check_mark: *Statut :* rétabli en {seconds} s (version `{short}`)",
        "status_failed": ":x: *Statut :* échec à l'étape {step}",
        "alert_ref": "Alerte : {alert}",
        "compare_link": "Changements annulés : {url}",
        "deploy_link": "Déploiement : {url}",
        # After an automatic rollback: the same incident's later alerts do not roll back further.
        "held": ":warning: Toujours en alerte après le rollback vers `{short}` : une personne décide. "
        "Pas d'autre rollback automatique pour cet incident.",
        "rollback_by_hand": "Rollback à la main depuis l'interface Prefect : {url} (cocher require_approval : "
        "le run attend une approbation avant de déployer)",
        "previous_rollback": ":information_source: Un rollback automatique vient d'avoir lieu : vers `{short}` à {at}",
        # What a person must do after a failure at each step (`action.<step>`); `action.generic` covers the rest.
        "action.resolve-sha": "choisir à la main le SHA stable dans l'historique de la branche "
        "et relancer le rollback avec ce SHA.",
        "action.verify-image": "vérifier que l'image de ce commit a été poussée au registre "
        "(ou choisir un autre SHA), puis relancer.",
        "action.deploy": "ouvrir le workflow de rollback indiqué, corriger la cause et relancer ; "
        "la production tourne peut-être encore sur la version instable.",
        "action.health-check": "la version a été redéployée mais le service n'est pas sain : escalader à l'astreinte, "
        "vérifier les tableaux de bord et les logs.",
        "action.metric-check": "la version est redéployée mais le taux d'erreur reste élevé : "
        "escalader à l'astreinte, vérifier les tableaux de bord ; "
        "la cause n'est peut-être pas le dernier déploiement.",
        "action.smoke-checks": "le service répond mais des fonctionnalités clés échouent : "
        "vérifier à la main et escalader.",
        "action.approval": "rien n'a été déployé : relancer le rollback, ou choisir un autre SHA.",
        "action.generic": "consulter le run Prefect pour le détail et suivre la procédure manuelle.",
        # A version rolled back from is quarantined until a person lifts it (`runbook release`, flows/release.py).
        "quarantine_lifted": ":unlock: Quarantaine levée : la version `{short}` de `{service}` peut de nouveau être "
        "déployée en `{environment}`. Elle ne redeviendra une version stable de référence "
        "qu'une fois déployée et saine.",
        "quarantine_rollback_link": "Rollback qui l'avait écartée : {url}",
        # The rehearsal's report in Slack (flows/rehearsal.py); its check names and details stay as the report has them.
        "rehearsal_ready": "Répétition du rollback ({mode}) de `{service}` en `{environment}` : prêt.",
        "rehearsal_not_ready": "Répétition du rollback ({mode}) de `{service}` en `{environment}` : PAS PRÊT.",
        "rehearsal_failed_check": "- {check} : {detail}",
        # An incident of several services (flows/incident.py): one thread, each service's status in its root.
        "incident_services": "Services concernés ({count}) :",
        "member_line": "• `{name}` — {status}",
        "member_prefix": "*{service}* ({environment}) ·",
        "status_waiting": "*Statut :* attend le rollback de {first}",
        "status_skipped": ":double_vertical_bar: *Statut :* pas de rollback : {first} devait revenir avant "
        "et n'est pas rétabli",
        "status_not_run": ":double_vertical_bar: *Statut :* pas de rollback par cet incident : {why}",
        "status_recovered_earlier": ":white_check_mark: *Statut :* rétabli par une tentative précédente ({run})",
        "status_incident_recovered": ":white_check_mark: *Statut :* {count} services rétablis en {seconds} s",
        "status_incident_failed": ":x: *Statut :* {failed} service(s) sur {count} non rétabli(s) : {names}",
        "incident_recovered": "Incident terminé : les {count} services sont de nouveau opérationnels "
        "(temps de rétablissement {seconds} s, dernier service sain). Une analyse post-mortem sera effectuée.",
        "incident_failed": ":rotating_light: Incident : {failed} service(s) sur {count} non rétabli(s).\n{lines}\n"
        "Action requise : suivre chaque service nommé dans son run Prefect ; les autres sont rétablis.",
        "incident_failed_line": "- `{name}` : {why}",
        # A long step's progress (runbook/progress.py): the root's status while it lasts, the Prefect artifact's text.
        "status_progress": "*Statut :* rollback vers `{short}` en cours : {detail}",
        "progress_workflow_run": "déploiement : run {run} du workflow en cours ({status}), {elapsed}",
        "progress_workflow_run_ended": "déploiement : run {run} du workflow terminé ({conclusion}) en {elapsed}",
        "progress_deploy_api": "déploiement : l'API de déploiement indique {status}, {elapsed}",
        "progress_container": "déploiement : le nouveau conteneur est {status}, {elapsed}",
        "progress_health": "contrôle de santé : {passed} tours réussis d'affilée sur {required}",
        "progress_health_failing": "contrôle de santé : `{probe}` échoue ({answer}), 0 tour réussi d'affilée "
        "sur {required}",
        "progress_metric": "taux d'erreur {value} < {threshold} : tenu {held} s sur {hold}",
        "progress_metric_over": "taux d'erreur {value} ≥ {threshold} : la tenue de {hold} s recommence",
        "progress_metric_no_value": "taux d'erreur : pas de valeur (pas de données, ou Prometheus ne répond pas) : "
        "tenu {held} s sur {hold}, en pause",
    }
)
