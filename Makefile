# zoserve: `make run` starts everything with a demo job; `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PORT ?= 8000
export OMP_NUM_THREADS ?= 1

.PHONY: run test install dev openapi bench clean

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

test: $(VENV)/.dev
	$(PY) -m pytest -q

openapi: $(VENV)/.installed
	$(PY) scripts/gen_openapi.py

bench: $(VENV)/.dev
	$(PY) bench/overhead.py

clean:
	rm -rf .zoserve test-output bench/out build
