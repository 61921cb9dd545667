# zoserve: `make run` starts everything with a demo job; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PORT ?= 8000
export OMP_NUM_THREADS ?= 1

.PHONY: run test install dev chromium openapi bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU wheel on these machines; for a GPU worker see README "GPU workers"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[worker]'
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

run: $(VENV)/.installed
	$(VENV)/bin/zoserve up --port $(PORT) --demo

test: $(VENV)/.dev chromium
	$(PY) -m pytest -q

# The browser tests (tests/web) drive Debian's chromium through Playwright (pip, in the dev
# extras); `playwright install` is never used. apt-get runs only when /usr/bin/chromium is missing.
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "make: could not install chromium (apt-get needs root); tests/web will be skipped" >&2

openapi: $(VENV)/.installed
	$(PY) scripts/gen_openapi.py

# The CPU set, algorithm benches in --quick mode; last JSON lines → bench/out/results.jsonl.
# BENCH_ARGS: e.g. --full (algorithm benches at full size), --scaleout, or bench names.
bench: $(VENV)/.dev
	$(PY) bench/collect.py $(BENCH_ARGS)

clean:
	rm -rf .zoserve test-output bench/out build
