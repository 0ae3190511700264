# The two fresh-machine commands: `make lab` (the main job) and `make test` (the suite).
# Each bootstraps itself: .venv with the project and its test extra, and the Debian peers.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test lint peers venv bench clean

$(STAMP): pyproject.toml setup.py media/relay_native/_relay.c media/relay_native/loadgen.h \
         turn/fastpath_native/_fastpath.c native/udp_common.h
	@./scripts/install-build-deps.sh $(PYTHON)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

peers:
	@./scripts/install-peers.sh

lab: venv peers
	@$(VENV)/bin/gateway lab $(ARGS)

test: venv peers
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff over everything (tests included), mypy --strict over the library packages.
lint: venv
	$(VENV)/bin/ruff check sip turn media gateway lab certs bench tests
	$(VENV)/bin/mypy --strict sip turn media gateway lab certs

# Each benchmark prints its own figures (and ratios against its peer); a few minutes each.
bench: venv peers
	$(PY) bench/sip_parse.py
	$(PY) bench/turn_vs_coturn.py
	$(PY) bench/media_relay.py --calls 100 --seconds 10
	$(PY) bench/b2bua_cps.py
	$(PY) bench/capacity.py
	$(PY) bench/relay_fast.py --calls 100 --seconds 10 --realtime
	$(PY) bench/relay_fast.py --calls 300 --seconds 10 --threads 2 --gen-procs 2 --realtime --verify-every 16
	$(PY) bench/relay_vs_rtpengine.py --calls 100 --seconds 10 --realtime
	$(PY) bench/relay_cores.py --seconds 10 --realtime

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info certs/lab
