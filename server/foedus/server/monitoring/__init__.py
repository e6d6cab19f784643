"""Monitoring: agent registration, telemetry ingest, deployment status, metric series and alerts."""
