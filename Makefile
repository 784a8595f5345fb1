# mmar: `make quickstart` and `make test` each set everything up from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: venv system-data quickstart test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt torch torchvision torchaudio
	$(PIP) install -c constraints.txt -e ".[demo,test]"
	touch $@

venv: $(VENV)/.installed

# Debian packages the tests need: Fashion-MNIST (the real offline image set), chromium (the demo's
# browser test drives it through Playwright; nothing is downloaded by `playwright install`) and
# espeak-ng (it speaks the speech source's clips).
SYSTEM_PACKAGES := dataset-fashion-mnist chromium espeak-ng

system-data:
	@missing=""; for package in $(SYSTEM_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq $$missing; \
	  else echo "run: sudo apt-get install -y$$missing"; exit 1; fi; }

quickstart: venv
	$(VENV)/bin/mmar quickstart --out runs/quickstart

test: venv system-data
	$(PY) -m pytest -q

bench: venv
	$(VENV)/bin/mmar bench

clean:
	rm -rf runs/ .pytest_cache
