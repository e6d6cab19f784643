"""Federated learning across tenants: SuperNode keys, runs, rounds, privacy and opt-ins."""
