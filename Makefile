# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml

.PHONY: run test lint bench migrate clean services install

# Reinstall when the dependency list changes; the stamps keep repeat runs instant.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# Test, lint and benchmark tools on top of the runtime install.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/sensorcast --config $(CONFIG) migrate
	$(BIN)/sensorcast --config $(CONFIG) serve

migrate: $(VENV)/.installed
	$(BIN)/sensorcast --config $(CONFIG) migrate

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check server tests bench
	$(BIN)/ruff format --check server tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/sensorcast --config $(CONFIG) bench

# The app, its venv, /etc/sensorcast, /var/lib/sensorcast and the systemd unit (README:
# Deployment with systemd). DESTDIR and PREFIX (default /opt/sensorcast) pass through.
install:
	DESTDIR="$(DESTDIR)" PREFIX="$(or $(PREFIX),/opt/sensorcast)" deploy/install.sh $(INSTALL_FLAGS)

clean:
	rm -rf $(VENV) var bench/results .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
