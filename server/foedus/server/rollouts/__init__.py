"""Progressive rollouts: the rollout state machine, its controller, analysis, forecasts and DORA metrics."""
