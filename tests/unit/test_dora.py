"""DORA figures from rollout outcomes (foedus.server.rollouts.dora)."""

from __future__ import annotations

import dataclasses

import pytest

from foedus.server.rollouts.dora import DAY_US, Outcome, figures
from foedus.server.store.records import RolloutPhase, RolloutRecord, Strategy

H = 3_600_000_000


def rollout(phase: RolloutPhase, started: int, finished: int, **kw: object) -> RolloutRecord:
    base = RolloutRecord(
        id=1,
        tenant="acme",
        deployment="prod",
        model="m",
        stable_version=1,
        candidate_version=2,
        strategy=Strategy.CANARY,
        phase=phase,
        step=0,
        candidate_weight=100.0 if phase == RolloutPhase.SUCCEEDED else 0.0,
        reason="",
        spec={},
        state={},
        analysis={},
        winner_version=0,
        revision=1,
        scheduled_for_us=started,
        started_at_us=started,
        finished_at_us=finished,
        created_at_us=started,
        created_by="k",
        updated_at_us=finished,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def outcome(
    r: RolloutRecord, created: int, code: int = 0, alert: int | None = None, nxt: int | None = None
) -> Outcome:
    return Outcome(r, created, code, alert, nxt)


def test_figures_over_deployments_rollbacks_and_incidents() -> None:
    outcomes = [
        # deployed 3 h after registration, code 10 h before
        outcome(rollout(RolloutPhase.SUCCEEDED, 2 * H, 3 * H), created=0, code=-7 * H),
        # deployed, then an alert 1 h later; the next rollout finished 2 h after the alert
        outcome(rollout(RolloutPhase.SUCCEEDED, 10 * H, 11 * H), created=5 * H, alert=12 * H, nxt=14 * H),
        # rolled back 30 min after it started
        outcome(rollout(RolloutPhase.ROLLED_BACK, 20 * H, 20 * H + H // 2), created=19 * H),
        # aborted by a person: neither a deployment nor a failure
        outcome(rollout(RolloutPhase.ABORTED, 30 * H, 31 * H), created=29 * H),
        # an A/B test the stable version won: not a deployment
        outcome(
            rollout(RolloutPhase.SUCCEEDED, 40 * H, 41 * H, strategy=Strategy.AB_TEST, winner_version=1),
            created=39 * H,
        ),
    ]
    f = figures("m", outcomes, 2 * DAY_US)
    assert f.deployments == 2
    assert f.deployment_frequency_per_day == pytest.approx(1.0)
    assert f.lead_time_median_h == pytest.approx(4.5)  # medians of 3 h and 6 h
    assert f.code_lead_time_median_h == pytest.approx(10.0)  # only the one with a revision time
    assert f.failures == 2  # the rollback and the incident
    assert f.change_failure_rate == pytest.approx(2 / 3)  # of 2 deployments + 1 rollback
    assert f.recovery_time_median_min == pytest.approx((30 + 120) / 2)


def test_no_outcomes_give_zeros_and_minus_one_for_medians() -> None:
    f = figures("", [], DAY_US)
    assert (f.deployments, f.deployment_frequency_per_day, f.change_failure_rate, f.failures) == (
        0,
        0.0,
        0.0,
        0,
    )
    assert (f.lead_time_median_h, f.code_lead_time_median_h, f.recovery_time_median_min) == (-1.0, -1.0, -1.0)
