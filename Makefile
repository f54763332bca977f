# infermesh: `make run` starts the whole mesh; `make test` runs the tests.
# Everything is installed into .venv from pinned versions; generated code goes to
# gen/ and build/, model weights to .data/ (all ignored by git).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export OMP_WAIT_POLICY := PASSIVE
export DATA_DIR ?= $(CURDIR)/.data

PROTOS := $(shell find protos third_party -name '*.proto')

.PHONY: run test test-unit test-integration test-e2e lint bench install gen models clean test-services admin-key node-deps

run: install models
	$(BIN)/python -m launcher

# A new admin API key for the running mesh (printed once).
admin-key: install
	$(BIN)/python -m launcher.admin_key

test: install models test-services node-deps
	$(BIN)/python -m pytest

# The tiers, each runnable alone: unit (the cores on fakes, seconds, no servers),
# integration (one real service or server in the test process, Envoy's config), e2e
# (whole meshes through Envoy, with the third-party clients' conformance suite).
test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install models test-services
	$(BIN)/python -m pytest tests/integration tests/test_deployment_files.py tests/test_envoy_config.py tests/test_protos.py

test-e2e: install models test-services node-deps
	$(BIN)/python -m pytest tests/e2e tests/conformance

bench: install models
	$(BIN)/python bench/inference_bench.py
	$(BIN)/python bench/vector_bench.py
	$(BIN)/python bench/vector_restart_bench.py
	$(BIN)/python bench/structured_bench.py
	$(BIN)/python bench/audio_bench.py
	$(BIN)/python bench/vision_bench.py
	$(BIN)/python bench/batch_bench.py
	$(BIN)/python bench/mesh_overhead.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint build/infermesh.binpb --path infermesh
	@# buf breaking against main: build main's protos the same way into a scratch tree.
	@rm -rf build/main && mkdir -p build/main
	@if git rev-parse --verify -q main >/dev/null && git ls-tree -r --name-only main | grep -q '^protos/'; then \
	  git archive main protos third_party scripts | tar -x -C build/main && \
	  cd build/main && ../../$(BIN)/python scripts/gen_protos.py >/dev/null && cd ../.. && \
	  $(BIN)/buf breaking build/infermesh.binpb --against build/main/build/infermesh.binpb --path infermesh && echo "buf breaking against main: no breaking changes"; \
	else echo "buf breaking: main has no protos yet"; fi

install: $(VENV)/.installed

# Servers the tests start and stop themselves (PostgreSQL is on the machine already;
# redis-server comes from Debian's package). Installed only where missing.
test-services:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

# The official OpenAI Node SDK for the conformance tests (tests/conformance/test_node_sdk.py),
# exactly as locked; installed again only when the lock file changes.
NODE_DIR := tests/conformance/node

node-deps: $(NODE_DIR)/node_modules/.installed

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	touch $@

# The code generator first (pins read from pyproject.toml), then generate, then install
# the project, whose packages include the generated code.
GENERATOR_PINS = $(shell grep -oE '"(grpcio-tools|protovalidate|googleapis-common-protos|protobuf)==[^"]+"' pyproject.toml | tr -d '"')
# Pins whose own requirements conflict with ours ([tool.infermesh] in pyproject.toml says why).
NO_DEPS_PINS = $(shell sed -n 's/^install-without-deps = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",')

$(VENV)/.installed: pyproject.toml scripts/gen_protos.py $(PROTOS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(GENERATOR_PINS)
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(NO_DEPS_PINS)
	@# xds-protos ships its own, older copy of opentelemetry/proto/ (Envoy's API imports it)
	@# over opentelemetry-proto's files; whichever installs last wins, and the old one breaks
	@# the OTLP exporter. The current one serves both (tests/e2e/production/test_tracing.py).
	$(BIN)/pip install -q --force-reinstall --no-deps $(shell grep -oE '"opentelemetry-proto==[^"]+"' pyproject.toml | tr -d '"')
	touch $@

gen: install
	$(BIN)/python scripts/gen_protos.py

models: install
	$(BIN)/python -m services.inference.prepare

clean:
	rm -rf gen build $(VENV)
