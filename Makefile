# Two commands for a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
export GRADIO_ANALYTICS_ENABLED = False
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: run test install install-dev chromium benchmark clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamp files: reinstall only when the requirement files or pyproject.toml change.
$(VENV)/.runtime: $(PY) requirements.txt
	$(PY) -m pip install -r requirements.txt
	touch $@

# The package itself, editable (its dependencies are requirements.txt, installed above), so that
# .venv/bin/lora-gui exists and runs the code in this checkout.
$(VENV)/.package: $(VENV)/.runtime pyproject.toml
	$(PY) -m pip install --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.package requirements-dev.txt
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

install: $(VENV)/.package
install-dev: $(VENV)/.dev

# Debian's chromium for the browser tests: a quick check when it is there, else apt-get (as root or
# with passwordless sudo) or one message saying what to run.
chromium:
	@bash scripts/install_chromium.sh

# The app prints "Open http://HOST:PORT in your browser" once its port is bound (the next free one if
# 7860 is taken); `make run ARGS=--inbrowser` opens it in the desktop's browser.
run: install
	$(PY) app.py $(ARGS)

test: install-dev chromium
	$(PY) -m pytest $(PYTEST_ARGS)

benchmark: install-dev
	$(PY) benchmarks/train_speed.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build lora_gui.egg-info
