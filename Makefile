# mmar: `make quickstart` and `make test` each set everything up from nothing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: venv quickstart test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt torch torchvision torchaudio
	$(PIP) install -c constraints.txt -e ".[demo,test]"
	touch $@

venv: $(VENV)/.installed

quickstart: venv
	$(VENV)/bin/mmar quickstart --out runs/quickstart

test: venv
	$(PY) -m pytest -q

bench: venv
	$(VENV)/bin/mmar bench

clean:
	rm -rf runs/ .pytest_cache
