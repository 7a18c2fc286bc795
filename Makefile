# Two entry points, both from a fresh machine (Python 3.11, CPU is enough):
#   make demo   set up .venv (csd2d and the nerfstudio plugin) and run the 2D and 3D demos into csd-demo/
#   make test   set up .venv, .venv-core (csd2d alone) and Debian's chromium, then run the test suite
PYTHON ?= python3
VENV ?= .venv
CORE ?= .venv-core
BIN := $(VENV)/bin

.PHONY: setup core browser demo test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,nerfstudio]"
	touch $@

setup: $(BIN)/.installed

# csd2d as `pip install csd-edit` gives it: its own venv (no system site packages), the project built as a
# wheel without the nerfstudio extra. tests/test_packaging.py runs csd2d there. The dependencies install once
# per pyproject.toml; the project itself is reinstalled on every run so that the venv holds the current code.
$(CORE)/.installed: pyproject.toml
	$(PYTHON) -m venv --clear $(CORE)
	$(CORE)/bin/pip install --quiet --upgrade pip
	$(CORE)/bin/pip install --quiet .
	touch $@

core: $(CORE)/.installed
	$(CORE)/bin/pip install --quiet --no-deps --force-reinstall .

# Debian's chromium and chromium-driver for tests/test_viewer_browser.py, installed with apt-get when missing
# (as root, or through passwordless sudo). Without them that test skips, or fails under CI=true.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null; then \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	      --no-install-recommends chromium chromium-driver >/dev/null \
	    || echo "make test: could not install chromium and chromium-driver; the browser test will skip (fail under CI=true)"; \
	  else \
	    echo "make test: chromium and chromium-driver are missing (on Debian: apt-get install chromium chromium-driver); the browser test will skip"; \
	  fi; \
	fi

demo: setup
	$(BIN)/csd2d demo --output csd-demo
	$(BIN)/python -m csd_nerfstudio.demo --output csd-demo/scene

test: setup core browser
	CSD_CORE_PYTHON="$(CURDIR)/$(CORE)/bin/python" $(BIN)/python -m pytest -q --durations=25
