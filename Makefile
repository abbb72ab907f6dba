# shop-crm: `make demo` runs the pipeline on embedded defaults, `make test` checks it.
# Everything this needs is bootstrapped here: uv from PyPI if missing, then the locked env.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
CRM_HOME ?= $(CURDIR)/.crm
BOOT := $(CRM_HOME)/bootstrap
UV := $(shell command -v uv 2>/dev/null || echo $(BOOT)/bin/uv)
RUN := $(UV) run --frozen
export UV_PROJECT_ENVIRONMENT ?= $(CURDIR)/.venv
export AIRFLOW_HOME ?= $(CRM_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__COSMOS__ENABLE_TELEMETRY ?= False
export DO_NOT_TRACK ?= 1

DEMO_USERS ?= 2000
# six weeks: enough history for the churn model's weekly cut-offs
DEMO_DAYS ?= 42
DEMO_SEED ?= 42
DEMO_START ?= 2026-01-01
# days after the history in which the simulated customers react to what was sent
REACT_DAYS ?= 5
LANDING := $(CRM_HOME)/landing

.PHONY: help env superset-env node-deps demo test test-fast lint format docs dbt-docs bench airflow-db clean clean-db mlflow-ui ui

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# uv alone (no venv, so no pip or setuptools sources) in CRM_HOME/bootstrap
$(BOOT)/bin/uv:
	PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install --quiet --disable-pip-version-check \
	  --target $(BOOT) uv==0.13.9

# bytecode compiled once at install: every process (each Airflow task, each scoring shard's
# worker) would otherwise compile the libraries' sources again where bytecode is not written
# (PYTHONDONTWRITEBYTECODE, read-only images): ~4 s of imports per process
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

env: .venv/.synced  ## create the pipeline environment from uv.lock

# Superset pins SQLAlchemy 1.4: its own locked environment in superset/.venv
superset/.venv/.synced: superset/pyproject.toml superset/uv.lock | $(UV)
	cd superset && UV_PROJECT_ENVIRONMENT=$(CURDIR)/superset/.venv $(UV) sync --frozen
	@touch $@

superset-env: superset/.venv/.synced  ## create Superset's own environment from superset/uv.lock

# Segment's JavaScript libraries, pinned in tests/js/package-lock.json: the collector's tests
# send with them
tests/js/node_modules/.synced: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node-deps: tests/js/node_modules/.synced  ## install the JavaScript clients the tests use (npm ci)

$(AIRFLOW_HOME)/airflow.db: .venv/.synced
	@mkdir -p $(AIRFLOW_HOME)
	$(RUN) airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/migrate.log; exit 1)

airflow-db: $(AIRFLOW_HOME)/airflow.db  ## migrate Airflow's SQLite metadata database

# The simulated shop's clock: after its last day of events, the pipeline runs as an
# install would on the next days: ingest at midnight, build, score, campaigns at 08:05 and a
# day later. Dates are computed by python (portable across GNU and BSD date).
DATE = $(RUN) python -c "import datetime as d, sys; print(d.date.fromisoformat('$(DEMO_START)') + d.timedelta(days=$(DEMO_DAYS) - 1 + int(sys.argv[1])))"

demo: env airflow-db  ## simulate a shop, load it, run the Airflow DAGs on it one after another, report
	$(RUN) crm db upgrade
	$(RUN) crm simulate --users $(DEMO_USERS) --days $(DEMO_DAYS) --seed $(DEMO_SEED) --start $(DEMO_START) --out $(LANDING)
	@last=$$($(DATE) 0); next=$$($(DATE) 1); after=$$($(DATE) 2); end=$$($(DATE) $$((1 + $(REACT_DAYS)))); \
	  set -e; \
	  echo "== crm ingest: every landed day but the last, $$last"; \
	  $(RUN) crm ingest --summary $$(ls -d $(LANDING)/events/dt=* | grep -v "dt=$$last"); \
	  echo "== crm collect: the shop's tracker sends the first 2,000 calls of $$last over HTTP (Segment's Python library)"; \
	  $(RUN) python -m crm.collect.demo $(LANDING)/events/dt=$$last/events.jsonl.gz --count 2000; \
	  echo "== Airflow ingest_events: the day $$last, loaded when it has ended (the calls already collected load once)"; \
	  $(RUN) crm db clock --at $${next}T00:10:00+00:00 >/dev/null; \
	  CRM_LANDING_DIR=$(LANDING) $(RUN) python -m crm.demo ingest_events $${next}T00:00:00+00:00; \
	  echo "== what landed (crm status)"; \
	  $(RUN) crm status; \
	  echo "== Airflow build_customer_models: dbt builds and tests the customer tables (a task per model)"; \
	  $(RUN) python -m crm.demo build_customer_models $${next}T00:30:00+00:00; \
	  $(RUN) crm segments; \
	  echo "== crm train: the weekly training (MLflow runs; a version becomes champion only if it does better)"; \
	  $(RUN) crm db clock --at $${next}T00:55:00+00:00 >/dev/null; \
	  $(RUN) crm train 2> $(CRM_HOME)/demo-train.log || (tail -n 40 $(CRM_HOME)/demo-train.log; exit 1); \
	  echo "== Airflow score_customers: every customer scored with the champions, in 2 shards (mapped tasks), swapped into ml.* at once, then Redis"; \
	  CRM_SCORE_SHARDS=2 $(RUN) python -m crm.demo score_customers $${next}T01:00:00+00:00; \
	  echo "== Airflow send_campaigns at $$next 08:05 UTC: plan, send what is due (pushes through the firebase-admin SDK to a local fake FCM)"; \
	  $(RUN) crm db clock --at $${next}T08:05:00+00:00 >/dev/null; \
	  $(RUN) python -m crm.demo send_campaigns $${next}T08:05:00+00:00 --fake-fcm; \
	  echo "== the hourly send_campaigns runs of the day: each sends what has come due (crm campaigns run --until)"; \
	  $(RUN) crm campaigns run --at $${next}T09:05:00+00:00 --until $${after}T07:05:00+00:00 --fake-fcm \
	    > $(CRM_HOME)/demo-hourly.log 2>&1 || (tail -n 40 $(CRM_HOME)/demo-hourly.log; exit 1); \
	  tail -n 14 $(CRM_HOME)/demo-hourly.log; \
	  echo "== Airflow send_campaigns a day later"; \
	  $(RUN) crm db clock --at $${after}T08:05:00+00:00 >/dev/null; \
	  $(RUN) python -m crm.demo send_campaigns $${after}T08:05:00+00:00 --fake-fcm; \
	  echo "== crm journeys: carts sent through the collector at $$after 08:40; the abandoned-cart journey an hour and a day later"; \
	  $(RUN) python -m notify.journey_demo --at $${after}T08:40:00+00:00; \
	  echo "== crm react: the shop's next $(REACT_DAYS) days, everyone on their own baseline, each customer reacting to what was sent (planted effects)"; \
	  $(RUN) crm react --shop $(LANDING) --out $(CRM_HOME)/reactions --days $(REACT_DAYS); \
	  echo "== crm collect: the shop's apps and backend send those days over HTTP (Segment's Python library)"; \
	  $(RUN) python -m crm.collect.demo $(CRM_HOME)/reactions/events --count 0; \
	  echo "== Airflow build_customer_models at $$end 00:30: the customer tables and what the campaigns earned"; \
	  $(RUN) crm db clock --at $${end}T00:30:00+00:00 >/dev/null; \
	  $(RUN) python -m crm.demo build_customer_models $${end}T00:30:00+00:00; \
	  echo "== crm effects: each campaign's measured uplift beside the true effect the simulated customers were given"; \
	  $(RUN) crm effects --truth $(CRM_HOME)/reactions
	@echo "The dashboards count 'the last hour' from the shop's clock above; 'crm db clock --reset' returns to the wall clock."
	@echo "Re-run safely: 'make demo' again changes nothing already loaded. Database: $$($(RUN) crm db url)"
	@echo "The screens: make ui (Airflow :8080 with these runs, MLflow :5000, Superset :8088; it prints the logins)"

ui: env airflow-db superset-env  ## Airflow, the MLflow UI and Superset on the embedded defaults (Ctrl-C stops)
	$(RUN) python -m crm.ui

dbt-docs: env  ## dbt's documentation site for the built project (http://127.0.0.1:8081)
	$(RUN) python -m crm.transform docs

mlflow-ui: env  ## the MLflow UI on the project's tracking store (http://127.0.0.1:5000)
	$(RUN) mlflow ui --host 127.0.0.1 --port 5000 \
	  --backend-store-uri "$$($(RUN) python -c 'from ml.tracking import tracking_uri; print(tracking_uri())')"

lint: env  ## ruff (lint + format check), mypy, sqlfluff (dbt templater) on dbt_project/
	$(RUN) ruff check crm ml notify dags tests bench superset
	$(RUN) ruff format --check crm ml notify dags tests bench superset
	$(RUN) mypy crm ml notify tests
	$(RUN) python -m crm.transform sqlfluff

format: env  ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix crm ml notify dags tests bench superset
	$(RUN) ruff format crm ml notify dags tests bench superset

docs: env  ## regenerate docs/event.schema.json and docs/settings.md from the code
	$(RUN) python -m crm.docs

test: lint superset-env node-deps  ## lint, then the whole test suite against real PostgreSQL (and Superset)
	$(RUN) pytest -q --timeout=900

test-fast: env superset-env node-deps  ## tests without lint
	$(RUN) pytest -q -x --timeout=900

BENCH_ML_CUSTOMERS ?= 100000 1000000
BENCH_ML_SCALE_FROM ?= 100000  # larger sizes copy this size's marts (bench/ml_bench.py)
BENCH_DBT_EVENTS ?= 1000000 10000000

bench: env superset-env  ## ingest vs COPY and pandas; the collector; journeys; measured vs planted effects; dbt builds; dashboards; ML (1 h+)
	$(RUN) python bench/ingest_bench.py
	$(RUN) python bench/collect_bench.py
	$(RUN) python bench/journey_bench.py
	$(RUN) python bench/loop_bench.py
	$(RUN) python bench/dbt_bench.py --events $(BENCH_DBT_EVENTS)
	$(RUN) python bench/dashboard_bench.py --database bench_dbt_$(lastword $(BENCH_DBT_EVENTS)) \
	  --with-models
	$(RUN) python bench/ml_bench.py --customers $(BENCH_ML_CUSTOMERS) \
	  --scale-from $(BENCH_ML_SCALE_FROM)
	$(RUN) python bench/deliver_bench.py

clean-db: env  ## stop and delete the embedded PostgreSQL (all local data)
	-$(RUN) crm db stop
	rm -rf $(CRM_HOME)/pgdata

clean:  ## remove everything generated (.crm/, .venv/, superset/.venv/, tests/js/node_modules/)
	-$(RUN) crm db stop 2>/dev/null
	rm -rf $(CRM_HOME) .venv superset/.venv tests/js/node_modules
