# revgw: build, test and demo entry points.  `make help` lists the targets.

VENV := .venv
PY := $(VENV)/bin/python
# The package again, with the gateway's hot path compiled by mypyc (setup.py).
# The venv's own install is editable, so plain Python: an edit shows at once.
COMPILED := build/compiled
PYTHON ?= python3
NO_ENGINE := No Docker engine is running here; try 'make local' for the same demo in one process.

.DEFAULT_GOAL := compose
.PHONY: compose local netns-demo test bench fuzz lint fmt clean help images screenshot

compose: ## run the four-service demo with Docker Compose (or say how to run it without Docker)
	@if ! docker info >/dev/null 2>&1; then \
		echo "$(NO_ENGINE)"; \
	elif docker compose version >/dev/null 2>&1; then \
		docker compose up --build; \
	else \
		docker-compose up --build; \
	fi

local: $(VENV)/.installed ## run the same demo in one process, no Docker needed
	exec $(VENV)/bin/revgw demo

netns-demo: $(VENV)/.installed ## the compose demo in four network namespaces, no Docker (root)
	exec $(PY) examples/netns/netns.py demo

test: lint $(COMPILED)/.built ## lint, type-check, run the suite, then again on the compiled build
	$(VENV)/bin/pytest
	@echo "== the suite again, on the compiled hot path ($(COMPILED)) =="
	@# The compose demo runs the images' own install, not this build: once is enough.
	REVGW_EXPECT_COMPILED=1 PYTHONPATH=$(CURDIR)/$(COMPILED) $(VENV)/bin/pytest -q \
		--ignore=tests/test_compose_demo.py

bench: $(COMPILED)/.built ## measure the tunnel against the direct path (nginx, wrk; a few minutes)
	PYTHONPATH=$(COMPILED) $(PY) -m benchmarks

fuzz: $(VENV)/.installed-test ## replay the fuzz corpus; with atheris, FUZZ_SECONDS=600 make fuzz explores
	$(PY) fuzz/fuzz_http.py --replay fuzz/corpus/http
	$(PY) fuzz/fuzz_handshake.py --replay fuzz/corpus/handshake
	@# libFuzzer writes new inputs into the first directory it is given: keep the corpus second.
	@if [ -n "$(FUZZ_SECONDS)" ] && $(PY) -c "import atheris" 2>/dev/null; then \
		mkdir -p /tmp/revgw-fuzz/http /tmp/revgw-fuzz/handshake; \
		$(PY) fuzz/fuzz_http.py /tmp/revgw-fuzz/http fuzz/corpus/http -max_total_time=$(FUZZ_SECONDS) -max_len=2048; \
		$(PY) fuzz/fuzz_handshake.py /tmp/revgw-fuzz/handshake fuzz/corpus/handshake -max_total_time=$(FUZZ_SECONDS) -max_len=2048; \
	fi

lint: $(VENV)/.installed-test ## ruff check, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(VENV)/.installed-test ## format the code and apply ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## remove the venv, caches and build leftovers
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
	find . -name '*.egg-info' -prune -exec rm -rf {} +
	find . -name __pycache__ -prune -exec rm -rf {} +

images: ## redraw the pictures in images/ from their Graphviz sources (needs dot)
	$(PYTHON) images/render.py

screenshot: ## take images/browser.png: /ping in headless Chromium while make local runs
	bash images/screenshot.sh

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml setup.py | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml setup.py | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed

# Built as pip builds it for a user (in a build environment of its own), when a source changes.
$(COMPILED)/.built: $(VENV)/.installed-test setup.py $(wildcard src/revgw/*.py)
	rm -rf $(COMPILED)
	REVGW_COMPILE=1 $(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(COMPILED) .
	touch $@
