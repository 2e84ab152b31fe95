# Fruits! image-feature pipeline. `make demo` and `make test` work on a fresh clone:
# both create .venv when needed.
SHELL := /bin/bash
PYTHON_BASE ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Every process binds to loopback; the repo root and plugins/ are importable, as in Airflow.
export SPARK_LOCAL_IP := 127.0.0.1
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export PYSPARK_PYTHON := $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(PY)
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install test test-fast lint demo refit bases verify cross-day bench bench-refit bench-batch clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-jobs.txt constraints.txt
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The running-Airflow tests drive Debian's Chromium and run on Debian's PostgreSQL 15 (both
# installed here when missing, with apt-get).
test: $(STAMP) browser postgres
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

.PHONY: browser postgres
browser:
	bash scripts/install-chromium.sh

postgres:
	bash scripts/install-postgresql.sh

# The quick part of the suite: no Spark, no Airflow run.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

RAW ?=
DATE ?=
LAKE ?=
WEIGHTS ?=
demo: $(STAMP)
	$(PY) -m devtools.demo $(if $(RAW),--raw "$(RAW)") $(if $(DATE),--date "$(DATE)") \
		$(if $(LAKE),--lake "$(LAKE)") $(if $(WEIGHTS),--weights "$(WEIGHTS)")

# The refit DAG (fruits_pca_basis) once, locally, over the published days FROM..TO of LAKE:
# a new basis, every published day moved into it. `make bases` lists the lake's bases.
FROM ?=
TO ?=
VARIANCE ?=
K ?=
refit: $(STAMP)
	$(PY) -m devtools.refit $(if $(FROM),--from-date "$(FROM)") \
		$(if $(TO),--to-date "$(TO)") $(if $(LAKE),--lake "$(LAKE)") \
		$(if $(VARIANCE),--variance "$(VARIANCE)") $(if $(K),--k "$(K)") \
		$(if $(WEIGHTS),--weights "$(WEIGHTS)")

bases: $(STAMP)
	$(PY) -m devtools.refit --list $(if $(LAKE),--lake "$(LAKE)")

# Real-photo checks on a folder of <Label>/<file>.jpg that is not the test sample.
PHOTOS ?= ../shared/data/fruits360-bench
verify: $(STAMP)
	FRUITS_REAL_PHOTOS="$(abspath $(PHOTOS))" FRUITS_PROBE_MIN_ACCURACY=0.97 \
		$(PY) -m pytest -s -p no:cacheprovider tests/test_real_photos.py

# Real photos split into DAYS days, the DAG run once per day into one lake, then a classifier
# trained on all days but one and scored on that one (issue R2 2/5). Needs ../shared.
DAYS ?= 4
cross-day: $(STAMP)
	$(PY) -m bench.cross_day --photos "$(abspath $(PHOTOS))" --days $(DAYS) \
		$(if $(WEIGHTS),--weights "$(WEIGHTS)")

bench: $(STAMP)
	$(PY) -m bench.run

# The refit jobs (a basis fitted alone, days reprojected) on 100k, 300k and 1M synthetic rows,
# against numpy in one process. No ../shared needed; SIZES=20000,60000 for a quick check.
SIZES ?=
bench-refit: $(STAMP)
	$(PY) -m bench.refit $(if $(SIZES),--sizes "$(SIZES)")

# The featurize job's batch size: one single-threaded interpreter per core, side by side.
bench-batch: $(STAMP)
	$(PY) -m bench.side_by_side

clean:
	rm -rf .lake .demo build .pytest_cache .ruff_cache

# Airflow 3 on 127.0.0.1 (api-server, scheduler, dag-processor, triggerer; PostgreSQL 15) with
# the DAG, the local backend and the lake LAKE (.lake/); its state (database, logs, passwords,
# clusters, the environment file env) in .airflow/. Prints the UI address and the admin
# password. `make airflow-stop` stops it all, PostgreSQL last.
.PHONY: airflow airflow-stop airflow-cli
PORT ?= 8080
airflow: $(STAMP) postgres
	$(PY) -m devtools.stack start --home .airflow --port $(PORT) \
		--lake "$(or $(LAKE),.lake)" $(if $(WEIGHTS),--weights "$(WEIGHTS)")

airflow-stop:
	if [ -x $(PY) ]; then $(PY) -m devtools.stack stop --home .airflow; fi

# The plain airflow CLI on that stack, e.g. ARGS="dags list"; the same as
# `source .airflow/env; airflow dags list`.
ARGS ?= --help
airflow-cli: $(STAMP)
	$(PY) -m devtools.stack airflow --home .airflow $(ARGS)
