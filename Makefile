# Set-up and everyday tasks. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-replicas lint typecheck pytest proto bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

## demo: a full end-to-end run on the embedded defaults (embedded server, two tenants, real ONNX models)
demo: venv
	$(PY) demo/demo.py

## test: lint, type-check, generated-code check and the whole test suite
test: lint typecheck pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check server client_sdk federation tests bench demo scripts

typecheck: venv
	$(VENV)/bin/mypy -p foedus.server -p foedus.client_sdk -p foedus.federation -p foedus.v1 -p foedus.oip.v2

# The integration tests of the control plane run a second time against two replicas on one
# PostgreSQL database (skipped with the reason when PostgreSQL is not reachable), all but those
# marked slow; a test that needs one server process skips itself there and says why.
REPLICA_TESTS = tests/integration/test_registry.py tests/integration/test_deployments_sdk.py \
	tests/integration/test_access.py tests/integration/test_cli.py \
	tests/integration/test_cli_deployments.py tests/integration/test_cli_rollouts.py \
	tests/integration/test_agents.py tests/integration/test_alerts_watch.py \
	tests/integration/test_drift_reports.py tests/integration/test_incidents.py \
	tests/integration/test_performance.py tests/integration/test_rollout_strategies.py \
	tests/integration/test_federation_delivery.py tests/integration/test_rate_limits.py \
	tests/integration/test_smoke.py tests/integration/test_admin_key_file.py \
	tests/integration/test_tls.py tests/integration/test_opentelemetry.py \
	tests/integration/test_rollouts.py tests/integration/test_cli_input.py

pytest: venv
	$(PY) -m pytest -q
	$(PY) -m pytest -q --replicas -m "not slow" $(REPLICA_TESTS)

## test-replicas: every integration test, the slow ones included, with the control plane as two
## replicas on PostgreSQL wherever a test starts one (about 15 minutes; needs PostgreSQL)
test-replicas: venv
	$(PY) -m pytest -q -rs --replicas tests/integration

## proto: regenerate foedus.v1 from proto/foedus/v1/*.proto with the pinned generators
proto: venv
	$(PY) scripts/gen_proto.py

bench: venv
	$(PY) bench/registry.py --json bench-registry.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
