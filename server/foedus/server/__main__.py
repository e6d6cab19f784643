"""`python -m foedus.server` runs the control plane (same as `foedus server start`)."""

from foedus.client_sdk.cli.main import main

main(["server", "start"])
