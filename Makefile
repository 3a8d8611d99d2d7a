# Two commands for a newcomer: `make run` starts the app, `make test` runs the suite.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test worker simulate benchmark clean

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	$(PY) -m vqa_engine migrate
	@echo "VQA Curator: open http://localhost:$(PORT)"
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: $(VENV)/.dev
	$(PY) -m pytest

worker: $(VENV)/.runtime
	$(PY) -m vqa_engine worker

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
