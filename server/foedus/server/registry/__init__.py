"""The model registry: models, versions, aliases, lineage, artifacts and registration gates."""
