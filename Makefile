# cellssl developer entry points. Each target creates .venv (and installs core + every plugin) if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PLUGINS := $(sort $(wildcard plugins/cellssl-*))
STAMP := $(VENV)/.cellssl-installed

.PHONY: install quickstart test lint bench clean

$(STAMP): core/pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e "core[dev]" $(foreach p,$(PLUGINS),-e $(p))
	@touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/cellssl run configs/quickstart.yaml

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

.PHONY: mutants
mutants: $(STAMP)
	$(PY) tools/mutation/run_mutants.py

bench: $(STAMP)
	$(PY) benchmarks/embed_throughput.py
	$(PY) benchmarks/knn_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
