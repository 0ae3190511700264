# The two fresh-machine commands: `make lab` (the main job) and `make test` (the suite).
# Each bootstraps itself: .venv with the project and its test extra, and the Debian peers.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test peers venv bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

peers:
	./scripts/install-peers.sh

lab: venv peers
	$(VENV)/bin/gateway lab $(ARGS)

test: venv peers
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info certs/lab
