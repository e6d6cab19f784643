"""DORA metrics from rollout outcomes: deployment frequency, lead time, change-failure rate and
failed-deployment recovery time, per model and for the whole tenant.

Definitions (what the figures mean, stated once):

* a *deployment* is a rollout that brought a candidate to 100% of live traffic (a canary or
  blue-green that succeeded, a promoted rollout, an A/B test the candidate won);
* *deployment frequency*: deployments per day over the period;
* *lead time*: from the version's registration to 100% of traffic; *code lead time*: from the time
  of the code revision in the version's lineage to 100% (only versions whose lineage gives it);
* a *failed change*: a rollout the controller rolled back, or a deployment followed within
  `INCIDENT_WINDOW_US` (24 h), and before the deployment's next rollout started, by an alert on the
  promoted version, unless the deployment already had alerts in the `ONGOING_US` (5 min) before the
  promotion (an episode that began before the change is not its incident);
  *change-failure rate*: failed changes / (deployments + rollbacks);
* *failed-deployment recovery time*: for a rollback, from the rollout's start (when the candidate
  began to receive traffic) until the stable version served all traffic again; for an incident,
  from the first alert until the deployment's next rollout finished (a new version or a roll back).
  Incidents not yet recovered are left out of the median.
Medians of empty sets are reported as -1.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from foedus.server.store.records import RolloutPhase, RolloutRecord

DAY_US = 86_400_000_000
INCIDENT_WINDOW_US = DAY_US
ONGOING_US = 300_000_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished rollout with what DORA needs to know about it."""

    rollout: RolloutRecord
    version_created_us: int
    code_revision_time_us: int
    """0 when the version's lineage does not give it."""
    first_alert_us: int | None
    """First alert on the promoted version within the incident window after it reached 100%."""
    next_finish_us: int | None
    """When the deployment's next rollout finished, if one did."""

    @property
    def deployed(self) -> bool:
        r = self.rollout
        if r.phase != RolloutPhase.SUCCEEDED:
            return False
        if r.winner_version:
            return r.winner_version == r.candidate_version
        return r.candidate_weight >= 100.0

    @property
    def rolled_back(self) -> bool:
        return self.rollout.phase == RolloutPhase.ROLLED_BACK


@dataclass(frozen=True, slots=True)
class DoraFigures:
    model: str
    deployments: int
    deployment_frequency_per_day: float
    lead_time_median_h: float
    code_lead_time_median_h: float
    change_failure_rate: float
    failures: int
    recovery_time_median_min: float


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else -1.0


def figures(model: str, outcomes: Sequence[Outcome], period_us: int) -> DoraFigures:
    """DORA figures of `outcomes` (rollouts finished within the period, of one model or all)."""
    deployed = [o for o in outcomes if o.deployed]
    rolled_back = [o for o in outcomes if o.rolled_back]
    incidents = [o for o in deployed if o.first_alert_us is not None]
    lead = [(o.rollout.finished_at_us - o.version_created_us) / 3.6e9 for o in deployed]
    code_lead = [
        (o.rollout.finished_at_us - o.code_revision_time_us) / 3.6e9
        for o in deployed
        if o.code_revision_time_us
    ]
    recovery = [(o.rollout.finished_at_us - o.rollout.started_at_us) / 6e7 for o in rolled_back]
    recovery += [
        (o.next_finish_us - o.first_alert_us) / 6e7
        for o in incidents
        if o.next_finish_us is not None and o.first_alert_us is not None
    ]
    changes = len(deployed) + len(rolled_back)
    failures = len(rolled_back) + len(incidents)
    return DoraFigures(
        model=model,
        deployments=len(deployed),
        deployment_frequency_per_day=len(deployed) / (period_us / DAY_US) if period_us > 0 else 0.0,
        lead_time_median_h=_median(lead),
        code_lead_time_median_h=_median(code_lead),
        change_failure_rate=failures / changes if changes else 0.0,
        failures=failures,
        recovery_time_median_min=_median(recovery),
    )
