# Every target builds .venv from requirements.lock by itself (the stamp file tracks the lock).
# With no DATABASE_URL / REDIS_URL set, demo and test start an embedded PostgreSQL and Redis
# under .orderflow/ and stop them afterwards; with them set, those servers are used.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# make test runs the suite in this many pytest-xdist processes (1: one process, no xdist):
# most tests wait on workers, simulators and deadlines, so two at a time fill two cores.
TEST_WORKERS ?= 2
BENCH_ARGS ?=

.PHONY: venv demo test test-unit test-reliability test-rabbitmq test-cluster test-cluster-rabbitmq lint fmt clean lock bench

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/orderflow demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS)) $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The fault-injection and security suites at full size (500 orders under kills, a 1,000-order
# burst, ...); `make test` runs the same scenarios at a short size. Figures are printed at the
# end and written to .orderflow/reliability-results.json (see docs/reliability.md).
test-reliability: $(STAMP)
	RELIABILITY_FULL=1 $(PY) -m pytest tests/reliability tests/security $(PYTEST_ARGS)

# The end-to-end suite with RabbitMQ as the Celery broker (its own vhost per run; see README).
test-rabbitmq: BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672//
test-rabbitmq: $(STAMP)
	BROKER_URL='$(BROKER_URL)' $(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# The pipeline across hosts (issue 23): a data, a provider, an API, two worker and two beat
# hosts, each a network namespace with files of its own, and partitions between them. Needs
# root and `ip netns` (it skips, saying so, elsewhere); about 10 minutes. `make test` leaves
# tests/cluster out. Figures go to .orderflow/cluster-results.json (docs/reliability.md).
test-cluster: $(STAMP)
	CLUSTER_TESTS=1 $(PY) -m pytest tests/cluster -p no:xdist $(PYTEST_ARGS)

# The same scenarios with RabbitMQ on the data host as the broker of every one (the API cut
# from RabbitMQ instead of Redis); `make test-cluster` runs only two of them on RabbitMQ.
# About 8 minutes; its last figures are in docs/reliability.md.
test-cluster-rabbitmq: $(STAMP)
	CLUSTER_BROKER=rabbitmq CLUSTER_TESTS=1 $(PY) -m pytest tests/cluster -p no:xdist $(PYTEST_ARGS)

# Benchmarks against ceilings measured in the same run (see docs/performance.md). Uses its own
# database and empties the task queues of its broker: do not share the broker with another run.
bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy domain services adapters

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate the lock after changing pyproject.toml (needs network access to PyPI).
lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .orderflow .pytest_cache .mypy_cache .ruff_cache
